package campaign_test

import (
	"context"
	"testing"

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
