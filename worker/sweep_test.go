package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/worker"
)

// TestSweepFindsOrphansThroughBatches: with no index on the delivery state
// (migration 0008) the sweep finds a dead run's sending rows through the
// batch its mark flagged (batches.sending_job). It takes them over
// (unknown, one ambiguous attempt, the batch enqueued again), leaves the
// rows of a live run alone, and clears the flag of every batch it looked at
// that has nothing left in flight.
func TestSweepFindsOrphansThroughBatches(t *testing.T) {
	ctx := context.Background()
	pool := dbtest.Pool(t)
	seedList(t, pool, "news", 50) // 5 domains: batches 1..5
	id := createCampaign(t, pool, "news", false)
	start(t, pool, id)
	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}

	// A live run: one of the campaign's jobs, running since now.
	var live int64
	if err := pool.QueryRow(ctx, `
		UPDATE river_job SET state = 'running', attempted_at = now(), attempt = 1
		WHERE id = (SELECT min(id) FROM river_job WHERE kind = 'send_batch')
		RETURNING id`).Scan(&live); err != nil {
		t.Fatal(err)
	}
	const dead = int64(1) << 40 // no such job: its run is gone
	// mark does what a run's mark does: n rows of the batch sending under
	// job, the batch flagged with it.
	mark := func(batch int, job int64, n int) {
		t.Helper()
		if _, err := pool.Exec(ctx, `
			UPDATE deliveries SET state = 'sending', sending_job = $3, attempts = attempts + 1
			WHERE campaign_id = $1 AND contact_id IN (
				SELECT contact_id FROM deliveries WHERE campaign_id = $1 AND batch_no = $2
				ORDER BY contact_id LIMIT $4)`, id, batch, job, n); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `UPDATE batches SET sending_job = $3 WHERE campaign_id = $1 AND batch_no = $2`,
			id, batch, job); err != nil {
			t.Fatal(err)
		}
	}
	mark(1, dead, 3) // a worker killed in its sending window
	mark(2, live, 2) // a run under way
	mark(3, dead, 0) // a run that snoozed: flagged, nothing in flight

	jobs := func() (n int) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'send_batch'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := jobs()
	n, err := worker.RecoverOrphans(ctx, pool, rc, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("took over %d rows, want the dead run's 3", n)
	}

	count := func(batch int, cond string) (n int) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND batch_no = $2 AND `+cond,
			id, batch).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := count(1, "state = 'unknown' AND ambiguous = 1 AND sending_job IS NULL"); got != 3 {
		t.Errorf("batch 1: %d rows unknown with an ambiguous attempt, want 3", got)
	}
	if got := count(1, "state = 'sending'"); got != 0 {
		t.Errorf("batch 1: %d rows still sending, want 0", got)
	}
	if got := count(2, "state = 'sending'"); got != 2 {
		t.Errorf("batch 2 (live run): %d rows sending, want its 2 left alone", got)
	}
	flags := map[int]*int64{}
	rows, err := pool.Query(ctx, `SELECT batch_no, sending_job FROM batches WHERE campaign_id = $1`, id)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var b int
		var job *int64
		if err := rows.Scan(&b, &job); err != nil {
			t.Fatal(err)
		}
		flags[b] = job
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if flags[1] != nil || flags[3] != nil {
		t.Errorf("batches 1 and 3 still flagged (%v, %v), want cleared", flags[1], flags[3])
	}
	if flags[2] == nil || *flags[2] != live {
		t.Errorf("batch 2 flagged %v, want the live job %d", flags[2], live)
	}
	if got := jobs(); got != before+1 {
		t.Errorf("%d send jobs after the sweep, want %d (batch 1 enqueued again)", got, before+1)
	}

	// A second sweep finds nothing: the flags it cleared keep it off
	// those batches.
	if n, err := worker.RecoverOrphans(ctx, pool, rc, time.Minute); err != nil || n != 0 {
		t.Errorf("second sweep took over %d rows (err %v), want 0", n, err)
	}
}
