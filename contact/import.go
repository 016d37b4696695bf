package contact

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ImportOptions configures Import.
type ImportOptions struct {
	// List is the name of the list the contacts join; it is created if
	// missing. Required.
	List string

	// Source names the input in messages ("contacts.csv", "stdin").
	// Default "input".
	Source string

	// Delimiter is the field separator. 0 (the default) detects it from the
	// header line among , ; TAB and |.
	Delimiter rune

	// Columns maps blaster's fields to header names when the file's differ:
	// {"email": "E-Mail", "name": "Full Name"}. Keys are "email" and "name";
	// header names match case-insensitively. nil (the default) looks for
	// columns named email and name.
	Columns map[string]string

	// DryRun runs the whole import, counts included, in a transaction that
	// is rolled back: nothing is written (identity sequences may advance).
	DryRun bool

	// Rejects, when not nil, receives every row left out, as CSV with the
	// header line,reason,raw: rejected rows in file order, then rows whose
	// address appeared earlier in the file. Nothing is written when no row
	// was left out.
	Rejects io.Writer

	// OnReject, when not nil, is called for every row left out, as it is
	// written to Rejects.
	OnReject func(Reject)

	// Progress, when not nil, is called with the number of rows read so far,
	// every ProgressEvery rows and once when reading ends.
	Progress func(rows int64)
}

// ProgressEvery is how many rows pass between ImportOptions.Progress calls.
const ProgressEvery = 10_000

// Summary counts what an import did. Every data row is counted exactly once:
// Rows = Inserted + Updated + Unchanged + Rejected + Duplicates.
type Summary struct {
	ListID     int64 // the list the contacts joined
	Rows       int64 // data rows read (the header excluded)
	Inserted   int64 // new contacts
	Updated    int64 // existing contacts whose name or attributes changed
	Unchanged  int64 // existing contacts the file had nothing new for
	Rejected   int64 // rows left out for a reason (bad address, malformed row)
	Duplicates int64 // rows whose address appeared earlier in the file
	Added      int64 // contacts that joined the list (the others were members already)
}

// Imported is the number of contacts the file holds: inserted, updated and
// unchanged.
func (s *Summary) Imported() int64 { return s.Inserted + s.Updated + s.Unchanged }

// Import streams a CSV of contacts into the database and onto opts.List, in
// one transaction: all of the file's good rows or, on error, nothing.
//
// The first row is the header: a column named email (or opts.Columns'
// "email") is required, name is optional, and every other column becomes a
// string attribute of the contact (attrs, jsonb) under its header name.
// Input may be UTF-8 with or without a byte order mark, CRLF or LF, RFC 4180
// quoted fields with embedded line breaks, and gzip-compressed.
//
// Rows are validated as they are read (field count, UTF-8, ParseAddress on
// the email, no control characters in the name) and COPYed into a temporary
// staging table; one INSERT ... ON CONFLICT statement then merges the
// staging table into contacts and one more adds the list membership. A bad
// row never stops the import: it is counted and reported through
// opts.Rejects and opts.OnReject with its file line.
//
// Merge rules: an address that occurs more than once in the file (compared
// case-insensitively, like the contacts index) is taken from its FIRST
// occurrence, the later ones are counted as Duplicates and reported. An
// existing contact keeps its stored address spelling; its name is replaced
// when the file gives a non-empty one; its attributes are merged with the
// file's (the file's win on a shared key, other keys stay).
func Import(ctx context.Context, pool *pgxpool.Pool, r io.Reader, opts ImportOptions) (*Summary, error) {
	if opts.Source == "" {
		opts.Source = "input"
	}
	list := strings.TrimSpace(opts.List)
	if list == "" || !utf8.ValidString(list) {
		return nil, errors.New("importing: a list name is required")
	}
	br, err := openCSV(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", opts.Source, err)
	}
	cr, err := newCSVReader(br, opts.Delimiter)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", opts.Source, err)
	}
	header, err := readHeader(cr, opts.Source)
	if err != nil {
		return nil, err
	}
	cols, err := mapColumns(header, opts.Columns, opts.Source)
	if err != nil {
		return nil, err
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("importing %s: beginning transaction: %w", opts.Source, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	sum := &Summary{}
	if sum.ListID, err = ensureList(ctx, tx, list); err != nil {
		return nil, err
	}
	// The merge sorts the whole staging table for DISTINCT ON: let it do so
	// in memory for files of a few million rows instead of spilling to disk.
	if _, err := tx.Exec(ctx, "SET LOCAL work_mem = '256MB'"); err != nil {
		return nil, fmt.Errorf("importing %s: %w", opts.Source, err)
	}
	stage := "CREATE TEMP TABLE import_stage (line bigint NOT NULL, email text NOT NULL, name text NOT NULL"
	if len(cols.attrs) > 0 {
		stage += ", attrs text[] NOT NULL"
	}
	if _, err := tx.Exec(ctx, stage+") ON COMMIT DROP"); err != nil {
		return nil, fmt.Errorf("importing %s: creating staging table: %w", opts.Source, err)
	}

	rw := newRejectWriter(opts.Rejects, cr.Comma, opts.OnReject)
	src := &contactRows{cr: cr, header: header, cols: cols, sum: sum, opts: &opts, rw: rw}
	src.vals = make([]any, 3, 4)
	if len(cols.attrs) > 0 {
		src.attrs = make([]string, len(cols.attrs))
		src.vals = append(src.vals, src.attrs)
	}
	names := []string{"line", "email", "name", "attrs"}[:len(src.vals)]
	staged, err := tx.CopyFrom(ctx, pgx.Identifier{"import_stage"}, names, src)
	if src.err != nil {
		return nil, fmt.Errorf("reading %s: %w", opts.Source, src.err)
	}
	if err != nil {
		return nil, fmt.Errorf("importing %s: copying into staging table: %w", opts.Source, err)
	}
	if opts.Progress != nil {
		opts.Progress(sum.Rows)
	}
	if _, err := tx.Exec(ctx, "ANALYZE import_stage"); err != nil {
		return nil, fmt.Errorf("importing %s: analyzing staging table: %w", opts.Source, err)
	}

	var distinct int64
	var args []any
	if len(cols.attrs) > 0 {
		args = append(args, attrKeys(header, cols))
	}
	if err := tx.QueryRow(ctx, mergeContactsSQL(cols), args...).Scan(&distinct, &sum.Inserted, &sum.Updated); err != nil {
		return nil, fmt.Errorf("importing %s: merging contacts: %w", opts.Source, err)
	}
	sum.Unchanged = distinct - sum.Inserted - sum.Updated
	sum.Duplicates = staged - distinct

	tag, err := tx.Exec(ctx, `
		INSERT INTO list_members (list_id, contact_id)
		SELECT $1, c.id FROM import_stage s JOIN contacts c ON lower(c.email) = lower(s.email)
		ON CONFLICT DO NOTHING`, sum.ListID)
	if err != nil {
		return nil, fmt.Errorf("importing %s: adding list members: %w", opts.Source, err)
	}
	sum.Added = tag.RowsAffected()

	if sum.Duplicates > 0 {
		if err := reportDuplicates(ctx, tx, rw); err != nil {
			return nil, fmt.Errorf("importing %s: %w", opts.Source, err)
		}
	}
	if err := rw.flush(); err != nil {
		return nil, err
	}
	if opts.DryRun {
		return sum, nil // the deferred Rollback undoes everything
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("importing %s: committing: %w", opts.Source, err)
	}
	return sum, nil
}

// columns says where Import finds each field in a row.
type columns struct {
	email int
	name  int   // -1 when there is no name column
	attrs []int // every other column
}

func mapColumns(header []string, mapping map[string]string, source string) (columns, error) {
	want := map[string]string{"email": "email", "name": "name"}
	for k, v := range mapping {
		k = strings.ToLower(strings.TrimSpace(k))
		if _, ok := want[k]; !ok {
			return columns{}, fmt.Errorf("column mapping %s=%s: only email and name can be mapped", k, v)
		}
		want[k] = v
	}
	c := columns{email: columnIndex(header, want["email"]), name: columnIndex(header, want["name"])}
	if c.email < 0 {
		return columns{}, fmt.Errorf("%s:1: no %q column in the header (%s); map one with email=COLUMN",
			source, want["email"], strings.Join(header, ", "))
	}
	if _, mapped := mapping["name"]; mapped && c.name < 0 {
		return columns{}, fmt.Errorf("%s:1: no %q column in the header (%s)", source, want["name"], strings.Join(header, ", "))
	}
	for i := range header {
		if i != c.email && i != c.name {
			c.attrs = append(c.attrs, i)
		}
	}
	return c, nil
}

// attrKeys returns the attribute names, in staging-array order.
func attrKeys(header []string, c columns) []string {
	keys := make([]string, len(c.attrs))
	for i, col := range c.attrs {
		keys[i] = header[col]
	}
	return keys
}

// mergeContactsSQL is the one statement that merges the staging table into
// contacts. It returns the number of distinct addresses staged, and how many
// were inserted and updated; the rest were unchanged (the WHERE of DO UPDATE
// leaves them alone, so they are neither rewritten nor returned). xmax = 0
// tells a fresh insert from an update (the updated row version carries the
// updating transaction's id in xmax).
func mergeContactsSQL(c columns) string {
	attrs := "'{}'::jsonb"
	if len(c.attrs) > 0 {
		attrs = "jsonb_object($1::text[], attrs)"
	}
	return `
	WITH src AS (
		SELECT DISTINCT ON (lower(email)) email, name, ` + attrs + ` AS attrs
		FROM import_stage
		ORDER BY lower(email), line
	), up AS (
		INSERT INTO contacts AS c (email, name, attrs)
		SELECT email, name, attrs FROM src
		ON CONFLICT (lower(email)) DO UPDATE
		SET name = CASE WHEN excluded.name = '' THEN c.name ELSE excluded.name END,
		    attrs = c.attrs || excluded.attrs,
		    updated_at = now()
		WHERE (excluded.name <> '' AND excluded.name <> c.name)
		   OR c.attrs || excluded.attrs <> c.attrs
		RETURNING xmax = 0 AS inserted
	)
	SELECT (SELECT count(*) FROM src),
	       count(*) FILTER (WHERE inserted),
	       count(*) FILTER (WHERE NOT inserted)
	FROM up`
}

// reportDuplicates reports every staged row whose address occurred on an
// earlier line, in line order.
func reportDuplicates(ctx context.Context, tx pgx.Tx, rw *rejectWriter) error {
	rows, err := tx.Query(ctx, `
		SELECT line, email, first FROM (
			SELECT line, email, min(line) OVER (PARTITION BY lower(email)) AS first
			FROM import_stage
		) d WHERE line <> first ORDER BY line`)
	if err != nil {
		return fmt.Errorf("listing duplicates: %w", err)
	}
	defer rows.Close()
	var line, first int64
	var email string
	for rows.Next() {
		if err := rows.Scan(&line, &email, &first); err != nil {
			return fmt.Errorf("listing duplicates: %w", err)
		}
		rw.write(Reject{Line: line, Reason: fmt.Sprintf("duplicate of line %d (the first is kept)", first), Raw: email, Duplicate: true})
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("listing duplicates: %w", err)
	}
	return nil
}

// ensureList returns the id of the list named name, creating it if missing.
func ensureList(ctx context.Context, tx pgx.Tx, name string) (int64, error) {
	var id int64
	err := tx.QueryRow(ctx, `
		WITH ins AS (INSERT INTO lists (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id)
		SELECT id FROM ins UNION ALL SELECT id FROM lists WHERE name = $1 LIMIT 1`, name).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("creating list %q: %w", name, err)
	}
	return id, nil
}

// contactRows is the pgx.CopyFromSource that reads, validates and stages the
// CSV's rows one at a time; rejected rows are reported and skipped.
type contactRows struct {
	cr     *csv.Reader
	header []string
	cols   columns
	sum    *Summary
	opts   *ImportOptions
	rw     *rejectWriter

	vals  []any    // line, email, name[, attrs]
	attrs []string // the attrs value, reused
	err   error    // a read error that ends the import
}

func (s *contactRows) Next() bool {
	for {
		rec, err := s.cr.Read()
		if err == io.EOF {
			return false
		}
		if err != nil {
			pe, ok := isParseError(err)
			if !ok {
				s.err = err
				return false
			}
			s.count()
			s.reject(int64(pe.StartLine), parseErrorReason(pe), "")
			continue
		}
		line, _ := s.cr.FieldPos(0)
		s.count()
		if reason := s.check(rec); reason != "" {
			s.reject(int64(line), reason, s.rw.encode(rec))
			continue
		}
		s.vals[0] = int64(line)
		return true
	}
}

func (s *contactRows) count() {
	s.sum.Rows++
	if s.opts.Progress != nil && s.sum.Rows%ProgressEvery == 0 {
		s.opts.Progress(s.sum.Rows)
	}
}

// check validates rec and, when it is good, fills s.vals[1:] from it.
func (s *contactRows) check(rec []string) string {
	if reason := rowReason(s.header, rec); reason != "" {
		return reason
	}
	email, err := ParseAddress(rec[s.cols.email])
	if err != nil {
		var ae *AddressError
		if errors.As(err, &ae) {
			return "email: " + ae.Reason
		}
		return err.Error()
	}
	name := ""
	if s.cols.name >= 0 {
		name = strings.TrimSpace(rec[s.cols.name])
		if i := strings.IndexFunc(name, isControl); i >= 0 {
			r, _ := utf8.DecodeRuneInString(name[i:])
			return fmt.Sprintf("name contains control character %U", r)
		}
	}
	s.vals[1], s.vals[2] = email, name
	for i, col := range s.cols.attrs {
		s.attrs[i] = rec[col]
	}
	return ""
}

func (s *contactRows) reject(line int64, reason, raw string) {
	s.sum.Rejected++
	s.rw.write(Reject{Line: line, Reason: reason, Raw: raw})
}

func (s *contactRows) Values() ([]any, error) { return s.vals, nil }
func (s *contactRows) Err() error             { return s.err }

// isControl reports C0 and C1 control characters and DEL: never wanted in a
// name, which ends up in a From/To header.
func isControl(r rune) bool {
	return r < 0x20 || (r >= 0x7f && r < 0xa0)
}
