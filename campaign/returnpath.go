package campaign

import (
	"errors"
	"fmt"

	"github.com/blaster-mail/blaster/returnpath"
)

// ReturnPath is a campaign's signed return path policy (package
// returnpath): the envelope sender its mail goes out with, so that
// asynchronous bounces come back to `blaster bounces` and name the campaign.
// The signing key is not stored: it comes from Secrets.BounceKey.
//
// A personalized campaign sends one transaction per recipient anyway, so
// each gets its own address (full VERP: the bounce names the recipient
// whatever it says). A same-for-all campaign keeps one transaction per
// batch with one campaign-level address, and a bounce's recipient is read
// from its report (Final-Recipient / Original-Recipient, RFC 3464 §2.3),
// unless PerRecipient asks for one transaction, and one address, per
// recipient.
type ReturnPath struct {
	// Address is the base address, e.g. bounces@bounce.example.test; its
	// domain must route mail to `blaster bounces` (an MX to --listen, or a
	// mailbox it reads). Tags go after "+" in the local part.
	Address string `json:"address"`
	// PerRecipient gives a same-for-all campaign per-recipient addresses
	// too, at the cost of one SMTP transaction per recipient instead of
	// one per batch of up to 100.
	PerRecipient bool `json:"per_recipient,omitempty"`
}

// check validates the policy and that the key to sign with is there.
func (rp *ReturnPath) check(sec Secrets) error {
	if rp == nil {
		return nil
	}
	if _, _, err := returnpath.CheckBase(rp.Address); err != nil {
		return err
	}
	if len(sec.BounceKey) == 0 {
		return errors.New("a return path needs the bounce key: set " + returnpath.KeyEnv + " or --bounce-key-file")
	}
	if _, err := returnpath.NewSigner(sec.BounceKey); err != nil {
		return fmt.Errorf("bounce key: %w", err)
	}
	return nil
}
