// Package transport is where a message leaves blaster: through an SMTP
// relay (with failover), directly to the destination's MX hosts, or into a
// pickup directory. The send worker sees only Transport and Session; which
// one it talks to is configuration.
//
// The queue is kept apart from delivery behind this small interface, as in
// foxcpp/maddy's internal/target.
package transport

import (
	"context"
	"io"

	"github.com/blaster-mail/blaster/smtp"
)

// Transport hands out sessions bound for a destination domain.
type Transport interface {
	// Session returns a session able to deliver to recipients at domain:
	// a pooled connection to the relay, to one of domain's MX hosts, or a
	// pickup directory writer. It blocks while the route's connection cap is
	// reached, until ctx ends.
	Session(ctx context.Context, domain string) (Session, error)
	// Route names the route a domain's mail takes (relay URL without
	// credentials, "mx:HOST", "pickup:DIR"), for throttling, logs and metrics.
	Route(domain string) string
	// Close ends every session (QUIT on SMTP connections) and waits for them.
	Close() error
}

// Session is one transaction channel: an SMTP connection, or a writer of
// pickup files. It is used by one goroutine at a time.
type Session interface {
	// Send runs one transaction: env's recipients, then the body read from
	// body to EOF. Per-recipient replies are in the result, even when an
	// error is returned for the data phase. An error that wraps
	// smtp.ErrUnknownOutcome means the body was sent but its reply was
	// never read.
	Send(ctx context.Context, env *smtp.Envelope, body io.Reader) (*smtp.Result, error)
	// Release gives the session back: reused (after RSET) when the
	// connection is healthy, closed when it is broken or the RSET fails, so
	// a reply error (a rejected recipient) does not cost a new connection.
	// err is the last error Send returned, if any; a relay that answered
	// 421 with it is passed over for a while. Call it exactly once.
	Release(err error)
}
