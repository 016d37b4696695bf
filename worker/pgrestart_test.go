package worker_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/localpg"
	"github.com/blaster-mail/blaster/sink"
	"github.com/blaster-mail/blaster/worker"
)

// TestPostgresRestart stops and starts PostgreSQL in the middle of a
// personalized campaign: the worker waits for it, reconnects and carries
// on, and every recipient gets the message exactly once. It runs against a
// private cluster of its own (internal/localpg), never the shared server.
func TestPostgresRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private PostgreSQL cluster: skipped in -short mode")
	}
	// Not t.TempDir: the postgres OS user (we may be root) must enter it.
	base, err := os.MkdirTemp("", "pgrestart")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	t.Cleanup(func() { os.RemoveAll(base) })
	dir := filepath.Join(base, "pg")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	url, stop, err := localpg.Private(ctx, dir, quiet)
	if err != nil {
		t.Skipf("no private PostgreSQL cluster here: %v", err)
	}
	t.Cleanup(func() { stop() })
	pool, err := db.Open(ctx, url, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := db.Migrate(ctx, pool, io.Discard); err != nil {
		t.Fatal(err)
	}
	emails := seedList(t, pool, "news", 3000)
	srv := sink.New(sink.Config{Record: true})
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	runWorkerConfig(t, worker.Config{Pool: pool, Transport: relayTransport(t, srv.Addr()),
		JobTimeout: 3 * time.Second, RescueAfter: 5 * time.Second, NewsletterWorkers: 4})
	id := createCampaign(t, pool, "news", true)
	start(t, pool, id)

	waitFor(t, "the campaign is under way", func() bool { return srv.Stats().Recipients >= 500 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	stoppedAt := srv.Stats().Recipients
	// Down for a moment: the batches in flight finish their transactions
	// and wait to record them.
	time.Sleep(500 * time.Millisecond)
	url2, stop2, err := localpg.Private(ctx, dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	stop = stop2
	if url2 != url {
		t.Fatalf("restarted cluster at %s, want the same URL as before", url2)
	}
	t.Logf("PostgreSQL restarted after %d of 3000 recipients", stoppedAt)

	st := waitDone(t, pool, id)
	if st.Sent != 3000 || st.Unknown != 0 {
		t.Fatalf("status after the restart = %+v, want 3000 sent", st)
	}
	got := srv.Received()
	for _, e := range emails {
		if got[e] != 1 {
			t.Fatalf("%s received %d times, want once", e, got[e])
		}
	}
	if n, _ := campaign.GetStatus(ctx, pool, id); n.MaybeDuplicated != 0 {
		t.Errorf("%d recipients marked maybe duplicated", n.MaybeDuplicated)
	}
}

// waitFor polls cond until it holds or a minute passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
