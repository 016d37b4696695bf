package worker

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

// spoolFixture returns a send worker with a spool directory of its own and
// n draft campaigns, each with one attachment ("a.txt", "attached").
func spoolFixture(t *testing.T, n int) (*sendWorker, []int64) {
	t.Helper()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	if _, err := pool.Exec(ctx, `INSERT INTO lists (name) VALUES ('news')`); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "a.txt")
	if err := os.WriteFile(file, []byte("attached"), 0o600); err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, n)
	for i := range ids {
		c, err := campaign.Create(ctx, pool, campaign.New{Name: "n", List: "news", From: "a@sender.example.test",
			Subject: "s", Text: "t", Attachments: []string{file}})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = c.ID
	}
	return &sendWorker{pool: pool, spool: &workerSpool{path: t.TempDir()}, spoolOver: 1 << 20, campaigns: map[int64]*compiled{}}, ids
}

// TestForgetFinished: a done campaign's cached templates and attachment
// copies are dropped by the sweep, but only when the last batch using them
// has let go; a running campaign's stay.
func TestForgetFinished(t *testing.T) {
	ctx := context.Background()
	w, ids := spoolFixture(t, 2)
	pool := w.pool
	done, err := w.campaign(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	running, err := w.campaign(ctx, ids[1])
	if err != nil {
		t.Fatal(err)
	}
	w.release(running)
	copied := filepath.Join(done.dir, "0", "a.txt")
	if b, err := os.ReadFile(copied); err != nil || string(b) != "attached" {
		t.Fatalf("attachment copy %s: %q, %v", copied, b, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE campaigns SET state = 'done' WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := w.forgetFinished(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(copied); err != nil {
		t.Fatalf("copy removed while a batch still used it: %v", err)
	}
	w.release(done)
	if _, err := os.Stat(done.dir); !os.IsNotExist(err) {
		t.Errorf("done campaign's spool copies still there after its last batch: %v", err)
	}
	if _, err := os.Stat(running.dir); err != nil {
		t.Errorf("running campaign's spool copies removed: %v", err)
	}
	w.mu.Lock()
	_, cachedDone := w.campaigns[ids[0]]
	_, cachedRunning := w.campaigns[ids[1]]
	w.mu.Unlock()
	if cachedDone || !cachedRunning {
		t.Errorf("cached after the sweep: done %v, running %v; want false, true", cachedDone, cachedRunning)
	}
	if err := w.closeSpool(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(w.spool.path); !os.IsNotExist(err) {
		t.Errorf("spool directory left after closeSpool: %v", err)
	}
}

// TestForgetCancelled: a cancelled campaign (final: it can be neither
// resumed nor retried) is dropped from the cache with its attachment
// copies too, not kept for the life of the worker.
func TestForgetCancelled(t *testing.T) {
	ctx := context.Background()
	w, ids := spoolFixture(t, 1)
	pool, id := w.pool, ids[0]
	cc, err := w.campaign(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	w.release(cc)
	if _, err := campaign.Cancel(ctx, pool, id); err != nil {
		t.Fatal(err)
	}
	if err := w.forgetFinished(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cc.dir); !os.IsNotExist(err) {
		t.Errorf("cancelled campaign's spool copies still there after the sweep: %v", err)
	}
	w.mu.Lock()
	_, cached := w.campaigns[id]
	w.mu.Unlock()
	if cached {
		t.Error("cancelled campaign still cached after the sweep")
	}
}
