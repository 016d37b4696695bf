package transport

import (
	"context"
	"io"

	"github.com/blaster-mail/blaster/pool"
	"github.com/blaster-mail/blaster/smtp"
)

// smtpSession is a pooled SMTP connection handed out as a Session. It
// counts the messages that went through it, so the pool retires the
// connection after its MaxMessages.
type smtpSession struct {
	pool *pool.Pool[*smtp.Client]
	conn *smtp.Client
	sent int
	// onRelease, when set, sees the error Release is given before the
	// connection goes back to the pool (the relay marks itself down on 421).
	onRelease func(error)
	released  bool
}

func (s *smtpSession) Send(ctx context.Context, env *smtp.Envelope, body io.Reader) (*smtp.Result, error) {
	res, err := s.conn.Send(ctx, env, body)
	if res != nil && res.Data != nil {
		s.sent++
	}
	return res, err
}

// Release gives the connection back; a second call does nothing.
func (s *smtpSession) Release(err error) {
	if s.released {
		return
	}
	s.released = true
	if s.onRelease != nil {
		s.onRelease(err)
	}
	s.pool.PutSent(s.conn, s.sent, err)
}
