package throttle

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"golang.org/x/sync/errgroup"

	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/smtp"
)

// The soak measures the shared throttle against a real SMTP server with
// real processes and the real clock, so it is skipped unless asked for:
//
//	BLASTER_THROTTLE_SOAK=2m go test -run TestSoakSMTP -v -timeout 10m ./throttle/
//
// Three child processes (this test binary, as in os/exec's
// TestHelperProcess) share one PostgreSQL database; each runs eight senders
// with their own SMTP connection to an in-process go-smtp server, through
// one relay limited to 200 recipients/s (burst 20). The server timestamps
// every message it accepts; the test reports the rate it saw per second and
// overall, and fails past the goals: overall within 2% of the limit, no
// second over 110%.
const (
	soakEnv      = "BLASTER_THROTTLE_SOAK"
	soakChildEnv = "BLASTER_THROTTLE_SOAK_CHILD" // database URL|SMTP address|start (Unix ns)|duration
	soakRate     = 200
	soakProcs    = 3
	soakSenders  = 8
)

// soakServer counts accepted messages per second from start.
type soakServer struct {
	start time.Time
	mu    sync.Mutex
	per   map[int]int
}

func (b *soakServer) NewSession(*gosmtp.Conn) (gosmtp.Session, error) { return soakSession{b}, nil }

type soakSession struct{ b *soakServer }

func (s soakSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (s soakSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (s soakSession) Reset()                                 {}
func (s soakSession) Logout() error                          { return nil }
func (s soakSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	since := time.Since(s.b.start)
	sec := int(since / time.Second)
	if since < 0 {
		sec = -1
	}
	s.b.mu.Lock()
	s.b.per[sec]++
	s.b.mu.Unlock()
	return nil
}

func TestSoakSMTP(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv(soakEnv))
	if err != nil {
		t.Skip("set " + soakEnv + " to a duration (e.g. 2m) to run")
	}
	url := dbtest.New(t)
	start := time.Now().Add(3 * time.Second).Truncate(time.Second) // children start together
	srvb := &soakServer{start: start, per: map[int]int{}}
	srv := gosmtp.NewServer(srvb)
	srv.Domain = "relay.example.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	arg := strings.Join([]string{url, ln.Addr().String(), strconv.FormatInt(start.UnixNano(), 10), d.String()}, "|")
	var g errgroup.Group
	for i := 0; i < soakProcs; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSoakChild$", "-test.v")
		cmd.Env = append(os.Environ(), soakChildEnv+"="+arg)
		g.Go(func() error {
			out, err := cmd.CombinedOutput()
			if err != nil {
				return fmt.Errorf("child: %w\n%s", err, out)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	srvb.mu.Lock()
	defer srvb.mu.Unlock()
	secs := int(d / time.Second)
	per := make([]int, secs)
	total, maxSec, minSec := 0, 0, 1<<30
	for s := range per {
		per[s] = srvb.per[s]
		total += per[s]
		maxSec, minSec = max(maxSec, per[s]), min(minSec, per[s])
	}
	overall := float64(total) / float64(secs)
	t.Logf("server saw per second: %v", per)
	t.Logf("%d processes x %d senders, relay limited to %d/s, %ds: %d messages, %.2f/s overall (%.2f%% of the limit), seconds min %d max %d (%.1f%%); outside the window %d",
		soakProcs, soakSenders, soakRate, secs, total, overall, 100*overall/soakRate, minSec, maxSec, 100*float64(maxSec)/soakRate, srvb.per[-1]+srvb.per[secs])
	if overall > soakRate*1.02 || overall < soakRate*0.98 {
		t.Errorf("overall %.2f/s, want within 2%% of %d", overall, soakRate)
	}
	if float64(maxSec) > soakRate*1.10 {
		t.Errorf("a second had %d, over 110%% of %d", maxSec, soakRate)
	}
}

// TestSoakChild is one worker process of TestSoakSMTP.
func TestSoakChild(t *testing.T) {
	arg := os.Getenv(soakChildEnv)
	if arg == "" {
		t.Skip("child process of TestSoakSMTP")
	}
	parts := strings.Split(arg, "|")
	if len(parts) != 4 {
		t.Fatalf("%s=%q", soakChildEnv, arg)
	}
	ns, _ := strconv.ParseInt(parts[2], 10, 64)
	start := time.Unix(0, ns)
	d, err := time.ParseDuration(parts[3])
	if err != nil {
		t.Fatal(err)
	}
	pool, err := db.Open(context.Background(), parts[0], soakSenders+2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	l, err := New(Config{
		Pool:         pool,
		AlertReserve: -1,
		Routes:       map[string]Limits{relay: {Rate: soakRate, Burst: soakRate / 10}},
		Logger:       slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(d))
	defer cancel()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	var g errgroup.Group
	for i := 0; i < soakSenders; i++ {
		g.Go(func() error {
			c, err := smtp.Dial(ctx, parts[1], smtp.Config{LocalName: "blaster.example.test"})
			if err != nil {
				return err
			}
			defer c.Close()
			if err := sleep(ctx, time.Until(start)); err != nil { // the common start
				return nil
			}
			key := Key{Route: relay, Domain: "example.test", Campaign: 1}
			env := &smtp.Envelope{From: "news@example.test", Rcpts: []smtp.Recipient{{Addr: "u@example.test"}}}
			for ctx.Err() == nil {
				w, err := l.Acquire(ctx, key, 1)
				if err != nil && ctx.Err() == nil {
					return fmt.Errorf("acquiring: %w", err)
				}
				if err != nil || (w > 0 && sleep(ctx, w) != nil) {
					return nil // the run is over
				}
				if w > 0 {
					continue
				}
				// The run's deadline ends the loop, not a transaction.
				res, err := c.Send(context.WithoutCancel(ctx), env, strings.NewReader("Subject: soak\r\n\r\nhello\r\n"))
				l.Observe(key, ResultError(res, err))
				if err != nil {
					return fmt.Errorf("sending: %w", err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}
