package contact

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Suppression reasons, the values the suppressions table accepts.
const (
	ReasonUnsubscribed = "unsubscribed" // the recipient asked to stop (List-Unsubscribe, RFC 8058)
	ReasonBounced      = "bounced"      // a hard bounce: 5xx for this address
	ReasonComplained   = "complained"   // a spam complaint (feedback loop)
	ReasonManual       = "manual"       // an operator's decision
)

// Reasons lists the valid suppression reasons.
var Reasons = []string{ReasonUnsubscribed, ReasonBounced, ReasonComplained, ReasonManual}

// Execer is what Suppress and Unsuppress write through: a *pgxpool.Pool, a
// *pgx.Conn or a pgx.Tx, so that bounce handling can suppress inside the
// transaction that records the bounce.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Querier is what ListSuppressions reads through (a pool, conn or tx).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Suppression is one entry of a suppression list.
type Suppression struct {
	Sender     string // lower-cased From address; "" = every sender
	Email      string // lower-cased
	Reason     string // one of Reasons
	Detail     string // free text: the bounce reply, the unsubscribe source, a note
	CampaignID int64  // the campaign that caused it; 0 = none
	CreatedAt  time.Time
}

// normalizeSuppression checks and lower-cases a sender (may be empty) and an
// address, the form the suppressions table keys on.
func normalizeSuppression(sender, email string) (string, string, error) {
	addr, err := ParseAddress(email)
	if err != nil {
		return "", "", err
	}
	if sender = strings.TrimSpace(sender); sender != "" {
		if sender, err = ParseAddress(sender); err != nil {
			return "", "", fmt.Errorf("sender: %w", err)
		}
	}
	return strings.ToLower(sender), strings.ToLower(addr), nil
}

func checkReason(reason string) error {
	for _, r := range Reasons {
		if reason == r {
			return nil
		}
	}
	return fmt.Errorf("suppression reason %q: want one of %s", reason, strings.Join(Reasons, ", "))
}

// Suppress adds email to sender's suppression list ("" = every sender's),
// so that campaigns from that sender leave it out. campaignID 0 records no
// campaign. An address already suppressed for that sender keeps its first
// reason and date: the list answers "since when, and why at first".
func Suppress(ctx context.Context, q Execer, sender, email, reason, detail string, campaignID int64) error {
	sender, addr, err := normalizeSuppression(sender, email)
	if err != nil {
		return fmt.Errorf("suppressing: %w", err)
	}
	if err := checkReason(reason); err != nil {
		return fmt.Errorf("suppressing %s: %w", addr, err)
	}
	var campaign *int64
	if campaignID != 0 {
		campaign = &campaignID
	}
	_, err = q.Exec(ctx, `
		INSERT INTO suppressions (sender, email, reason, detail, campaign_id)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (sender, email) DO NOTHING`, sender, addr, reason, detail, campaign)
	if err != nil {
		return fmt.Errorf("suppressing %s for sender %q: %w", addr, sender, err)
	}
	return nil
}

// Unsuppress removes email from sender's suppression list ("" = the list for
// every sender; a per-sender entry is not touched by it) and reports whether
// there was an entry.
func Unsuppress(ctx context.Context, q Execer, sender, email string) (bool, error) {
	sender, addr, err := normalizeSuppression(sender, email)
	if err != nil {
		return false, fmt.Errorf("unsuppressing: %w", err)
	}
	tag, err := q.Exec(ctx, "DELETE FROM suppressions WHERE sender = $1 AND email = $2", sender, addr)
	if err != nil {
		return false, fmt.Errorf("unsuppressing %s for sender %q: %w", addr, sender, err)
	}
	return tag.RowsAffected() > 0, nil
}

// ListFilter selects suppressions. The zero value selects all of them.
type ListFilter struct {
	// Sender selects one sender's list when BySender is set ("" then means
	// the list for every sender); otherwise all senders' lists are read.
	Sender   string
	BySender bool
	// Email selects one address (any case); "" = all.
	Email string
	// Reason selects one reason; "" = all.
	Reason string
}

// ListSuppressions calls fn for each suppression that f selects, ordered by
// email and sender, streaming: the list may hold millions of entries. An
// error from fn stops the listing and is returned.
func ListSuppressions(ctx context.Context, q Querier, f ListFilter, fn func(Suppression) error) error {
	if f.Reason != "" {
		if err := checkReason(f.Reason); err != nil {
			return fmt.Errorf("listing suppressions: %w", err)
		}
	}
	rows, err := q.Query(ctx, `
		SELECT sender, email, reason, detail, coalesce(campaign_id, 0), created_at
		FROM suppressions
		WHERE (NOT $1 OR sender = lower($2))
		  AND ($3 = '' OR email = lower($3))
		  AND ($4 = '' OR reason = $4)
		ORDER BY email, sender`, f.BySender, strings.TrimSpace(f.Sender), strings.TrimSpace(f.Email), f.Reason)
	if err != nil {
		return fmt.Errorf("listing suppressions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s Suppression
		if err := rows.Scan(&s.Sender, &s.Email, &s.Reason, &s.Detail, &s.CampaignID, &s.CreatedAt); err != nil {
			return fmt.Errorf("listing suppressions: %w", err)
		}
		if err := fn(s); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("listing suppressions: %w", err)
	}
	return nil
}

// SuppressImportOptions configures ImportSuppressions.
type SuppressImportOptions struct {
	// Sender is the list the addresses go on; "" (the default) is the list
	// for every sender. A sender column in the file overrides it per row.
	Sender string
	// Reason for rows without a reason column (or with an empty one).
	// Default ReasonManual.
	Reason string
	// Detail for rows without a detail column. Default "".
	Detail string
	// Source names the input in messages. Default "input".
	Source string
	// Delimiter as in ImportOptions: 0 detects it.
	Delimiter rune
	// Rejects and OnReject receive the rows left out, as in ImportOptions.
	Rejects  io.Writer
	OnReject func(Reject)
}

// SuppressSummary counts what ImportSuppressions did:
// Rows = Added + Existing + Rejected + Duplicates.
type SuppressSummary struct {
	Rows       int64 // data rows read
	Added      int64 // new suppressions
	Existing   int64 // already suppressed (the first entry is kept)
	Rejected   int64 // rows left out for a reason
	Duplicates int64 // rows repeating an earlier (sender, address) of the file
}

// ImportSuppressions streams a file of addresses onto suppression lists, in
// one transaction, the way Import does contacts (COPY into a staging table,
// one merge). The file is either a CSV whose header has an email column (and
// optionally sender, reason and detail columns, the format `blaster
// suppress list` prints), or one address per line without a header.
func ImportSuppressions(ctx context.Context, pool *pgxpool.Pool, r io.Reader, opts SuppressImportOptions) (*SuppressSummary, error) {
	if opts.Source == "" {
		opts.Source = "input"
	}
	if opts.Reason == "" {
		opts.Reason = ReasonManual
	}
	if err := checkReason(opts.Reason); err != nil {
		return nil, err
	}
	br, err := openCSV(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", opts.Source, err)
	}
	cr, err := newCSVReader(br, opts.Delimiter)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", opts.Source, err)
	}
	src := &suppressionRows{cr: cr, opts: &opts, sum: &SuppressSummary{},
		rw: newRejectWriter(opts.Rejects, cr.Comma, opts.OnReject), vals: make([]any, 5)}
	if err := src.readHeader(); err != nil {
		return nil, err
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("importing suppressions: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE suppress_stage (line bigint NOT NULL, sender text NOT NULL,
		email text NOT NULL, reason text NOT NULL, detail text NOT NULL) ON COMMIT DROP`); err != nil {
		return nil, fmt.Errorf("importing suppressions: creating staging table: %w", err)
	}
	staged, err := tx.CopyFrom(ctx, pgx.Identifier{"suppress_stage"},
		[]string{"line", "sender", "email", "reason", "detail"}, src)
	if src.err != nil {
		return nil, fmt.Errorf("reading %s: %w", opts.Source, src.err)
	}
	if err != nil {
		return nil, fmt.Errorf("importing suppressions from %s: %w", opts.Source, err)
	}
	sum := src.sum
	var distinct int64
	err = tx.QueryRow(ctx, `
		WITH src AS (
			SELECT DISTINCT ON (sender, email) sender, email, reason, detail
			FROM suppress_stage ORDER BY sender, email, line
		), ins AS (
			INSERT INTO suppressions (sender, email, reason, detail)
			SELECT sender, email, reason, detail FROM src
			ON CONFLICT (sender, email) DO NOTHING
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM src), (SELECT count(*) FROM ins)`).Scan(&distinct, &sum.Added)
	if err != nil {
		return nil, fmt.Errorf("importing suppressions from %s: merging: %w", opts.Source, err)
	}
	sum.Existing = distinct - sum.Added
	sum.Duplicates = staged - distinct
	if err := src.rw.flush(); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("importing suppressions from %s: committing: %w", opts.Source, err)
	}
	return sum, nil
}

// suppressionRows is the pgx.CopyFromSource of ImportSuppressions.
type suppressionRows struct {
	cr   *csv.Reader
	opts *SuppressImportOptions
	sum  *SuppressSummary
	rw   *rejectWriter

	header                     []string // nil for one address per line
	email, sender, reason, det int      // column indexes, -1 when absent
	pending                    []string // the first line, when it was data
	pendingLine                int

	vals []any
	err  error
}

// readHeader reads the first row: a header when one of its fields is
// "email", else the first address.
func (s *suppressionRows) readHeader() error {
	s.email, s.sender, s.reason, s.det = 0, -1, -1, -1
	rec, err := s.cr.Read()
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: reading first line: %w", s.opts.Source, err)
	}
	if columnIndex(rec, "email") < 0 {
		if len(rec) != 1 {
			return fmt.Errorf("%s:1: no email column in the header (%s); give a header or one address per line",
				s.opts.Source, strings.Join(rec, ", "))
		}
		line, _ := s.cr.FieldPos(0)
		s.pending, s.pendingLine = []string{rec[0]}, line
		return nil
	}
	header, err := readHeaderFrom(rec, s.opts.Source)
	if err != nil {
		return err
	}
	s.header = header
	s.email = columnIndex(header, "email")
	s.sender = columnIndex(header, "sender")
	s.reason = columnIndex(header, "reason")
	s.det = columnIndex(header, "detail")
	return nil
}

func (s *suppressionRows) Next() bool {
	for {
		var rec []string
		var line int
		if s.pending != nil {
			rec, line, s.pending = s.pending, s.pendingLine, nil
		} else {
			var err error
			rec, err = s.cr.Read()
			if err == io.EOF {
				return false
			}
			if err != nil {
				pe, ok := isParseError(err)
				if !ok {
					s.err = err
					return false
				}
				s.sum.Rows++
				s.reject(int64(pe.StartLine), parseErrorReason(pe), "")
				continue
			}
			line, _ = s.cr.FieldPos(0)
		}
		s.sum.Rows++
		if reason := s.check(rec); reason != "" {
			s.reject(int64(line), reason, s.rw.encode(rec))
			continue
		}
		s.vals[0] = int64(line)
		return true
	}
}

func (s *suppressionRows) check(rec []string) string {
	header := s.header
	if header == nil {
		header = []string{"email"}
	}
	if reason := rowReason(header, rec); reason != "" {
		return reason
	}
	field := func(i int, def string) string {
		if i < 0 || strings.TrimSpace(rec[i]) == "" {
			return def
		}
		return strings.TrimSpace(rec[i])
	}
	reason := field(s.reason, s.opts.Reason)
	if err := checkReason(reason); err != nil {
		return err.Error()
	}
	addr, err := ParseAddress(rec[s.email])
	if err != nil {
		return "email: " + err.(*AddressError).Reason
	}
	sender := field(s.sender, s.opts.Sender)
	if sender != "" {
		if sender, err = ParseAddress(sender); err != nil {
			return "sender: " + err.(*AddressError).Reason
		}
	}
	sender, addr = strings.ToLower(sender), strings.ToLower(addr)
	s.vals[1], s.vals[2], s.vals[3], s.vals[4] = sender, addr, reason, field(s.det, s.opts.Detail)
	return ""
}

func (s *suppressionRows) reject(line int64, reason, raw string) {
	s.sum.Rejected++
	s.rw.write(Reject{Line: line, Reason: reason, Raw: raw})
}

func (s *suppressionRows) Values() ([]any, error) { return s.vals, nil }
func (s *suppressionRows) Err() error             { return s.err }
