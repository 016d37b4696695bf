package smtp

import "errors"

// Envelope is one SMTP transaction's envelope (RFC 5321 §3.3): the reverse
// path and the recipients, with the ESMTP parameters blaster uses.
type Envelope struct {
	// From is the reverse path (MAIL FROM); "" sends the null path <>.
	From string
	// Rcpts are the forward paths, in the order their RCPT commands go out.
	Rcpts []Recipient
	// Size is the message size in octets for the SIZE parameter (RFC 1870);
	// 0 means unknown and omits it.
	Size int64
	// EightBit sends BODY=8BITMIME (RFC 6152) when the server offers it.
	EightBit bool
	// UTF8 sends SMTPUTF8 (RFC 6531); required when an address is not ASCII.
	UTF8 bool
	// Ret is the DSN RET parameter, "FULL" or "HDRS" (RFC 3461 §4.3); "" omits it.
	Ret string
	// EnvID is the DSN ENVID parameter (RFC 3461 §4.4); "" omits it.
	EnvID string
}

// Recipient is one RCPT TO.
type Recipient struct {
	Addr string
	// Notify is the DSN NOTIFY list (RFC 3461 §4.1): "NEVER", or any of
	// "SUCCESS", "FAILURE", "DELAY". Empty omits it.
	Notify []string
	// ORcpt is the DSN ORCPT address (RFC 3461 §4.2), sent when the
	// server offers DSN: as rfc822;xtext when it is ASCII, as
	// utf-8;utf-8-addr-xtext (RFC 6533 §3) otherwise, and not at all when
	// it is not valid UTF-8 or holds an ASCII control. Empty omits it.
	ORcpt string
}

// Result is what one transaction did, per recipient.
type Result struct {
	// Rcpts has one entry per Envelope.Rcpts, in the same order: the
	// server's reply to that RCPT. Nil where the RCPT was never answered
	// (Send then returns an error, which applies to that recipient).
	// A 452 entry means "not in this transaction": send that recipient in
	// the next one on the same connection. Identical replies may be one
	// shared *Reply, here and across transactions: treat them as read-only.
	Rcpts []*Reply
	// Data is the reply to the end of the message data (the final "."), or
	// nil when no body was sent (every recipient was rejected).
	Data *Reply
}

// Outcome applies Send's per-recipient rule to recipient i, given the
// error Send returned: a negative RCPT reply decides for its recipient;
// otherwise err decides (Classify), and without an error the reply to the
// end of the data does. The reply returned is the one that decided, nil
// when none did (a network error, a recipient never asked for).
//
// Recipients whose outcome is Retry with a 452 reply (RFC 5321
// §4.5.3.1.10, too many recipients; without pipelining the recipients
// after the first 452 carry that same reply, no RCPT having been sent for
// them) were refused for this transaction only: put them in the next one,
// on the same connection, at once.
func (r *Result) Outcome(i int, err error) (Outcome, *Reply) {
	var rp *Reply
	if r != nil && i < len(r.Rcpts) {
		rp = r.Rcpts[i]
	}
	if rp != nil && !rp.Positive() {
		return ReplyOutcome(rp), rp
	}
	if err != nil {
		var se *Error
		if errors.As(err, &se) {
			return Classify(err), &se.Reply
		}
		return Classify(err), nil
	}
	if rp == nil || r.Data == nil {
		return Retry, nil
	}
	return ReplyOutcome(r.Data), r.Data
}

// Accepted counts the recipients the server accepted at RCPT.
func (r *Result) Accepted() int {
	n := 0
	for _, rp := range r.Rcpts {
		if rp.Positive() {
			n++
		}
	}
	return n
}
