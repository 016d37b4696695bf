package campaign

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
)

// SendBatchArgs are a send_batch job's arguments: only the batch's key, so
// jobs stay small and the ledger stays the one source of truth.
type SendBatchArgs struct {
	CampaignID int64 `json:"campaign_id"`
	BatchNo    int   `json:"batch_no"`
}

// Kind is the River job kind.
func (SendBatchArgs) Kind() string { return "send_batch" }

// Priorities: River runs priority 1 before 4 within a queue.
const (
	priorityAlert      = 1
	priorityNewsletter = 2
)

// JobOpts are the insert options of a send job for a campaign of kind k.
func JobOpts(k Kind) *river.InsertOpts {
	p := priorityNewsletter
	if k == Alert {
		p = priorityAlert
	}
	// MaxAttempts is high because a send job's retries are our own
	// (deferred recipients get a new job at their next attempt time); River
	// retries only cover a worker crashing or erroring outside SMTP.
	return &river.InsertOpts{Queue: k.Queue(), Priority: p, MaxAttempts: 25}
}

// StartResult says what Start did.
type StartResult struct {
	// Started is false when the campaign was not a draft: it had been
	// started before, and nothing was done.
	Started    bool `json:"started"`
	Recipients int  `json:"recipients"` // deliveries queued
	Suppressed int  `json:"suppressed"` // list members left out by a suppression
	Batches    int  `json:"batches"`
}

// ErrNotDraft is wrapped by Start for a campaign that is no longer a draft.
var ErrNotDraft = errors.New("campaign already started")

// Start fans a draft campaign out in one transaction: a delivery row per
// list member (suppressed ones recorded as such), batches of at most
// MaxRcpt recipients of one destination domain, and one River send_batch
// job per batch. A second Start finds the campaign no longer a draft and
// does nothing (Started false, error wrapping ErrNotDraft).
func Start(ctx context.Context, pool Pool, rc *river.Client[pgx.Tx], id int64) (*StartResult, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting campaign %d: %w", id, err)
	}
	defer tx.Rollback(ctx)

	res, err := fanOut(ctx, tx, rc, id)
	if err != nil {
		return res, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("committing start of campaign %d: %w", id, err)
	}
	return res, nil
}

func fanOut(ctx context.Context, tx pgx.Tx, rc *river.Client[pgx.Tx], id int64) (*StartResult, error) {
	// The row lock taken by this UPDATE serializes concurrent Starts: the
	// second one waits, then sees state <> 'draft' and stops.
	var (
		listID   *int64
		from     string
		kind     Kind
		settings Settings
		state    State
	)
	err := tx.QueryRow(ctx, `SELECT list_id, from_addr, kind, settings, state FROM campaigns WHERE id = $1 FOR UPDATE`, id).
		Scan(&listID, &from, &kind, &settings, &state)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("campaign %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("locking campaign %d: %w", id, err)
	}
	if state != Draft {
		return &StartResult{}, fmt.Errorf("campaign %d is %s: %w", id, state, ErrNotDraft)
	}
	if listID == nil {
		return nil, fmt.Errorf("campaign %d has no list", id)
	}
	settings = settings.WithDefaults()
	sender := senderKey(from)

	// Suppressed members get a ledger row too, so status accounts for
	// every list member.
	tag, err := tx.Exec(ctx, `
		INSERT INTO deliveries (campaign_id, contact_id, email, state)
		SELECT $1, c.id, c.email, 'suppressed'
		FROM list_members m JOIN contacts c ON c.id = m.contact_id
		WHERE m.list_id = $2
		  AND EXISTS (SELECT 1 FROM suppressions s WHERE s.email = lower(c.email) AND s.sender IN ('', $3))`,
		id, *listID, sender)
	if err != nil {
		return nil, fmt.Errorf("recording suppressed recipients of campaign %d: %w", id, err)
	}
	res := &StartResult{Started: true, Suppressed: int(tag.RowsAffected())}

	// Number batches densely over (bucket, domain), where bucket splits a
	// domain's recipients into groups of at most max_rcpt. Bucket first
	// interleaves the destinations in job order: workers take jobs in
	// order, and a run of one domain's batches would have every worker
	// waiting on that domain's budget while the others' sat idle.
	//
	// The sorts of the two windows hold every recipient: with the default
	// work_mem (4 MB) they spill to disk from ~50,000 recipients on. The
	// domain is split_part's last field (a regular expression per row cost
	// a third of the statement).
	if _, err := tx.Exec(ctx, `SET LOCAL work_mem = '256MB'`); err != nil {
		return nil, fmt.Errorf("fanning out campaign %d: %w", id, err)
	}
	err = tx.QueryRow(ctx, `
		WITH members AS (
			SELECT c.id, c.email, lower(split_part(c.email, '@', -1)) AS domain
			FROM list_members m JOIN contacts c ON c.id = m.contact_id
			WHERE m.list_id = $2
			  AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = lower(c.email) AND s.sender IN ('', $3))
		), bucketed AS (
			SELECT id, email, domain, (row_number() OVER (PARTITION BY domain ORDER BY id) - 1) / $4 AS bucket
			FROM members
		), numbered AS MATERIALIZED (
			SELECT id, email, domain, dense_rank() OVER (ORDER BY bucket, domain)::int AS batch_no
			FROM bucketed
		), deliveries AS (
			INSERT INTO deliveries (campaign_id, contact_id, email, batch_no, state)
			SELECT $1, id, email, batch_no, 'queued' FROM numbered
		), batches AS (
			INSERT INTO batches (campaign_id, batch_no, domain, size)
			SELECT $1, batch_no, min(domain), count(*) FROM numbered GROUP BY batch_no
		)
		SELECT count(*), coalesce(max(batch_no), 0) FROM numbered`,
		id, *listID, sender, settings.MaxRcpt).Scan(&res.Recipients, &res.Batches)
	if err != nil {
		return nil, fmt.Errorf("fanning out campaign %d: %w", id, err)
	}

	if res.Recipients > 0 {
		analyzeDeliveries(ctx, tx)
	}

	opts := JobOpts(kind)
	params := make([]river.InsertManyParams, res.Batches)
	for i := range params {
		params[i] = river.InsertManyParams{Args: SendBatchArgs{CampaignID: id, BatchNo: i + 1}, InsertOpts: opts}
	}
	if len(params) > 0 {
		if _, err := rc.InsertManyFastTx(ctx, tx, params); err != nil {
			return nil, fmt.Errorf("enqueueing send jobs of campaign %d: %w", id, err)
		}
	}

	next := Running
	if res.Batches == 0 {
		next = Done // nothing to send: every member suppressed, or an empty list
	}
	_, err = tx.Exec(ctx, `
		UPDATE campaigns SET state = $2, total = $3, started_at = now(),
		       finished_at = CASE WHEN $2 = 'done' THEN now() END
		WHERE id = $1`, id, next, res.Recipients+res.Suppressed)
	if err != nil {
		return nil, fmt.Errorf("marking campaign %d %s: %w", id, next, err)
	}
	return res, nil
}

// senderKey is the suppression list a From address selects: its
// lower-cased address without a display name.
func senderKey(from string) string {
	if addr, err := mail.ParseAddress(from); err == nil {
		return strings.ToLower(addr.Address)
	}
	return strings.ToLower(from)
}

// analyzeDeliveries refreshes the planner's statistics of deliveries with
// the campaign's new rows in them. The workers' per-batch statements filter
// on (campaign_id, batch_no); with statistics from before the campaign
// (worst, from an empty table) the planner takes the new campaign_id for
// one row and may walk its whole primary-key range for every batch instead
// of the batch's rows: 18-280 ms a claim instead of 0.5 at 100,000
// recipients (BENCHMARKS.md, "End to end"). ANALYZE samples a fixed number
// of rows whatever the table's size, counts this transaction's own inserts,
// and its statistics commit with them. It runs under a savepoint and a
// lock timeout, and its failure is not the start's: a VACUUM or ANALYZE
// holding the table leaves the statistics as they were.
func analyzeDeliveries(ctx context.Context, tx pgx.Tx) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return
	}
	defer sp.Rollback(ctx)
	// SET LOCAL outlives the savepoint: put the caller's value back after.
	var was string
	if err := sp.QueryRow(ctx, `SELECT current_setting('lock_timeout'), set_config('lock_timeout', '2s', true)`).Scan(&was, new(string)); err != nil {
		return
	}
	if _, err := sp.Exec(ctx, `ANALYZE deliveries (campaign_id, batch_no, state)`); err != nil {
		return
	}
	if _, err := sp.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`, was); err != nil {
		return
	}
	sp.Commit(ctx)
}
