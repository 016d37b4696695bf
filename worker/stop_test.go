package worker_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/worker"
)

// TestStopPutsBackUnattempted: a worker stopped (Stop's context ends, so
// running jobs are cancelled) while a personalized batch's transaction
// hangs leaves the recipients of that batch it had not attempted queued,
// as Stop promises ("their unfinished recipients stay in the ledger to be
// resumed"), not marked, counted an attempt and deferred with the
// cancelled transaction's error until the next retry time.
func TestStopPutsBackUnattempted(t *testing.T) {
	pool := dbtest.Pool(t)
	emails := seedList(t, pool, "news", 50) // 10 per domain
	hung := emails[len(testDomains)]        // the second recipient of the first domain's batch
	hanging := make(chan struct{})
	srv := smtptest.StartServer(t, smtptest.Options{RcptErr: func(to string) error {
		if to == hung {
			close(hanging)
			time.Sleep(3 * time.Second)
		}
		return nil
	}})
	w, err := worker.New(worker.Config{Pool: pool, Transport: relayTransport(t, srv.Addr),
		NewsletterWorkers: 2, FetchInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	id := createCampaign(t, pool, "news", true)
	setRetry(t, pool, id, time.Hour)
	start(t, pool, id)
	select {
	case <-hanging:
	case <-time.After(30 * time.Second):
		t.Fatal("the hung recipient was never tried")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := w.Stop(ctx); err != nil {
		t.Logf("Stop: %v (expected: its context ended)", err)
	}

	rows, err := pool.Query(context.Background(), `SELECT email, state, attempts, coalesce(last_text, '')
		FROM deliveries d JOIN batches b USING (campaign_id, batch_no)
		WHERE d.campaign_id = $1 AND b.domain = $2 AND d.email > $3 ORDER BY email`, id, testDomains[0], hung)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var e, s, txt string
		var attempts int
		if err := rows.Scan(&e, &s, &attempts, &txt); err != nil {
			t.Fatal(err)
		}
		n++
		if s != "queued" || attempts != 0 {
			t.Errorf("%s, never attempted: %s after %d attempts (%s), want queued after 0", e, s, attempts, txt)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 8 {
		t.Fatalf("%d recipients after the hung one in its batch, want 8", n)
	}
}
