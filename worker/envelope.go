package worker

import (
	"strings"

	"github.com/blaster-mail/blaster/returnpath"
	"github.com/blaster-mail/blaster/smtp"
)

// envelope is the envelope of one transaction to rcpts: the reverse path
// (envelopeFrom) and, for delivery status notifications (RFC 3461, sent
// when the server offers DSN), an ENVID that names the campaign and, for a
// one-recipient transaction, the contact (signed when the worker has the
// bounce key: returnpath.Signer.EnvelopeID), each recipient's ORCPT, and
// the campaign's NOTIFY and RET. A bounce processor matches what comes back
// on Original-Envelope-Id and Original-Recipient (RFC 3464 §2.2.1,
// §2.3.1), whatever the return path says.
func (w *sendWorker) envelope(b *batch, rcpts []recipient) *smtp.Envelope {
	env := &smtp.Envelope{From: w.envelopeFrom(b, rcpts), Rcpts: make([]smtp.Recipient, len(rcpts))}
	var contactID int64
	if len(rcpts) == 1 {
		contactID = rcpts[0].contactID
	}
	var s *returnpath.Signer // nil: unsigned
	if len(w.secrets.BounceKey) > 0 {
		s, _ = returnpath.NewSigner(w.secrets.BounceKey) // a short key was refused at startup
	}
	env.EnvID = s.EnvelopeID(b.cc.c.ID, contactID)
	dsn := b.cc.c.Settings.DSN
	var notify []string
	if dsn != nil {
		env.Ret = strings.ToUpper(dsn.Ret)
		for _, n := range dsn.Notify {
			notify = append(notify, strings.ToUpper(n))
		}
	}
	for i, r := range rcpts {
		// Every recipient gets its ORCPT: the smtp client picks the
		// address type (rfc822 for ASCII, RFC 6533's utf-8 otherwise).
		env.Rcpts[i] = smtp.Recipient{Addr: r.email, Notify: notify, ORcpt: r.email}
	}
	return env
}
