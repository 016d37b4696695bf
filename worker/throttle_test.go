package worker_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/sink"
	"github.com/blaster-mail/blaster/throttle"
	"github.com/blaster-mail/blaster/transport"
	"github.com/blaster-mail/blaster/worker"
)

// runThrottledWorker is runWorker with a throttle.
func runThrottledWorker(t *testing.T, pool *pgxpool.Pool, tr transport.Transport, cfg throttle.Config) {
	t.Helper()
	cfg.Pool = pool
	cfg.Logger = slog.New(slog.DiscardHandler)
	lim, err := throttle.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Publishes the connections in flight (throttle status, max_connections
	// across processes); stopped after the worker, by cleanup order.
	if err := lim.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lim.Stop)
	runWorkerConfig(t, worker.Config{Pool: pool, Transport: tr, Throttle: lim})
}

// TestThrottleMaxRecipients: a route's max_recipients splits a batch's
// transaction, and every recipient still gets the message once.
func TestThrottleMaxRecipients(t *testing.T) {
	pool := dbtest.Pool(t)
	emails := seedList(t, pool, "news", 200) // 5 domains x 40: 5 batches
	srv := sink.New(sink.Config{Record: true})
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() }) // after the worker stops and QUITs
	runThrottledWorker(t, pool, relayTransport(t, srv.Addr()), throttle.Config{Route: throttle.Limits{MaxRcpts: 15}})
	id := createCampaign(t, pool, "news", false)
	start(t, pool, id)
	if st := waitDone(t, pool, id); st.Sent != 200 {
		t.Fatalf("status %+v, want 200 sent", st)
	}
	got := srv.Received()
	for _, e := range emails {
		if got[e] != 1 {
			t.Fatalf("%s received %d times, want once", e, got[e])
		}
	}
	if st := srv.Stats(); st.Messages != 15 {
		t.Fatalf("server saw %d transactions, want 15 (15 + 15 + 10 per batch)", st.Messages)
	}
}

// TestThrottleBounceRule: a transient reply that a back-off rule with
// action "bounce" matches (the shipped mailbox-gone) is recorded bounced,
// not deferred for days; without rules it is deferred.
func TestThrottleBounceRule(t *testing.T) {
	for _, rules := range []bool{true, false} {
		pool := dbtest.Pool(t)
		seedList(t, pool, "news", 50)
		if _, err := pool.Exec(context.Background(),
			`UPDATE contacts SET email = 'gone' || email WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 10)`); err != nil {
			t.Fatal(err)
		}
		// The server answers 450 "mailbox is disabled" to RCPTs of
		// addresses starting with "gone", and accepts the rest.
		srv := smtptest.StartServer(t, smtptest.Options{RcptErr: func(to string) error {
			if strings.HasPrefix(to, "gone") {
				return &gosmtp.SMTPError{Code: 450, EnhancedCode: gosmtp.EnhancedCode{4, 2, 1}, Message: "Mailbox is disabled"}
			}
			return nil
		}})
		addr := srv.Addr

		cfg, err := throttle.LoadConfig("")
		if err != nil {
			t.Fatal(err)
		}
		cfg.NoRules = !rules
		runThrottledWorker(t, pool, relayTransport(t, addr), cfg)
		id := createCampaign(t, pool, "news", false)
		start(t, pool, id)

		want := campaign.StateBounced
		if !rules {
			want = campaign.StateDeferred
		}
		deadline := time.Now().Add(time.Minute)
		for {
			var n, sent int
			err := pool.QueryRow(context.Background(), `
				SELECT count(*) FILTER (WHERE email LIKE 'gone%' AND state = $2 AND last_code = 450),
				       count(*) FILTER (WHERE email NOT LIKE 'gone%' AND state = 'sent')
				FROM deliveries WHERE campaign_id = $1`, id, want).Scan(&n, &sent)
			if err != nil {
				t.Fatal(err)
			}
			if n == 10 && sent == 40 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("rules %v: %d of 10 gone recipients %s, %d of 40 others sent", rules, n, want, sent)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n := len(received(srv)); n != 40 {
			t.Errorf("rules %v: server accepted %d recipients, want 40", rules, n)
		}
	}
}
