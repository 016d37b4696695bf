package contact

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/internal/dbtest"
)

func listAll(t *testing.T, pool *pgxpool.Pool, f ListFilter) []Suppression {
	t.Helper()
	var out []Suppression
	if err := ListSuppressions(context.Background(), pool, f, func(s Suppression) error {
		out = append(out, s)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSuppressionCRUD(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()

	if err := Suppress(ctx, pool, "", "Ann@Example.com", ReasonBounced, "550 5.1.1 no such user", 0); err != nil {
		t.Fatal(err)
	}
	// In a transaction, for one sender, with a campaign.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := Suppress(ctx, tx, "News@Example.org", "bob@example.com", ReasonUnsubscribed, "one-click", 0); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Again for ann with another reason: the first entry stays.
	if err := Suppress(ctx, pool, "", "ann@example.com", ReasonManual, "", 0); err != nil {
		t.Fatal(err)
	}

	all := listAll(t, pool, ListFilter{})
	if len(all) != 2 {
		t.Fatalf("listed %+v, want 2", all)
	}
	if all[0].Email != "ann@example.com" || all[0].Sender != "" || all[0].Reason != ReasonBounced || all[0].Detail != "550 5.1.1 no such user" {
		t.Errorf("first = %+v, want ann bounced for every sender, lower-cased", all[0])
	}
	if all[1].Email != "bob@example.com" || all[1].Sender != "news@example.org" || all[1].CreatedAt.IsZero() {
		t.Errorf("second = %+v, want bob for news@example.org", all[1])
	}
	if got := listAll(t, pool, ListFilter{BySender: true, Sender: "NEWS@example.org"}); len(got) != 1 || got[0].Email != "bob@example.com" {
		t.Errorf("by sender: %+v", got)
	}
	if got := listAll(t, pool, ListFilter{BySender: true}); len(got) != 1 || got[0].Email != "ann@example.com" {
		t.Errorf("global list: %+v", got)
	}
	if got := listAll(t, pool, ListFilter{Reason: ReasonUnsubscribed}); len(got) != 1 {
		t.Errorf("by reason: %+v", got)
	}
	if got := listAll(t, pool, ListFilter{Email: "ANN@example.com"}); len(got) != 1 {
		t.Errorf("by email: %+v", got)
	}

	// Removing from the global list does not touch a sender's list.
	if removed, err := Unsuppress(ctx, pool, "", "bob@example.com"); err != nil || removed {
		t.Errorf("Unsuppress(global, bob) = %v, %v; want false", removed, err)
	}
	if removed, err := Unsuppress(ctx, pool, "news@example.org", "BOB@example.com"); err != nil || !removed {
		t.Errorf("Unsuppress(news, bob) = %v, %v; want true", removed, err)
	}
	if got := listAll(t, pool, ListFilter{}); len(got) != 1 {
		t.Errorf("after remove: %+v", got)
	}

	for _, tt := range []struct{ sender, email, reason, want string }{
		{"", "not-an-address", ReasonManual, "missing @"},
		{"bad sender", "ann@example.com", ReasonManual, "sender"},
		{"", "ann@example.com", "spam", "reason"},
	} {
		if err := Suppress(ctx, pool, tt.sender, tt.email, tt.reason, "", 0); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Suppress(%q, %q, %q) = %v, want an error about %s", tt.sender, tt.email, tt.reason, err, tt.want)
		}
	}
}

func TestImportSuppressions(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	if err := Suppress(ctx, pool, "", "old@example.com", ReasonBounced, "", 0); err != nil {
		t.Fatal(err)
	}

	// One address per line, no header.
	var rejects []Reject
	sum, err := ImportSuppressions(ctx, pool, strings.NewReader("ann@example.com\nbad\nOLD@example.com\nann@EXAMPLE.com\nbob@example.com\n"),
		SuppressImportOptions{Reason: ReasonComplained, OnReject: func(r Reject) { rejects = append(rejects, r) }})
	if err != nil {
		t.Fatal(err)
	}
	if *sum != (SuppressSummary{Rows: 5, Added: 2, Existing: 1, Rejected: 1, Duplicates: 1}) {
		t.Errorf("summary %+v", sum)
	}
	if len(rejects) != 1 || rejects[0].Line != 2 {
		t.Errorf("rejects %+v, want line 2", rejects)
	}

	// The CSV that `suppress list` prints, with per-row sender and reason.
	text := "email;sender;reason;detail\n" +
		"carl@example.com;news@example.org;unsubscribed;link\n" +
		"dora@example.com;;;\n" +
		"eve@example.com;;spam;\n"
	rejects = nil
	sum, err = ImportSuppressions(ctx, pool, strings.NewReader(text), SuppressImportOptions{OnReject: func(r Reject) { rejects = append(rejects, r) }})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Added != 2 || sum.Rejected != 1 || len(rejects) != 1 || rejects[0].Line != 4 {
		t.Errorf("summary %+v rejects %+v, want 2 added and line 4 rejected", sum, rejects)
	}
	got := listAll(t, pool, ListFilter{Email: "carl@example.com"})
	if len(got) != 1 || got[0].Sender != "news@example.org" || got[0].Reason != ReasonUnsubscribed || got[0].Detail != "link" {
		t.Errorf("carl = %+v", got)
	}
	got = listAll(t, pool, ListFilter{Email: "dora@example.com"})
	if len(got) != 1 || got[0].Sender != "" || got[0].Reason != ReasonManual {
		t.Errorf("dora = %+v, want the defaults", got)
	}
	got = listAll(t, pool, ListFilter{Email: "ann@example.com"})
	if len(got) != 1 || got[0].Reason != ReasonComplained {
		t.Errorf("ann = %+v", got)
	}
}
