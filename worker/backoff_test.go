package worker_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/time/rate"

	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/sink"
	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/throttle"
	"github.com/blaster-mail/blaster/transport"
)

// received counts the messages srv accepted per recipient.
func received(srv *smtptest.Server) map[string]int {
	got := map[string]int{}
	for _, m := range srv.Messages() {
		for _, to := range m.Rcpts {
			got[to]++
		}
	}
	return got
}

// setRetry gives the campaign a short retry schedule, so deferred
// recipients come back within the test.
func setRetry(t *testing.T, pool *pgxpool.Pool, id int64, d time.Duration) {
	t.Helper()
	if _, err := pool.Exec(context.Background(),
		`UPDATE campaigns SET settings = jsonb_set(settings, '{retry_schedule}', to_jsonb(ARRAY[$2::text]))
		 WHERE id = $1`, id, d.String()); err != nil {
		t.Fatal(err)
	}
}

// TestBackOffThroughWorker: a personalized campaign of 200 recipients goes
// through the send worker and the ledger to a go-smtp server that takes
// 40 messages a second and answers RCPT with 451 4.7.1 "try again in 1
// second" past that, while the relay's configured rate is twice that. The worker must
// back off (the relay scope is suspended, then recovers) and lose nothing:
// every recipient sent once, recorded sent, and few attempts refused.
func TestBackOffThroughWorker(t *testing.T) {
	pool := dbtest.Pool(t)
	emails := seedList(t, pool, "news", 200)
	// The server's rate limit answers RCPT, as Gmail's 4.7.28 does: one
	// recipient per transaction, so a refused RCPT is a refused message.
	lim := rate.NewLimiter(40, 5)
	var refusedN atomic.Int64
	srv := smtptest.StartServer(t, smtptest.Options{RcptErr: func(string) error {
		if lim.Allow() {
			return nil
		}
		refusedN.Add(1)
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 7, 1},
			Message: "Rate limit exceeded, try again in 1 second"}
	}})
	addr := srv.Addr
	runThrottledWorker(t, pool, relayTransport(t, addr), throttle.Config{
		AlertReserve:     -1,
		Route:            throttle.Limits{Rate: 80, Burst: 8},
		RecoveryStart:    0.25,
		RecoveryStep:     1.5,
		RecoveryInterval: throttle.Duration(2 * time.Second),
	})
	id := createCampaign(t, pool, "news", true)
	setRetry(t, pool, id, time.Second)
	start(t, pool, id)
	if st := waitDone(t, pool, id); st.Sent != 200 {
		t.Fatalf("status %+v, want 200 sent", st)
	}

	refused := int(refusedN.Load())
	got := received(srv)
	for _, e := range emails {
		if got[e] != 1 {
			t.Errorf("%s accepted %d times, want once", e, got[e])
		}
	}
	var attempts, deferredOnce int
	if err := pool.QueryRow(context.Background(), `
		SELECT sum(attempts), count(*) FILTER (WHERE attempts > 1) FROM deliveries WHERE campaign_id = $1`, id).
		Scan(&attempts, &deferredOnce); err != nil {
		t.Fatal(err)
	}
	if attempts != 200+refused {
		t.Errorf("ledger counts %d attempts, want 200 + the %d the server refused", attempts, refused)
	}
	if refused == 0 {
		t.Fatal("the server never refused: the test does not exercise back-off")
	}
	var rule string
	if err := pool.QueryRow(context.Background(),
		`SELECT rule FROM throttle_scopes WHERE scope LIKE 'route:%'`).Scan(&rule); err != nil {
		t.Fatalf("no back-off recorded for the relay: %v", err)
	}
	// Without back-off, half of the attempts past the first second would
	// be refused; with it, about one per connection in flight each time
	// the recovering rate passes the server's.
	if refused*10 > attempts {
		t.Errorf("%d of %d attempts refused, want under 10%%", refused, attempts)
	}
	t.Logf("200 recipients, %d attempts, %d refused by the server (%.1f%%), %d recipients deferred once or more; last rule %s",
		attempts, refused, 100*float64(refused)/float64(attempts), deferredOnce, rule)
}

// TestThrottledBatchSnoozes: a batch whose relay is suspended, or out of
// budget, is snoozed: no attempt is spent (in the ledger or in River) and
// nobody is marked deferred; it goes out once the suspension ends.
func TestThrottledBatchSnoozes(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	emails := seedList(t, pool, "news", 10) // 5 domains x 2: 5 batches
	srv := sink.New(sink.Config{Record: true})
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	tr := relayTransport(t, srv.Addr())

	// Another process suspends the relay for 3 s; this worker sees it in
	// the shared store.
	other, err := throttle.New(throttle.Config{Pool: pool, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	key := throttle.Key{Route: tr.Route("")}
	other.Observe(key, &smtp.Error{Reply: smtp.Reply{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 0},
		Text: "too busy, try again in 3 seconds"}})
	// Out of budget once resumed: 10/s with a burst of 1 and no waiting,
	// so a transaction less than 100ms after the last snoozes its batch.
	runThrottledWorker(t, pool, tr, throttle.Config{
		AlertReserve: -1,
		Route:        throttle.Limits{Rate: 10, Burst: 1},
		MaxWait:      throttle.Duration(time.Nanosecond),
		NoRules:      true,
	})
	id := createCampaign(t, pool, "news", true)
	start(t, pool, id)

	// While suspended: every batch snoozed (attempt given back) before it
	// claimed anyone: nobody sending, attempted or deferred.
	deadline := time.Now().Add(2 * time.Second)
	for {
		var snoozed, touched int
		if err := pool.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM river_job WHERE (metadata->>'snoozes')::int > 0 AND attempt = 0),
			       (SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND (state <> 'queued' OR attempts > 0))`,
			id).Scan(&snoozed, &touched); err != nil {
			t.Fatal(err)
		}
		if touched > 0 {
			t.Fatalf("%d recipients claimed or attempted while the relay is suspended", touched)
		}
		if snoozed == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 5 batches snoozed (attempt 0) while the relay is suspended", snoozed)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if st := waitDone(t, pool, id); st.Sent != 10 {
		t.Fatalf("status %+v, want 10 sent", st)
	}
	var once, neverDeferred, maxSnoozes, maxAttempt int
	if err := pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE attempts = 1), count(*) FILTER (WHERE next_attempt_at IS NULL AND last_code = 250),
		       (SELECT max((metadata->>'snoozes')::int) FROM river_job), (SELECT max(attempt) FROM river_job)
		FROM deliveries WHERE campaign_id = $1`, id).Scan(&once, &neverDeferred, &maxSnoozes, &maxAttempt); err != nil {
		t.Fatal(err)
	}
	if once != 10 || neverDeferred != 10 {
		t.Errorf("%d of 10 recipients attempted once, %d sent without a deferral", once, neverDeferred)
	}
	if maxAttempt != 1 {
		t.Errorf("a job ran %d attempts, want 1 (snoozes spend none)", maxAttempt)
	}
	if maxSnoozes < 2 {
		t.Errorf("jobs snoozed at most %d times; out of budget after the suspension should snooze again", maxSnoozes)
	}
	got := srv.Received()
	for _, e := range emails {
		if got[e] != 1 {
			t.Errorf("%s received %d times, want once", e, got[e])
		}
	}
}

// TestConnectionErrorsBackOff: a relay that refuses connections, and one
// that accepts but never greets (a timeout), slow the relay's scope through
// the worker, and the recipients are deferred, not bounced.
func TestConnectionErrorsBackOff(t *testing.T) {
	refusing := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens: connections are refused
		return addr
	}
	silent := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var conns []net.Conn
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c) // held open, never greeted
				mu.Unlock()
			}
		}()
		t.Cleanup(func() {
			ln.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		})
		return ln.Addr().String()
	}
	for _, c := range []struct {
		name   string
		server func(*testing.T) string
		reason string
	}{
		{"refused", refusing, "refused"},
		{"timeout", silent, "timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pool := dbtest.Pool(t)
			seedList(t, pool, "news", 5) // one per domain
			rc, err := transport.ParseRelayURL("smtp://" + c.server(t) + "?tls=none")
			if err != nil {
				t.Fatal(err)
			}
			tr, err := transport.NewRelay([]transport.RelayConfig{rc}, transport.RelayOptions{
				LocalName: "worker.blaster.test", Timeouts: smtp.Timeouts{Greeting: 300 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			runThrottledWorker(t, pool, tr, throttle.Config{})
			id := createCampaign(t, pool, "news", false)
			start(t, pool, id)
			deadline := time.Now().Add(20 * time.Second)
			for {
				var deferred, bounced int
				var rule, reason string
				if err := pool.QueryRow(context.Background(), `
					SELECT (SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'deferred'),
					       (SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'bounced'),
					       coalesce((SELECT rule || ' ' FROM throttle_scopes WHERE scope = $2), ''),
					       coalesce((SELECT reason FROM throttle_scopes WHERE scope = $2), '')`,
					id, "route:"+tr.Route("")).Scan(&deferred, &bounced, &rule, &reason); err != nil {
					t.Fatal(err)
				}
				if bounced > 0 {
					t.Fatalf("%d recipients bounced for a connection error", bounced)
				}
				if deferred == 5 && rule != "" {
					if rule != "connection " || !strings.Contains(strings.ToLower(reason), c.reason) {
						t.Fatalf("relay backed off by rule %q for %q, want the connection rule for a %s", rule, reason, c.reason)
					}
					var factor float64
					if err := pool.QueryRow(context.Background(), `SELECT factor FROM throttle_scopes WHERE scope = $1`,
						"route:"+tr.Route("")).Scan(&factor); err != nil || factor >= 1 {
						t.Fatalf("relay factor %v (%v), want slowed below 1", factor, err)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of 5 deferred, back-off rule %q", deferred, rule)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestMaxConnectionsAndStatus: a relay's max_connections holds across the
// worker's batches (five batches, two connections), and `throttle status`
// shows the connections in flight while they are.
func TestMaxConnectionsAndStatus(t *testing.T) {
	pool := dbtest.Pool(t)
	seedList(t, pool, "news", 50) // 5 domains: 5 batches
	// The server holds each accepted message's reply until release.
	release := make(chan struct{})
	var mu sync.Mutex
	inData, maxInData := 0, 0
	srv := smtptest.StartServer(t, smtptest.Options{OnMessage: func(smtptest.Message) {
		mu.Lock()
		inData++
		maxInData = max(maxInData, inData)
		mu.Unlock()
		<-release
		mu.Lock()
		inData--
		mu.Unlock()
	}})
	tr := relayTransport(t, srv.Addr)
	runThrottledWorker(t, pool, tr, throttle.Config{Route: throttle.Limits{MaxConns: 2},
		SyncInterval: throttle.Duration(100 * time.Millisecond)})
	id := createCampaign(t, pool, "news", false)
	start(t, pool, id)

	scope := "route:" + tr.Route("")
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := throttle.Status(context.Background(), pool, nil, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		var inFlight int
		for _, s := range st {
			if s.Scope == scope {
				inFlight = s.InFlight
			}
		}
		if inFlight == 2 {
			break
		}
		if inFlight > 2 {
			t.Fatalf("status shows %d connections in flight, max_connections is 2", inFlight)
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed 2 connections in flight for %s: %+v", scope, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Both batches holding a connection get to their DATA (a run reads
	// and marks its recipients first), and a third never does.
	for {
		mu.Lock()
		n := inData
		mu.Unlock()
		if n >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(release)
	if st := waitDone(t, pool, id); st.Sent != 50 {
		t.Fatalf("status %+v, want 50 sent", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := len(received(srv)); maxInData != 2 || n != 50 {
		t.Fatalf("server saw %d transactions at once (want 2, the cap) and %d recipients (want 50)", maxInData, n)
	}
}
