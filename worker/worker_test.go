package worker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/sink"
	"github.com/blaster-mail/blaster/transport"
	"github.com/blaster-mail/blaster/worker"
)

var testDomains = []string{"alpha.example.test", "beta.example.test", "gamma.example.test", "delta.example.test", "epsilon.example.test"}

// seedList inserts n contacts spread over testDomains into list name.
func seedList(t *testing.T, pool *pgxpool.Pool, name string, n int) []string {
	t.Helper()
	ctx := context.Background()
	var listID int64
	if err := pool.QueryRow(ctx, "INSERT INTO lists (name) VALUES ($1) RETURNING id", name).Scan(&listID); err != nil {
		t.Fatal(err)
	}
	emails := make([]string, n)
	rows := make([][]any, n)
	for i := range n {
		emails[i] = fmt.Sprintf("user%05d@%s", i, testDomains[i%len(testDomains)])
		rows[i] = []any{emails[i], fmt.Sprintf("User %d", i), map[string]string{"city": "Town" + strconv.Itoa(i%7)}}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"contacts"}, []string{"email", "name", "attrs"}, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO list_members (list_id, contact_id) SELECT $1, id FROM contacts WHERE email = ANY($2)`, listID, emails); err != nil {
		t.Fatal(err)
	}
	return emails
}

func createCampaign(t *testing.T, pool *pgxpool.Pool, list string, personalized bool) int64 {
	t.Helper()
	n := campaign.New{Name: "test " + list, List: list, From: "News <news@sender.example.test>",
		Subject: "Weekly news", Text: "Hello all,\nthe news.\n", HTML: "<p>Hello all</p>"}
	if personalized {
		n.Subject = "Hello {{.Name}}"
		n.Text = "Dear {{.Name}} of {{.Attrs.city}},\n\nthe news.\n"
	}
	c, err := campaign.Create(context.Background(), pool, n)
	if err != nil {
		t.Fatal(err)
	}
	if c.Personalized != personalized {
		t.Fatalf("campaign personalized = %v, want %v", c.Personalized, personalized)
	}
	return c.ID
}

// runWorker starts a worker on tr and stops it when the test ends.
func runWorker(t *testing.T, pool *pgxpool.Pool, tr transport.Transport) *worker.Worker {
	t.Helper()
	return runWorkerConfig(t, worker.Config{Pool: pool, Transport: tr})
}

// runWorkerConfig starts a worker of cfg (polling every 50 ms, logging
// nothing, unless cfg says otherwise) and stops it when the test ends.
func runWorkerConfig(t *testing.T, cfg worker.Config) *worker.Worker {
	t.Helper()
	if cfg.FetchInterval == 0 {
		cfg.FetchInterval = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := w.Stop(ctx); err != nil {
			t.Errorf("stopping worker: %v", err)
		}
	})
	return w
}

func start(t *testing.T, pool *pgxpool.Pool, id int64) *campaign.StartResult {
	t.Helper()
	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}
	res, err := campaign.Start(context.Background(), pool, rc, id)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// waitDone polls the campaign's status until it is done or the deadline
// passes.
func waitDone(t *testing.T, pool *pgxpool.Pool, id int64) *campaign.Status {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s, err := campaign.GetStatus(context.Background(), pool, id)
		if err != nil {
			t.Fatal(err)
		}
		if s.State == campaign.Done {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("campaign %d not done by the deadline: %+v", id, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestEndToEndGoSMTP(t *testing.T) {
	for _, personalized := range []bool{true, false} {
		t.Run(fmt.Sprintf("personalized=%v", personalized), func(t *testing.T) {
			pool := dbtest.Pool(t)
			emails := seedList(t, pool, "news", 1000)
			srv := sink.New(sink.Config{Record: true})
			if err := srv.Listen("127.0.0.1:0"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() }) // after the worker stops and QUITs

			runWorker(t, pool, relayTransport(t, srv.Addr()))
			id := createCampaign(t, pool, "news", personalized)
			res := start(t, pool, id)
			if res.Recipients != 1000 || res.Batches != 10 {
				t.Fatalf("start = %+v, want 1000 recipients in 10 batches (5 domains x 200 / 100)", res)
			}
			st := waitDone(t, pool, id)
			if st.Sent != 1000 || st.Total != 1000 || st.Pending() != 0 {
				t.Fatalf("status = %+v, want 1000 sent of 1000", st)
			}
			got := srv.Received()
			for _, e := range emails {
				if got[e] != 1 {
					t.Fatalf("%s received %d times, want exactly once", e, got[e])
				}
			}
			if len(got) != len(emails) {
				t.Fatalf("server saw %d distinct recipients, want %d", len(got), len(emails))
			}
			stats := srv.Stats()
			wantMsgs := int64(1000)
			if !personalized {
				wantMsgs = 10 // one transaction per batch
			}
			if stats.Messages != wantMsgs || stats.Recipients != 1000 {
				t.Fatalf("server stats %+v, want %d messages, 1000 recipients", stats, wantMsgs)
			}
			// Each run's record cleared its batch's in-flight flag.
			var flagged int
			if err := pool.QueryRow(context.Background(),
				`SELECT count(*) FROM batches WHERE campaign_id = $1 AND sending_job IS NOT NULL`, id).Scan(&flagged); err != nil {
				t.Fatal(err)
			}
			if flagged != 0 {
				t.Errorf("%d batches still flagged in flight after the campaign is done, want 0", flagged)
			}
		})
	}
}

// TestSharedToAnyListName: a same-for-all message is addressed to an empty
// group named after the list, and a list name with characters a group name
// may not hold ('+', '/', non-ASCII) still sends.
func TestSharedToAnyListName(t *testing.T) {
	pool := dbtest.Pool(t)
	const list = "Ünïcode news+promo/2026"
	emails := seedList(t, pool, list, 20)
	srv := sink.New(sink.Config{Record: true})
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	runWorker(t, pool, relayTransport(t, srv.Addr()))
	id := createCampaign(t, pool, list, false)
	start(t, pool, id)
	if st := waitDone(t, pool, id); st.Sent != len(emails) {
		t.Fatalf("status = %+v, want %d sent", st, len(emails))
	}
}

// TestEndToEndSmtpSink delivers through Postfix's smtp-sink, an
// independent SMTP implementation, and reads back its dump of every
// transaction's recipients.
func TestEndToEndSmtpSink(t *testing.T) {
	ss := smtptest.StartSmtpSink(t)
	pool := dbtest.Pool(t)
	emails := seedList(t, pool, "news", 1000)

	runWorker(t, pool, relayTransport(t, ss.Addr))
	id := createCampaign(t, pool, "news", true)
	start(t, pool, id)
	st := waitDone(t, pool, id)
	if st.Sent != 1000 {
		t.Fatalf("status = %+v, want 1000 sent", st)
	}
	got := ss.Recipients(t)
	for _, e := range emails {
		if got[e] != 1 {
			t.Fatalf("smtp-sink got %s %d times, want once", e, got[e])
		}
	}
}

// TestStartTwice: the second start enqueues nothing.
func TestStartTwice(t *testing.T) {
	pool := dbtest.Pool(t)
	seedList(t, pool, "news", 250)
	id := createCampaign(t, pool, "news", true)
	first := start(t, pool, id)
	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}
	second, err := campaign.Start(context.Background(), pool, rc, id)
	if !errors.Is(err, campaign.ErrNotDraft) || second.Started {
		t.Fatalf("second start = %+v, %v; want ErrNotDraft", second, err)
	}
	var jobs, deliveries, batches int
	pool.QueryRow(context.Background(), "SELECT count(*) FROM river_job WHERE kind = 'send_batch'").Scan(&jobs)
	pool.QueryRow(context.Background(), "SELECT count(*) FROM deliveries").Scan(&deliveries)
	pool.QueryRow(context.Background(), "SELECT count(*) FROM batches").Scan(&batches)
	if jobs != first.Batches || batches != first.Batches || deliveries != 250 {
		t.Fatalf("after two starts: %d jobs, %d batches, %d deliveries; want %d, %d, 250",
			jobs, batches, deliveries, first.Batches, first.Batches)
	}
}

// relayTransport is the relay transport to a plaintext test server.
func relayTransport(t *testing.T, addr string) transport.Transport {
	t.Helper()
	cfg, err := transport.ParseRelayURL("smtp://" + addr + "?tls=none")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := transport.NewRelay([]transport.RelayConfig{cfg}, transport.RelayOptions{LocalName: "worker.blaster.test"})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestTooManyRecipients: a server that takes 30 recipients per transaction
// answers 452 to the rest (RFC 5321 §4.5.3.1.10); they go in the next
// transactions on the same connection, and everyone gets the message once.
func TestTooManyRecipients(t *testing.T) {
	pool := dbtest.Pool(t)
	emails := seedList(t, pool, "news", 200)
	srv := sink.New(sink.Config{Record: true, MaxRecipients: 30})
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() }) // after the worker stops and QUITs
	runWorker(t, pool, relayTransport(t, srv.Addr()))
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
	// 5 domains x 40 recipients = 5 batches of 40: 30 + 10 each.
	if st := srv.Stats(); st.Messages != 10 {
		t.Fatalf("server saw %d transactions, want 10 (30 + 10 per batch)", st.Messages)
	}
}
