package worker

import (
	"github.com/blaster-mail/blaster/returnpath"
)

// envelopeFrom is the reverse path (MAIL FROM) of one transaction to rcpts:
// the campaign's From address, or with a return path policy its signed
// return path (package returnpath) — per recipient for a one-recipient
// transaction of a campaign that sends per recipient, else the campaign's.
func (w *sendWorker) envelopeFrom(b *batch, rcpts []recipient) string {
	rp := b.cc.c.Settings.ReturnPath
	if rp == nil {
		return b.cc.envFrom
	}
	var contactID int64
	if len(rcpts) == 1 && b.cc.perRecipientReturnPath() {
		contactID = rcpts[0].contactID
	}
	s, err := returnpath.NewSigner(w.secrets.BounceKey)
	if err == nil {
		var addr string
		if addr, err = s.Address(rp.Address, b.cc.c.ID, contactID); err == nil {
			return addr
		}
	}
	// Not reached: the campaign's content check (campaign.Content) has
	// already failed the job for a bad address or a missing key.
	b.log.Error("no return path; sending with the From address", "err", err)
	return b.cc.envFrom
}

// perRecipientReturnPath reports whether every recipient gets a return path
// of its own: personalized campaigns (one transaction per recipient
// anyway), and same-for-all ones whose policy asks for it, which then go
// one recipient per transaction.
func (cc *compiled) perRecipientReturnPath() bool {
	rp := cc.c.Settings.ReturnPath
	return rp != nil && (rp.PerRecipient || cc.tmpl.Personalized())
}
