package throttle

import (
	"context"
	"errors"
	"fmt"
	"github.com/blaster-mail/blaster/internal/fakeclock"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"golang.org/x/time/rate"

	"github.com/blaster-mail/blaster/smtp"
)

// rateServer is a go-smtp backend that takes at most a rate of messages per
// second of a fake clock and answers MAIL past it with 451 4.7.1, as
// Postfix's anvil limits or a large provider would. It records each
// message's X-Id header.
type rateServer struct {
	clk *fakeclock.Clock
	lim *rate.Limiter

	mu      sync.Mutex
	got     map[string]int
	refused int
}

func (b *rateServer) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return &rateSession{b: b}, nil
}

type rateSession struct{ b *rateServer }

func (s *rateSession) Mail(string, *gosmtp.MailOptions) error {
	if !s.b.lim.AllowN(s.b.clk.Now(), 1) {
		s.b.mu.Lock()
		s.b.refused++
		s.b.mu.Unlock()
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 7, 1},
			Message: "Rate limit exceeded, try again in 10 seconds"}
	}
	return nil
}

func (s *rateSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }

func (s *rateSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	id, _, _ := strings.Cut(strings.TrimPrefix(string(b), "X-Id: "), "\r\n")
	s.b.mu.Lock()
	s.b.got[id]++
	s.b.mu.Unlock()
	return nil
}

func (s *rateSession) Reset()        {}
func (s *rateSession) Logout() error { return nil }

// TestBackOffAgainstRateLimitingServer sends 1,500 messages, one by one,
// to a real SMTP server (go-smtp, loopback) that takes 20/s and refuses
// more with 451 4.7.1 "try again in 10 seconds", while the throttle is
// configured for 50/s. The throttle must back off on the refusals, recover
// step by step, and lose nothing: every message is accepted exactly once,
// and fewer than 2% of the attempts are refused. Time is a fake clock
// shared by server and throttle.
func TestBackOffAgainstRateLimitingServer(t *testing.T) {
	clk := fakeclock.New()
	srvb := &rateServer{clk: clk, lim: rate.NewLimiter(20, 5), got: map[string]int{}}
	srv := gosmtp.NewServer(srvb)
	srv.Domain = "mx.example.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	l := newTestLimiter(t, Config{
		NowFunc:   clk.Now,
		SleepFunc: clk.Sleep,
		MaxWait:   Duration(time.Hour), // Acquire sleeps (on the fake clock) for budget
		Domain:    Limits{Rate: 50, Burst: 5},
		Logger:    slog.New(slog.DiscardHandler),
	})
	ctx := context.Background()
	c, err := smtp.Dial(ctx, ln.Addr().String(), smtp.Config{LocalName: "blaster.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	key := Key{Route: "mx:mx.example.test", Domain: "example.test", Campaign: 1}
	const n = 1500
	attempts, suspensions := 0, 0
	start := clk.Now()
	for i := 0; i < n; {
		w, err := l.Acquire(ctx, key, 1)
		if err != nil {
			t.Fatal(err)
		}
		if w > 0 { // suspended: the job would be snoozed
			suspensions++
			clk.Advance(w)
			continue
		}
		attempts++
		body := fmt.Sprintf("X-Id: %d\r\nSubject: t\r\n\r\nhello\r\n", i)
		env := &smtp.Envelope{From: "news@example.test", Rcpts: []smtp.Recipient{{Addr: fmt.Sprintf("u%d@example.test", i)}}}
		_, err = c.Send(ctx, env, strings.NewReader(body))
		l.Observe(key, err)
		if err != nil {
			var se *smtp.Error
			if !errors.As(err, &se) || se.Code != 451 {
				t.Fatalf("message %d: %v", i, err)
			}
			if err := c.Reset(ctx); err != nil {
				t.Fatal(err)
			}
			continue // the same message again, after the back-off
		}
		i++
	}
	elapsed := clk.Now().Sub(start)

	srvb.mu.Lock()
	defer srvb.mu.Unlock()
	if len(srvb.got) != n {
		t.Fatalf("server has %d distinct messages, want %d", len(srvb.got), n)
	}
	for id, k := range srvb.got {
		if k != 1 {
			t.Fatalf("message %s accepted %d times", id, k)
		}
	}
	refused := attempts - n
	if refused != srvb.refused {
		t.Fatalf("client counted %d refusals, server %d", refused, srvb.refused)
	}
	if refused == 0 {
		t.Fatal("the server never refused: the test does not exercise back-off")
	}
	if refused*50 > attempts {
		t.Errorf("%d of %d attempts refused, want under 2%%", refused, attempts)
	}
	t.Logf("%d messages in %v of simulated time (%.1f/s against a server taking 20/s), %d attempts refused (%.2f%%), %d suspended Acquires",
		n, elapsed, float64(n)/elapsed.Seconds(), refused, 100*float64(refused)/float64(attempts), suspensions)
}
