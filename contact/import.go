package contact

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
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

	// Merging, when not nil, is called once reading has ended and the merge
	// into contacts starts (for a progress display: the merge of a large
	// file takes a while and reports nothing until it is done).
	Merging func()

	// Logger, when not nil, receives the time each phase took (read and
	// COPY, lock, merge, duplicates, commit) at debug level.
	Logger *slog.Logger

	// Explain, when not nil, receives the plan of the merge statement as
	// EXPLAIN (ANALYZE, BUFFERS, WAL) reports it: the merge runs once under
	// EXPLAIN in a savepoint that is rolled back, then for real. A
	// diagnostic: the real merge then runs on tables holding the explained
	// run's dead rows, so its time is not representative.
	Explain io.Writer
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
// staging table; then, with contacts locked against other writers (readers
// go on), one statement merges the staging table into contacts and the
// list's membership (mergeSQL). A bad row never stops the import: it is
// counted and reported through opts.Rejects and opts.OnReject with its file
// line.
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

	// A connection of its own, not one from the pool: the session settings
	// below (temp_buffers can only be set before a session first touches a
	// temporary table) must not leak into the pool's connections.
	ph := newPhases(opts.Logger, opts.Source)
	conn, err := connectForImport(ctx, pool)
	if err != nil {
		return nil, fmt.Errorf("importing %s: %w", opts.Source, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("importing %s: beginning transaction: %w", opts.Source, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	sum := &Summary{}
	if sum.ListID, err = ensureList(ctx, tx, list); err != nil {
		return nil, err
	}
	for _, set := range importSettings {
		if _, err := tx.Exec(ctx, set); err != nil {
			return nil, fmt.Errorf("importing %s: %s: %w", opts.Source, set, err)
		}
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
	ph.done("read and COPY into staging", "rows", sum.Rows, "staged", staged)
	if opts.Merging != nil {
		opts.Merging()
	}

	// No other transaction may add contacts between the merge's look-up of
	// existing addresses and its commit, so that new addresses go in with a
	// plain INSERT (ON CONFLICT's speculative insertion costs a third more
	// per row). SHARE ROW EXCLUSIVE lets readers (campaign start, the send
	// workers, the unsubscribe handler) go on and makes other writers of
	// contacts (imports, `blaster send`) wait for this commit. It is taken
	// after the COPY, so it is held only for the merge.
	if _, err := tx.Exec(ctx, "LOCK TABLE contacts IN SHARE ROW EXCLUSIVE MODE"); err != nil {
		return nil, fmt.Errorf("importing %s: locking contacts: %w", opts.Source, err)
	}
	ph.done("lock contacts")
	args := []any{sum.ListID}
	if len(cols.attrs) > 0 {
		args = append(args, attrKeys(header, cols))
	}
	if opts.Explain != nil {
		if err := explain(ctx, tx, opts.Explain, mergeSQL(cols), args); err != nil {
			return nil, fmt.Errorf("importing %s: explaining the merge: %w", opts.Source, err)
		}
		ph.done("explain merge")
	}
	var distinct, updated int64
	if err := tx.QueryRow(ctx, mergeSQL(cols), args...).Scan(&distinct, &sum.Inserted, &updated, &sum.Added); err != nil {
		return nil, fmt.Errorf("importing %s: merging contacts: %w", opts.Source, err)
	}
	sum.Updated = updated
	sum.Unchanged = distinct - sum.Inserted - sum.Updated
	sum.Duplicates = staged - distinct
	ph.done("merge", "inserted", sum.Inserted, "updated", sum.Updated, "joined", sum.Added)

	if sum.Duplicates > 0 {
		if err := reportDuplicates(ctx, tx, rw); err != nil {
			return nil, fmt.Errorf("importing %s: %w", opts.Source, err)
		}
	}
	if err := rw.flush(); err != nil {
		return nil, err
	}
	ph.done("report duplicates", "duplicates", sum.Duplicates)
	if opts.DryRun {
		return sum, nil // the deferred Rollback undoes everything
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("importing %s: committing: %w", opts.Source, err)
	}
	ph.done("commit")
	return sum, nil
}

// phases logs how long each phase of an import took.
type phases struct {
	logger *slog.Logger
	source string
	last   time.Time
}

func newPhases(logger *slog.Logger, source string) *phases {
	return &phases{logger: logger, source: source, last: time.Now()}
}

func (p *phases) done(phase string, attrs ...any) {
	if p.logger == nil {
		return
	}
	now := time.Now()
	p.logger.Debug("import phase", append([]any{"source", p.source, "phase", phase, "took", now.Sub(p.last).Round(time.Millisecond).String()}, attrs...)...)
	p.last = now
}

// explain writes the plan of EXPLAIN (ANALYZE, BUFFERS, WAL) of query to w,
// inside a savepoint that is rolled back.
func explain(ctx context.Context, tx pgx.Tx, w io.Writer, query string, args []any) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	defer sp.Rollback(context.WithoutCancel(ctx))
	rows, err := sp.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, WAL) "+query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return err
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return sp.Rollback(ctx)
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

// importSettings are SET LOCAL commands for the import's transaction.
var importSettings = []string{
	// The merge sorts the whole staging table to de-duplicate it: in memory
	// for files of a few million rows instead of spilling to disk.
	"SET LOCAL work_mem = '256MB'",
	// JIT compiling the merge costs more than it saves on these simple
	// per-row expressions.
	"SET LOCAL jit = off",
	// The import is all or nothing and is run again after a crash; waiting
	// for the WAL flush of its one commit buys nothing (the commit is
	// still atomic, only its durability is delayed by up to
	// wal_writer_delay).
	"SET LOCAL synchronous_commit = off",
}

// connectForImport opens a connection with the pool's configuration and
// temp_buffers large enough to keep the staging table of a few million rows
// in memory (the default 8MB writes it out to disk and reads it back).
func connectForImport(ctx context.Context, pool *pgxpool.Pool) (*pgx.Conn, error) {
	cfg := pool.Config().ConnConfig.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["temp_buffers"] = "256MB"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	return conn, nil
}

// mergeSQL is the one statement that merges the staging table into contacts
// and the list ($1). It returns the number of distinct addresses staged, how
// many contacts were inserted and updated (the rest were unchanged), and how
// many joined the list.
//
// The file's first occurrence of each address (lower(email) COLLATE "C", the
// contacts key) is kept. The staged rows come out of that sort in key order
// and are inserted in it, so the key index is written in order (each leaf
// page filled once) and the new ids ascend with the keys, which appends
// their list_members to the end of its primary key. An address already in
// contacts (found by the join; the LOCK taken before guarantees no other
// transaction adds one meanwhile) is updated only when the file brings a
// new name or attribute: unchanged contacts are neither rewritten nor
// counted as updated. Existing contacts already on the list are left out
// by an anti-join before the insert (a speculative insertion that finds a
// conflict costs several times an index probe); ON CONFLICT DO NOTHING only
// covers a member added concurrently by someone not adding contacts.
func mergeSQL(c columns) string {
	attrs := "'{}'::jsonb"
	if len(c.attrs) > 0 {
		attrs = "jsonb_object($2::text[], attrs)"
	}
	return `
	WITH src AS MATERIALIZED (
		SELECT DISTINCT ON (lower(email) COLLATE "C") email, name, ` + attrs + ` AS attrs
		FROM import_stage
		ORDER BY lower(email) COLLATE "C", line
	), cls AS MATERIALIZED (
		SELECT s.email, s.name, s.attrs, c.id, c.name AS old_name, c.attrs AS old_attrs
		FROM src s LEFT JOIN contacts c ON lower(c.email) COLLATE "C" = lower(s.email) COLLATE "C"
	), ins AS (
		INSERT INTO contacts (email, name, attrs)
		SELECT email, name, attrs FROM cls WHERE id IS NULL
		RETURNING id
	), upd AS (
		UPDATE contacts c
		SET name = CASE WHEN u.name = '' THEN c.name ELSE u.name END,
		    attrs = c.attrs || u.attrs,
		    updated_at = now()
		FROM cls u
		WHERE c.id = u.id
		  AND ((u.name <> '' AND u.name <> u.old_name) OR u.old_attrs || u.attrs <> u.old_attrs)
		RETURNING 1
	), joined_new AS (
		INSERT INTO list_members (list_id, contact_id)
		SELECT $1, id FROM ins
		RETURNING 1
	), joined_old AS (
		INSERT INTO list_members (list_id, contact_id)
		SELECT $1, id FROM cls u
		WHERE id IS NOT NULL
		  AND NOT EXISTS (SELECT 1 FROM list_members m WHERE m.list_id = $1 AND m.contact_id = u.id)
		ON CONFLICT DO NOTHING
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM cls), (SELECT count(*) FROM ins), (SELECT count(*) FROM upd),
	       (SELECT count(*) FROM joined_new) + (SELECT count(*) FROM joined_old)`
}

// reportDuplicates reports every staged row whose address occurred on an
// earlier line, in line order.
func reportDuplicates(ctx context.Context, tx pgx.Tx, rw *rejectWriter) error {
	rows, err := tx.Query(ctx, `
		SELECT line, email, first FROM (
			SELECT line, email, min(line) OVER (PARTITION BY lower(email) COLLATE "C") AS first
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
