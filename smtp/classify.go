package smtp

import (
	"errors"
	"fmt"
)

// ErrUnknownOutcome is wrapped by the error Send returns when the end of
// the message data (the final ".") went out but no reply was read: the
// server may or may not have taken the message. It is the one truly
// ambiguous case of a transaction (design decision 4).
var ErrUnknownOutcome = errors.New("smtp: message data sent but no reply to it was read; delivery unknown")

// ErrLineTooLong is wrapped when a body line exceeds 998 octets before its
// CRLF (RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with the
// CRLF). The connection is closed before the final "." so nothing partial
// is delivered; such a message must be encoded upstream (quoted-printable
// or base64), so it bounces.
var ErrLineTooLong = errors.New("smtp: message line longer than 998 octets (RFC 5321 §4.5.3.1.6)")

// ErrSMTPUTF8Unsupported is wrapped when the envelope needs SMTPUTF8
// (RFC 6531 §3.4: a non-ASCII address) and the server does not offer it.
var ErrSMTPUTF8Unsupported = errors.New("smtp: envelope needs SMTPUTF8 (RFC 6531) and the server does not offer it")

// ErrMessageTooLarge is wrapped when Envelope.Size exceeds the server's
// advertised SIZE (RFC 1870 §6): the server would refuse it.
var ErrMessageTooLarge = errors.New("smtp: message larger than the server's SIZE limit (RFC 1870)")

// ErrInvalidEnvelope is wrapped when the envelope cannot be sent as it
// is: no recipients, a reverse path with a control character, '<' or '>'
// (which could inject commands) or longer than RFC 5321 §4.5.3.1.3 allows,
// or a DSN parameter outside RFC 3461 §4. A bad recipient address is
// reported per recipient instead (see Send).
var ErrInvalidEnvelope = errors.New("smtp: invalid envelope")

// RouteError is a failure of the route as a whole, not of a message: the
// greeting, EHLO, STARTTLS, the TLS handshake or AUTH failed. Dial returns
// every error wrapped in one. Classify maps it to Retry, because the
// recipients are not at fault; when Permanent is set (bad credentials, a
// refused certificate, STARTTLS required but not offered, a 5xx greeting)
// retrying the same route will not help and the caller should suspend the
// route and tell the operator rather than bounce the recipients.
type RouteError struct {
	// Server is the address dialed (host:port).
	Server string
	// Op is the step that failed: "dial", "greeting", "EHLO", "STARTTLS",
	// "TLS handshake", "AUTH".
	Op string
	// Permanent is set when the same configuration will fail again.
	Permanent bool
	// Err is the cause: an *Error, a network or TLS error.
	Err error
}

func (e *RouteError) Error() string {
	return "smtp route " + e.Server + ": " + e.Op + ": " + e.Err.Error()
}

func (e *RouteError) Unwrap() error { return e.Err }

// Outcome is what an error or reply means for a recipient.
type Outcome int

const (
	// Sent: the server took responsibility for the message (2xx).
	Sent Outcome = iota
	// Retry: a transient failure; try again later (4xx, network errors,
	// anything unknown).
	Retry
	// Bounce: a permanent failure for this message or recipient (5xx).
	Bounce
	// Unknown: the data went out but its reply was never read.
	Unknown
)

func (o Outcome) String() string {
	switch o {
	case Sent:
		return "sent"
	case Retry:
		return "retry"
	case Bounce:
		return "bounce"
	case Unknown:
		return "unknown"
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// Classify maps any error from this package (or anything else) to an
// Outcome. It is the one classifier of design decision 6:
//
//   - nil: Sent.
//   - ErrUnknownOutcome: Unknown (checked first: it wraps a network error).
//   - *RouteError (including AUTH failures and TLS refusals): Retry; the
//     recipients are not at fault. See RouteError.Permanent.
//   - ErrLineTooLong, ErrSMTPUTF8Unsupported, ErrMessageTooLarge,
//     ErrInvalidEnvelope: Bounce; the message can never go as it is.
//   - *Error: 5xx Bounce, anything else Retry (4xx, and 421 which also
//     closes the connection).
//   - anything else (network errors, timeouts, ctx cancellation): Retry.
func Classify(err error) Outcome {
	if err == nil {
		return Sent
	}
	if errors.Is(err, ErrUnknownOutcome) {
		return Unknown
	}
	var re *RouteError
	if errors.As(err, &re) {
		return Retry
	}
	for _, permanent := range []error{ErrLineTooLong, ErrSMTPUTF8Unsupported, ErrMessageTooLarge, ErrInvalidEnvelope} {
		if errors.Is(err, permanent) {
			return Bounce
		}
	}
	var se *Error
	if errors.As(err, &se) {
		if se.Code/100 == 5 {
			return Bounce
		}
		return Retry
	}
	return Retry
}

// ReplyOutcome maps a reply to an Outcome: 2xx Sent, 5xx Bounce, anything
// else (4xx, a nil reply: never answered) Retry.
func ReplyOutcome(r *Reply) Outcome {
	if r == nil {
		return Retry
	}
	switch r.Code / 100 {
	case 2:
		return Sent
	case 5:
		return Bounce
	}
	return Retry
}
