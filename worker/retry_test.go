package worker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/crashtest"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/worker"
)

// TestRetryScheduleJitterMaxAge: recipients answered 451 are deferred to
// the schedule's first wait give or take campaign.RetryJitter (one factor
// per run, so a batch's recipients are due together), and a wait that would
// pass the campaign's maximum age expires them instead.
func TestRetryScheduleJitterMaxAge(t *testing.T) {
	for _, tc := range []struct {
		name   string
		maxAge time.Duration
		want   string
	}{
		{"deferred", 72 * time.Hour, campaign.StateDeferred},
		{"expired", 30 * time.Minute, campaign.StateExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := dbtest.Pool(t)
			ctx := context.Background()
			// Addresses the fault server answers 451 on their first RCPT.
			var emails []string
			for i := 0; len(emails) < 30; i++ {
				e := fmt.Sprintf("user%05d@%s", i, testDomains[len(emails)%2])
				if crashtest.Plan(e, 1) == crashtest.Defer451Rcpt {
					emails = append(emails, e)
				}
			}
			var listID int64
			if err := pool.QueryRow(ctx, "INSERT INTO lists (name) VALUES ('news') RETURNING id").Scan(&listID); err != nil {
				t.Fatal(err)
			}
			rows := make([][]any, len(emails))
			for i, e := range emails {
				rows[i] = []any{e}
			}
			if _, err := pool.CopyFrom(ctx, pgx.Identifier{"contacts"}, []string{"email"}, pgx.CopyFromRows(rows)); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, `INSERT INTO list_members (list_id, contact_id) SELECT $1, id FROM contacts`, listID); err != nil {
				t.Fatal(err)
			}
			srv, err := crashtest.Listen("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			runWorker(t, pool, relayTransport(t, srv.Addr()))
			c, err := campaign.Create(ctx, pool, campaign.New{Name: "n", List: "news", From: "news@sender.example.test",
				Subject: "s", Text: "t", Settings: campaign.Settings{
					RetrySchedule: []campaign.Duration{campaign.Duration(time.Hour)}, MaxAge: campaign.Duration(tc.maxAge)}})
			if err != nil {
				t.Fatal(err)
			}
			start(t, pool, c.ID)
			waitFor(t, "every recipient was attempted", func() bool {
				var n int
				pool.QueryRow(ctx, `SELECT count(*) FROM deliveries WHERE state IN ('queued', 'sending')`).Scan(&n)
				return n == 0
			})
			r, err := pool.Query(ctx, `SELECT state, batch_no, extract(epoch FROM next_attempt_at - updated_at) FROM deliveries`)
			if err != nil {
				t.Fatal(err)
			}
			factors := map[int]float64{}
			for r.Next() {
				var state string
				var batch int
				var wait *float64
				if err := r.Scan(&state, &batch, &wait); err != nil {
					t.Fatal(err)
				}
				if state != tc.want {
					t.Fatalf("a recipient is %s, want %s", state, tc.want)
				}
				if tc.want != campaign.StateDeferred {
					continue
				}
				f := *wait / 3600
				if f < 1-campaign.RetryJitter-0.001 || f > 1+campaign.RetryJitter+0.001 {
					t.Errorf("retry in %.0f s, want 1 h ± %.0f%%", *wait, campaign.RetryJitter*100)
				}
				if g, ok := factors[batch]; ok && (f-g > 0.001 || g-f > 0.001) {
					t.Errorf("batch %d: recipients due %.4f and %.4f h apart: want one factor per run", batch, f, g)
				}
				factors[batch] = f
			}
			r.Close()
			if n := len(srv.Accepted()); n != 0 {
				t.Errorf("the server accepted %d recipients, want none (451 to each)", n)
			}
		})
	}
}

// TestConfigRescueAfterExceedsTimeout: a rescue time that a live run could
// reach is refused, naming both settings.
func TestConfigRescueAfterExceedsTimeout(t *testing.T) {
	pool := dbtest.Pool(t)
	_, err := worker.New(worker.Config{Pool: pool, Transport: relayTransport(t, "127.0.0.1:1"),
		JobTimeout: 10 * time.Second, RescueAfter: 10 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "RescueAfter (10s) must exceed JobTimeout (10s)") {
		t.Fatalf("err = %v, want RescueAfter refused", err)
	}
	if _, err := worker.New(worker.Config{Pool: pool, Transport: relayTransport(t, "127.0.0.1:1"),
		JobTimeout: 2 * time.Second, RescueAfter: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
}
