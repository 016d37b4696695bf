package campaign_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/blaster-mail/blaster/internal/dbtest"
)

// TestStartInterleavesDomains checks the job order: workers take jobs in
// order, so consecutive batches go to different destinations, and each
// batch holds one domain's recipients, at most max_rcpt of them.
func TestStartInterleavesDomains(t *testing.T) {
	pool := dbtest.Pool(t)
	seedList(t, pool, "news", 900) // 300 per domain: 3 buckets of 100 each
	id := startCampaign(t, pool, "news", 100)

	rows, err := pool.Query(context.Background(), `
		SELECT b.batch_no, b.domain, b.size, count(d.*)
		FROM batches b JOIN deliveries d USING (campaign_id, batch_no)
		WHERE b.campaign_id = $1 AND d.email LIKE '%@' || b.domain
		GROUP BY b.batch_no, b.domain, b.size ORDER BY b.batch_no`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var domains []string
	for rows.Next() {
		var no, size, members int
		var domain string
		if err := rows.Scan(&no, &domain, &size, &members); err != nil {
			t.Fatal(err)
		}
		if size != 100 || members != 100 {
			t.Errorf("batch %d (%s): size %d, %d recipients of its domain; want 100", no, domain, size, members)
		}
		domains = append(domains, domain)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(domains) != 9 {
		t.Fatalf("%d batches, want 9", len(domains))
	}
	for i := 1; i < len(domains); i++ {
		if domains[i] == domains[i-1] {
			t.Errorf("batches %d and %d both go to %s: %v", i, i+1, domains[i], domains)
		}
	}
}

// TestStartDomainAfterLastAt checks that a batch's domain is what follows
// the address's last "@", lower-cased: a quoted local part may hold an "@"
// of its own (RFC 5321 §4.1.2).
func TestStartDomainAfterLastAt(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
		WITH l AS (INSERT INTO lists (name) VALUES ('quoted') RETURNING id),
		     c AS (INSERT INTO contacts (email) VALUES ('"a@b"@quoted.example.test'), ('plain@Quoted.Example.TEST') RETURNING id)
		INSERT INTO list_members (list_id, contact_id) SELECT l.id, c.id FROM l, c`); err != nil {
		t.Fatal(err)
	}
	id := startCampaign(t, pool, "quoted", 100)
	var domains []string
	if err := pool.QueryRow(ctx, `SELECT array_agg(domain ORDER BY batch_no) FROM batches WHERE campaign_id = $1`, id).
		Scan(&domains); err != nil {
		t.Fatal(err)
	}
	if len(domains) != 1 || domains[0] != "quoted.example.test" {
		t.Errorf("batch domains %q, want one batch for quoted.example.test", domains)
	}
}

// TestStartAnalyzesDeliveries: the start refreshes the planner's statistics
// of deliveries, so that the workers' per-batch statements read the batch's
// rows through deliveries_batch. With the statistics of an empty table (a
// new installation, or the benchmark's TRUNCATE and ANALYZE) the planner
// took the new campaign for one row and walked its whole primary-key range
// for every batch claimed.
func TestStartAnalyzesDeliveries(t *testing.T) {
	ctx := context.Background()
	pool := dbtest.Pool(t)
	if _, err := pool.Exec(ctx, `ANALYZE deliveries`); err != nil { // empty: reltuples 0
		t.Fatal(err)
	}
	seedList(t, pool, "news", 3000)
	id := startCampaign(t, pool, "news", 100)

	var tuples float64
	if err := pool.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE relname = 'deliveries'`).Scan(&tuples); err != nil {
		t.Fatal(err)
	}
	if tuples < 3000 {
		t.Errorf("deliveries reltuples = %v after the start, want its 3000 rows counted", tuples)
	}
	rows, err := pool.Query(ctx, `EXPLAIN (COSTS OFF) SELECT d.contact_id, d.email, d.attempts FROM deliveries d
		WHERE d.campaign_id = $1 AND d.batch_no = 7 AND d.state = 'queued'`, id)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if plan := strings.Join(lines, "\n"); !strings.Contains(plan, "deliveries_batch") {
		t.Errorf("a batch's recipients are read by %q, want the deliveries_batch index", plan)
	}
}
