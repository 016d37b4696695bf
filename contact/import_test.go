package contact

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/csv"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/internal/dbtest"
)

// importString runs Import on a CSV text and returns the summary and the
// rejects, checking the row-accounting invariant.
func importString(t *testing.T, pool *pgxpool.Pool, text string, opts ImportOptions) (*Summary, []Reject, [][]string) {
	t.Helper()
	if opts.List == "" {
		opts.List = "news"
	}
	var rejects []Reject
	var buf bytes.Buffer
	opts.Rejects = &buf
	opts.OnReject = func(r Reject) { rejects = append(rejects, r) }
	sum, err := Import(context.Background(), pool, strings.NewReader(text), opts)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if got := sum.Inserted + sum.Updated + sum.Unchanged + sum.Rejected + sum.Duplicates; got != sum.Rows {
		t.Errorf("summary %+v: counts add up to %d, want Rows %d", sum, got, sum.Rows)
	}
	var recs [][]string
	if buf.Len() > 0 {
		recs, err = csv.NewReader(&buf).ReadAll()
		if err != nil {
			t.Fatalf("rejects output is not CSV: %v\n%s", err, buf.String())
		}
	}
	if len(rejects) > 0 && len(recs) != len(rejects)+1 {
		t.Errorf("rejects CSV has %d records, want a header and %d rows", len(recs), len(rejects))
	}
	return sum, rejects, recs
}

type contactRow struct {
	Email, Name, Attrs string
}

func contacts(t *testing.T, pool *pgxpool.Pool) []contactRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT email, name, attrs::text FROM contacts ORDER BY lower(email)")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []contactRow
	for rows.Next() {
		var c contactRow
		if err := rows.Scan(&c.Email, &c.Name, &c.Attrs); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func members(t *testing.T, pool *pgxpool.Pool, list string) int {
	t.Helper()
	var n int
	err := pool.QueryRow(context.Background(), `
		SELECT count(*) FROM list_members m JOIN lists l ON l.id = m.list_id WHERE l.name = $1`, list).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func wantRejects(t *testing.T, got []Reject, want map[int64]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d rejects %+v, want %d", len(got), got, len(want))
	}
	for _, r := range got {
		sub, ok := want[r.Line]
		if !ok {
			t.Errorf("unexpected reject at line %d: %s", r.Line, r.Reason)
			continue
		}
		if !strings.Contains(r.Reason, sub) {
			t.Errorf("line %d rejected for %q, want a reason containing %q", r.Line, r.Reason, sub)
		}
	}
}

func TestImportBadRows(t *testing.T) {
	pool := dbtest.Pool(t)
	text := "email,name,city\n" + // line 1
		"ann@example.com,Ann,Oslo\n" + // 2
		"not-an-address,Bob,Rome\n" + // 3
		"carl@Example.ORG,Carl,Lima\n" + // 4
		"dora@example.com,Dora\n" + // 5: short row
		"eve@localhost,Eve,Kyiv\n" + // 6
		"fay@example.net,\"Fay\nLine\",Bern\n" + // 7-8: newline in name
		"gus@example.net,G\"us,Riga\n" + // 9: bare quote
		"hal@example.net,Hal,\"Nice\"\n" // 10
	sum, rejects, recs := importString(t, pool, text, ImportOptions{})
	if sum.Rows != 8 || sum.Inserted != 3 || sum.Rejected != 5 {
		t.Errorf("summary %+v, want 8 rows, 3 inserted, 5 rejected", sum)
	}
	wantRejects(t, rejects, map[int64]string{
		3: "missing @",
		5: "has 2 fields, the header has 3",
		6: "no dot",
		7: "control character",
		9: "bare \"",
	})
	if recs[0][0] != "line" || recs[1][0] != "3" || recs[1][2] != "not-an-address,Bob,Rome" {
		t.Errorf("rejects CSV starts %q, want a header then line 3 with its raw row", recs[:2])
	}
	got := contacts(t, pool)
	want := []contactRow{
		{"ann@example.com", "Ann", `{"city": "Oslo"}`},
		{"carl@example.org", "Carl", `{"city": "Lima"}`},
		{"hal@example.net", "Hal", `{"city": "Nice"}`},
	}
	if len(got) != len(want) {
		t.Fatalf("contacts = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("contact %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if n := members(t, pool, "news"); n != 3 {
		t.Errorf("list has %d members, want 3", n)
	}
}

func TestImportBOMAndCRLF(t *testing.T) {
	pool := dbtest.Pool(t)
	text := "\xef\xbb\xbfEmail,Name\r\nann@example.com,Ann\r\nbad,Bob\r\ncarl@example.com,Carl\r\n"
	sum, rejects, _ := importString(t, pool, text, ImportOptions{})
	if sum.Inserted != 2 || sum.Rejected != 1 {
		t.Errorf("summary %+v, want 2 inserted, 1 rejected", sum)
	}
	wantRejects(t, rejects, map[int64]string{3: "missing @"})
	got := contacts(t, pool)
	if len(got) != 2 || got[0].Name != "Ann" || got[1].Name != "Carl" {
		t.Errorf("contacts = %+v: the BOM or CR leaked into a value", got)
	}
}

func TestImportQuotedNewlinesKeepFileLines(t *testing.T) {
	pool := dbtest.Pool(t)
	text := "email,name,address\n" + // 1
		"ann@example.com,Ann,\"1 Main St\nSpringfield\n\"\n" + // 2-4
		"\n" + // 5: blank, skipped
		"broken,Bob,x\n" + // 6
		"carl@example.com,Carl,\"a\r\nb\"\n" + // 7-8
		"also broken,Dee,y\n" // 9
	sum, rejects, _ := importString(t, pool, text, ImportOptions{})
	if sum.Inserted != 2 || sum.Rejected != 2 {
		t.Errorf("summary %+v, want 2 inserted, 2 rejected", sum)
	}
	wantRejects(t, rejects, map[int64]string{6: "missing @", 9: "missing @"})
	got := contacts(t, pool)
	if len(got) != 2 || got[0].Attrs != `{"address": "1 Main St\nSpringfield\n"}` {
		t.Errorf("contacts = %+v, want the multi-line address kept", got)
	}
}

func TestImportGzip(t *testing.T) {
	pool := dbtest.Pool(t)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte("email\nann@example.com\nbob@example.com\n"))
	zw.Close()
	sum, _, _ := importString(t, pool, buf.String(), ImportOptions{})
	if sum.Inserted != 2 || sum.Rejected != 0 {
		t.Errorf("summary %+v, want 2 inserted", sum)
	}
}

func TestImportDuplicatesInFile(t *testing.T) {
	pool := dbtest.Pool(t)
	text := "email,name\n" +
		"ann@example.com,First Ann\n" + // 2
		"bob@example.com,Bob\n" + // 3
		"ANN@example.com,Second Ann\n" + // 4
		"ann@EXAMPLE.com,Third Ann\n" // 5
	sum, rejects, _ := importString(t, pool, text, ImportOptions{})
	if sum.Inserted != 2 || sum.Duplicates != 2 || sum.Rejected != 0 || sum.Added != 2 {
		t.Errorf("summary %+v, want 2 inserted, 2 duplicates, 2 added", sum)
	}
	wantRejects(t, rejects, map[int64]string{4: "duplicate of line 2", 5: "duplicate of line 2"})
	got := contacts(t, pool)
	if len(got) != 2 || got[0].Name != "First Ann" || got[0].Email != "ann@example.com" {
		t.Errorf("contacts = %+v, want the first ann kept", got)
	}
	if n := members(t, pool, "news"); n != 2 {
		t.Errorf("list has %d members, want 2", n)
	}
}

func TestImportReimport(t *testing.T) {
	pool := dbtest.Pool(t)
	first := "email,name,plan\nann@example.com,Ann,free\nbob@example.com,Bob,free\ncarl@example.com,Carl,pro\n"
	sum, _, _ := importString(t, pool, first, ImportOptions{})
	if sum.Inserted != 3 || sum.Added != 3 {
		t.Fatalf("first import %+v, want 3 inserted", sum)
	}
	// Same file again: nothing changes, nobody joins twice.
	sum, _, _ = importString(t, pool, first, ImportOptions{})
	if sum.Inserted != 0 || sum.Updated != 0 || sum.Unchanged != 3 || sum.Added != 0 {
		t.Errorf("re-import %+v, want 3 unchanged", sum)
	}
	// A changed plan, a changed name, an empty name (keeps Carl), a new
	// contact, onto another list; case differs from the stored address.
	second := "email,name,plan,team\nANN@example.com,Ann,pro,a\nbob@example.com,Robert,free,\ncarl@example.com,,pro,\ndan@example.com,Dan,free,b\n"
	sum, _, _ = importString(t, pool, second, ImportOptions{List: "other"})
	if sum.Inserted != 1 || sum.Updated != 3 || sum.Unchanged != 0 || sum.Added != 4 {
		t.Errorf("changed import %+v, want 1 inserted, 3 updated, 4 added to the new list", sum)
	}
	got := contacts(t, pool)
	want := []contactRow{
		{"ann@example.com", "Ann", `{"plan": "pro", "team": "a"}`},
		{"bob@example.com", "Robert", `{"plan": "free", "team": ""}`},
		{"carl@example.com", "Carl", `{"plan": "pro", "team": ""}`},
		{"dan@example.com", "Dan", `{"plan": "free", "team": "b"}`},
	}
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			t.Errorf("contacts = %+v, want %+v", got, want)
			break
		}
	}
	// Without attribute columns and with the same names: unchanged.
	sum, _, _ = importString(t, pool, "email,name\nann@example.com,Ann\nbob@example.com,\n", ImportOptions{})
	if sum.Unchanged != 2 || sum.Updated != 0 {
		t.Errorf("name-only import %+v, want 2 unchanged", sum)
	}
}

func TestImportDryRunWritesNothing(t *testing.T) {
	pool := dbtest.Pool(t)
	sum, rejects, _ := importString(t, pool, "email\nann@example.com\nbad\nbob@example.com\n", ImportOptions{DryRun: true, List: "dry"})
	if sum.Inserted != 2 || sum.Rejected != 1 || len(rejects) != 1 {
		t.Errorf("dry run %+v, want the counts of a real import: 2 inserted, 1 rejected", sum)
	}
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT (SELECT count(*) FROM contacts) + (SELECT count(*) FROM lists) + (SELECT count(*) FROM list_members)").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("dry run wrote %d rows", n)
	}
}

func TestImportDelimiterDetection(t *testing.T) {
	for _, delim := range []string{",", ";", "\t", "|"} {
		t.Run(strings.ReplaceAll(delim, "\t", "tab"), func(t *testing.T) {
			pool := dbtest.Pool(t)
			text := strings.ReplaceAll("email,name,\"note, with comma\"\nann@example.com,Ann,\"x,y\"\n", ",", delim)
			if delim != "," { // the quoted comma stays a comma
				text = strings.ReplaceAll(text, "note"+delim+" with comma", "note, with comma")
				text = strings.ReplaceAll(text, "x"+delim+"y", "x,y")
			}
			sum, rejects, _ := importString(t, pool, text, ImportOptions{})
			if sum.Inserted != 1 || len(rejects) != 0 {
				t.Fatalf("summary %+v rejects %+v, want 1 inserted", sum, rejects)
			}
			got := contacts(t, pool)
			if got[0].Name != "Ann" || got[0].Attrs != `{"note, with comma": "x,y"}` {
				t.Errorf("contact = %+v, want fields split on %q", got[0], delim)
			}
		})
	}
}

func TestDetectDelimiter(t *testing.T) {
	tests := []struct {
		line string
		want rune
	}{
		{"email", ','},
		{"email,name", ','},
		{"email;name;city", ';'},
		{"email\tname", '\t'},
		{"email|name", '|'},
		{`"a;b;c",email`, ','},          // separators inside quotes do not count
		{"email;name,with,commas", ','}, // most frequent wins
		{"email,name;x", ','},           // ties go to the earlier
	}
	for _, tt := range tests {
		br, err := openCSV(strings.NewReader(tt.line + "\nann@example.com\n"))
		if err != nil {
			t.Fatal(err)
		}
		if got := detectDelimiter(br); got != tt.want {
			t.Errorf("detectDelimiter(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

func TestImportColumnMapping(t *testing.T) {
	pool := dbtest.Pool(t)
	text := "E-Mail;Full Name;Vorname\nann@example.com;Ann Lee;Ann\n"
	sum, _, _ := importString(t, pool, text, ImportOptions{Columns: map[string]string{"email": "e-mail", "name": "Full Name"}})
	if sum.Inserted != 1 {
		t.Fatalf("summary %+v, want 1 inserted", sum)
	}
	if got := contacts(t, pool); got[0] != (contactRow{"ann@example.com", "Ann Lee", `{"Vorname": "Ann"}`}) {
		t.Errorf("contact = %+v", got[0])
	}
}

func TestImportHeaderErrors(t *testing.T) {
	pool := dbtest.Pool(t)
	tests := []struct {
		text    string
		columns map[string]string
		want    string
	}{
		{"", nil, "empty input"},
		{"name,city\nAnn,Oslo\n", nil, `no "email" column`},
		{"email,name,email\n", nil, "both named"},
		{"email,,city\n", nil, "column 2 has no name"},
		{"email\n", map[string]string{"phone": "tel"}, "only email and name"},
		{"email\n", map[string]string{"name": "Full Name"}, `no "Full Name" column`},
	}
	for _, tt := range tests {
		_, err := Import(context.Background(), pool, strings.NewReader(tt.text), ImportOptions{List: "x", Source: "f.csv", Columns: tt.columns})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Import(%q) error %v, want one containing %q", tt.text, err, tt.want)
		}
	}
}

func TestImportRejectsBadEncoding(t *testing.T) {
	pool := dbtest.Pool(t)
	text := "email,name\nann@example.com,Ann\nbob@example.com,B\xe9b\ncarl@example.com,C\x00arl\n"
	sum, rejects, _ := importString(t, pool, text, ImportOptions{})
	if sum.Inserted != 1 {
		t.Errorf("summary %+v, want 1 inserted", sum)
	}
	wantRejects(t, rejects, map[int64]string{3: "not valid UTF-8", 4: "NUL"})
}

// TestImportConcurrent runs two imports of overlapping files at once: the
// second merge waits for the first (the contacts lock) and then sees its
// contacts, so both succeed, every address is inserted exactly once and
// both lists get all their members.
func TestImportConcurrent(t *testing.T) {
	pool := dbtest.Pool(t)
	file := func(from, to int) string {
		var b strings.Builder
		b.WriteString("email\n")
		for i := from; i < to; i++ {
			fmt.Fprintf(&b, "u%d@example.test\n", i)
		}
		return b.String()
	}
	type result struct {
		sum *Summary
		err error
	}
	results := make(chan result, 2)
	for i, text := range []string{file(0, 3000), file(1000, 4000)} {
		go func() {
			sum, err := Import(context.Background(), pool, strings.NewReader(text), ImportOptions{List: fmt.Sprintf("l%d", i)})
			results <- result{sum, err}
		}()
	}
	var inserted, existing int64
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatalf("concurrent import: %v", r.err)
		}
		if r.sum.Added != 3000 {
			t.Errorf("summary %+v: %d joined the list, want 3000", r.sum, r.sum.Added)
		}
		inserted += r.sum.Inserted
		existing += r.sum.Unchanged + r.sum.Updated
	}
	if inserted != 4000 || existing != 2000 {
		t.Errorf("inserted %d and found %d existing, want 4000 and the 2000 shared addresses", inserted, existing)
	}
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM contacts").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 4000 {
		t.Errorf("%d contacts, want 4000", n)
	}
}
