package metrics

import (
	"context"
	"errors"
	"io"
	"strconv"
	"time"

	"github.com/blaster-mail/blaster/pool"
	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/transport"
)

// Transport wraps tr so that every transaction through it is counted and
// timed, and its connection pools (relay or MX transports) are read at
// scrape time. Close and Route go to tr.
func (m *Metrics) Transport(tr transport.Transport) transport.Transport {
	var src poolSource
	switch t := tr.(type) {
	case *transport.Relay:
		src = poolSource{stats: t.Stats, route: func(name string) string { return name }}
	case *transport.MX:
		src = poolSource{stats: t.Stats, route: func(host string) string { return "mx:" + host }}
	}
	if src.stats != nil {
		m.mu.Lock()
		m.pools = append(m.pools, src)
		m.mu.Unlock()
	}
	return &meteredTransport{Transport: tr, m: m}
}

// poolSource is a transport's pool counters keyed by pool name, and the
// route each name is.
type poolSource struct {
	stats func() map[string]pool.Stats
	route func(name string) string
}

type meteredTransport struct {
	transport.Transport
	m *Metrics
}

func (t *meteredTransport) Session(ctx context.Context, domain string) (transport.Session, error) {
	route, dom := t.m.routes.label(t.Transport.Route(domain)), t.m.domains.label(domain)
	s, err := t.Transport.Session(ctx, domain)
	if err != nil {
		if ctx.Err() == nil {
			t.m.sessionFails.WithLabelValues(route, dom).Inc()
		}
		return nil, err
	}
	return &meteredSession{Session: s, m: t.m, route: route, domain: dom}, nil
}

type meteredSession struct {
	transport.Session
	m             *Metrics
	route, domain string
}

func (s *meteredSession) Send(ctx context.Context, env *smtp.Envelope, body io.Reader) (*smtp.Result, error) {
	began := time.Now()
	res, err := s.Session.Send(ctx, env, body)
	s.m.transaction.WithLabelValues(s.route).Observe(time.Since(began).Seconds())
	s.m.messages.WithLabelValues(s.route, s.domain, messageOutcome(res, err)).Inc()
	var data *smtp.Reply
	if res != nil {
		// Counted per distinct reply: a transaction's 100 RCPTs are
		// mostly one "250 2.1.5 OK".
		type kind struct {
			code     int
			enhanced smtp.EnhancedCode
		}
		rcpts := map[kind]int{}
		for _, r := range res.Rcpts {
			if r != nil {
				rcpts[kind{r.Code, r.Enhanced}]++
			}
		}
		for k, n := range rcpts {
			s.m.reply(s.route, "rcpt", &smtp.Reply{Code: k.code, Enhanced: k.enhanced}, n)
		}
		data = res.Data
		s.m.reply(s.route, "data", data, 1)
	}
	// A reply that failed the transaction elsewhere (MAIL, a 421).
	var se *smtp.Error
	if errors.As(err, &se) && (data == nil || *data != se.Reply) && !rcptReply(res, &se.Reply) {
		s.m.reply(s.route, "other", &se.Reply, 1)
	}
	return res, err
}

// rcptReply reports whether r is one of res's RCPT replies.
func rcptReply(res *smtp.Result, r *smtp.Reply) bool {
	if res == nil {
		return false
	}
	for _, rr := range res.Rcpts {
		if rr != nil && *rr == *r {
			return true
		}
	}
	return false
}

// reply counts n replies like r at stage.
func (m *Metrics) reply(route, stage string, r *smtp.Reply, n int) {
	if r == nil {
		return
	}
	class := ""
	if e := r.Enhanced; e != (smtp.EnhancedCode{}) {
		class = strconv.Itoa(e[0]) + "." + strconv.Itoa(e[1])
	}
	m.replies.WithLabelValues(route, stage, strconv.Itoa(r.Code), class).Add(float64(n))
}

// messageOutcome is what became of one transaction's message: the error's
// class, else the reply to its data, else "refused" (no recipient was
// accepted, so no data went).
func messageOutcome(res *smtp.Result, err error) string {
	var o smtp.Outcome
	switch {
	case err != nil:
		o = smtp.Classify(err)
	case res != nil && res.Data != nil:
		o = smtp.ReplyOutcome(res.Data)
	default:
		return "refused"
	}
	return outcomeLabel(o)
}

// outcomeLabel names an smtp.Outcome as the ledger state it leads to.
func outcomeLabel(o smtp.Outcome) string {
	switch o {
	case smtp.Sent:
		return "sent"
	case smtp.Bounce:
		return "bounced"
	case smtp.Unknown:
		return "unknown"
	}
	return "deferred"
}
