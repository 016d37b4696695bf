package campaign_test

import (
	"context"
	"testing"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

// TestFinishAllDone closes a running campaign whose batches are all done
// and leaves one with a pending batch running.
func TestFinishAllDone(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO campaigns (id, name, from_addr, subject, personalized, state) OVERRIDING SYSTEM VALUE
		 VALUES (1, 'finished', 'a@example.test', 's', false, 'running'), (2, 'pending', 'a@example.test', 's', false, 'running')`,
		`INSERT INTO batches (campaign_id, batch_no, domain, size, done) VALUES (1, 1, 'x.example.test', 1, true),
		 (2, 1, 'x.example.test', 1, true), (2, 2, 'y.example.test', 1, false)`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	n, err := campaign.FinishAllDone(ctx, pool)
	if err != nil || n != 1 {
		t.Fatalf("FinishAllDone = %d, %v; want 1", n, err)
	}
	for id, want := range map[int64]campaign.State{1: campaign.Done, 2: campaign.Running} {
		c, err := campaign.Get(ctx, pool, id)
		if err != nil || c.State != want {
			t.Fatalf("campaign %d: %v %v, want %s", id, c.State, err, want)
		}
	}
}
