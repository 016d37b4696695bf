package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/smtp"
)

// The sending window.
//
// A recipient is in state sending only while its SMTP transaction may be
// under way: mark sets it (with deliveries.sending_job = the job) just
// before the transaction and, in the same statement, writes the outcomes
// of the transactions finished since the last mark. A same-for-all batch
// marks one transaction at a time; a personalized batch marks a chunk of
// transactions sized to last about Config.FlushEvery (at most maxChunk).
// The last chunk's outcomes are written by record, in the transaction that
// completes the job.
//
// A worker killed at any moment leaves sending only the recipients of the
// chunk in flight; every recipient before it has its outcome, every one
// after it is still queued. Those sending rows are orphans, found by the
// job's next run (same job, sending_job = its id) or by any worker's sweep
// (the marking job is no longer running, or has run past the rescue time):
// under at-most-once they become unknown, under at-least-once they are
// queued to be sent again; either way deliveries.ambiguous counts one more
// attempt whose outcome blaster could not know.

// orphanSet turns orphaned sending rows, those matching the condition that
// follows it (on d, the delivery, and c, its campaign), into unknown
// (at-most-once) or queued (at-least-once), counting an ambiguous attempt.
const orphanSet = `
	UPDATE deliveries d SET
	       state = CASE WHEN coalesce((c.settings->>'at_least_once')::boolean, false) THEN 'queued' ELSE 'unknown' END,
	       ambiguous = d.ambiguous + 1, sending_job = NULL, updated_at = now(),
	       last_code = NULL, last_enhanced = NULL,
	       last_text = 'worker stopped while the transaction may have been in flight; outcome unknown'
	FROM campaigns c
	WHERE c.id = d.campaign_id AND d.state = 'sending' AND `

// claim returns the batch's due recipients (queued, or deferred and due)
// with their contact data. It marks nothing: mark does, chunk by chunk.
// First, rows an earlier run of this same job left sending are orphans
// (that run died: River runs one attempt of a job at a time).
func (w *sendWorker) claim(ctx context.Context, b *batch) ([]recipient, error) {
	args := b.job.Args
	err := w.retryDB(ctx, func(ctx context.Context) error {
		_, err := w.pool.Exec(ctx, orphanSet+`d.campaign_id = $1 AND d.batch_no = $2 AND d.sending_job = $3`,
			args.CampaignID, args.BatchNo, b.job.ID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("recovering campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	// A same-for-all message uses no contact data: no join on contacts,
	// no attrs to decode. No ORDER BY: a campaign too new to have
	// statistics looks tiny to the planner, which then walks the primary
	// key's whole campaign_id range for its contact_id order rather than
	// sort the batch's rows (280 ms a claim at 100,000 recipients instead
	// of 0.4 ms); the batch is sorted here instead.
	personalized := b.cc.tmpl.Personalized()
	q := `
		SELECT d.contact_id, d.email, c.name, c.attrs, d.attempts
		FROM deliveries d JOIN contacts c ON c.id = d.contact_id
		WHERE d.campaign_id = $1 AND d.batch_no = $2
		  AND (d.state = 'queued' OR (d.state = 'deferred' AND d.next_attempt_at <= now()))`
	if !personalized {
		q = `
		SELECT d.contact_id, d.email, d.attempts
		FROM deliveries d
		WHERE d.campaign_id = $1 AND d.batch_no = $2
		  AND (d.state = 'queued' OR (d.state = 'deferred' AND d.next_attempt_at <= now()))`
	}
	rows, err := w.pool.Query(ctx, q, args.CampaignID, args.BatchNo)
	if err != nil {
		return nil, fmt.Errorf("claiming campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	rcpts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (recipient, error) {
		var r recipient
		if !personalized {
			err := row.Scan(&r.contactID, &r.email, &r.attempts)
			return r, err
		}
		var attrs map[string]any
		err := row.Scan(&r.contactID, &r.email, &r.name, &attrs, &r.attempts)
		r.attrs = stringAttrs(attrs)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("claiming campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	slices.SortFunc(rcpts, func(a, b recipient) int { return cmp.Compare(a.contactID, b.contactID) })
	return rcpts, nil
}

// writeOutcomesSQL writes outcomes ($3..$9) of job $2's rows of campaign
// $1, batch $10. Rows no longer sending under this job (an orphan sweep took them
// over) are left alone.
const writeOutcomesSQL = `
	UPDATE deliveries d SET state = u.state, last_code = u.code, last_enhanced = u.enhanced,
	       last_text = u.text, next_attempt_at = u.next, updated_at = now(), sending_job = NULL,
	       ambiguous = d.ambiguous + u.ambiguous,
	       sent_at = CASE WHEN u.state = 'sent' THEN now() ELSE d.sent_at END
	FROM unnest($3::bigint[], $4::text[], $5::int[], $6::text[], $7::text[], $8::timestamptz[], $9::int[])
	     AS u(contact_id, state, code, enhanced, text, next, ambiguous)
	WHERE d.campaign_id = $1 AND d.batch_no = $10 AND d.contact_id = u.contact_id
	  AND d.state = 'sending' AND d.sending_job = $2`

// writeSameOutcomeSQL is writeOutcomesSQL for outcomes that are all the
// same but for the recipient (the usual same-for-all transaction: one
// reply to DATA for all): the contact ids $3 and one value each for
// $4..$9, not six arrays to encode and unnest.
const writeSameOutcomeSQL = `
	UPDATE deliveries d SET state = $4::text, last_code = $5::int, last_enhanced = $6::text,
	       last_text = $7::text, next_attempt_at = $8::timestamptz, updated_at = now(), sending_job = NULL,
	       ambiguous = d.ambiguous + $9::int,
	       sent_at = CASE WHEN $4::text = 'sent' THEN now() ELSE d.sent_at END
	WHERE d.campaign_id = $1 AND d.batch_no = $10 AND d.contact_id = ANY($3::bigint[])
	  AND d.state = 'sending' AND d.sending_job = $2`

// markSQL writes the outcomes (outSQL, parameters $1..$10) and marks the
// recipients $11 of batch $10 sending under job $2, unless the campaign is
// no longer running. It returns the campaign's state, then each marked
// recipient with its attempt count (one row with NULLs when none).
func markSQL(outSQL string) string {
	return `
	WITH done AS (` + outSQL + `
	), c AS (SELECT state FROM campaigns WHERE id = $1),
	marked AS (
		UPDATE deliveries d SET state = 'sending', sending_job = $2, updated_at = now(),
		       attempts = d.attempts + CASE WHEN d.state = 'sending' THEN 0 ELSE 1 END
		-- batch_no bounds the scan by the batch whatever the plan: with
		-- campaign_id alone the planner, misled by a new campaign's
		-- missing statistics, read the campaign's every row each time.
		WHERE d.campaign_id = $1 AND d.batch_no = $10 AND d.contact_id = ANY($11)
		  AND (d.state = 'queued' OR (d.state = 'deferred' AND d.next_attempt_at <= now())
		       -- marked by this statement already, when its reply was lost and it is retried
		       OR (d.state = 'sending' AND d.sending_job = $2))
		  AND (SELECT state FROM c) = 'running'
		RETURNING d.contact_id, d.attempts)
	SELECT (SELECT state FROM c), m.contact_id, m.attempts FROM (SELECT 1) one LEFT JOIN marked m ON true`
}

// mark writes the outcomes gathered so far and marks rcpts sending, in one
// round trip and one transaction, unless the campaign is no longer running (paused, cancelled):
// then running is false and nothing is marked. It returns the recipients
// it marked, with their attempt counts: those still queued or due (another
// run of the batch may have taken some).
func (w *sendWorker) mark(ctx context.Context, b *batch, rcpts []recipient) (marked []recipient, running bool, err error) {
	ids := make([]int64, len(rcpts))
	for i, r := range rcpts {
		ids[i] = r.contactID
	}
	attempts := make(map[int64]int, len(rcpts))
	var state campaign.State
	outSQL, outArgs := w.outcomeWrite(b)
	err = w.retryDB(ctx, func(ctx context.Context) error {
		clear(attempts)
		// One round trip, one implicit transaction, two statements: the
		// batch row first (locked, flagged with this job: see migration
		// 0008), then, in a snapshot taken after that lock, the outcomes
		// and the marks. A sweep or a record that holds the batch row
		// thus never misses rows this mark makes sending.
		var br pgx.Batch
		br.Queue(`UPDATE batches SET sending_job = $2 WHERE campaign_id = $1 AND batch_no = $3`,
			b.cc.c.ID, b.job.ID, b.job.Args.BatchNo)
		br.Queue(markSQL(outSQL), append(outArgs, ids)...)
		res := w.pool.SendBatch(ctx, &br)
		defer res.Close()
		if _, err := res.Exec(); err != nil {
			return err
		}
		rows, err := res.Query()
		if err != nil {
			return err
		}
		for rows.Next() {
			var id, n *int64
			if err := rows.Scan(&state, &id, &n); err != nil {
				rows.Close()
				return err
			}
			if id != nil {
				attempts[*id] = int(*n)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		return res.Close()
	})
	if err != nil {
		return nil, false, fmt.Errorf("marking recipients of campaign %d batch %d sending: %w", b.cc.c.ID, b.job.Args.BatchNo, err)
	}
	w.recorded(b)
	b.outcomes = b.outcomes[:0]
	for _, r := range rcpts {
		if n, ok := attempts[r.contactID]; ok {
			r.attempts = n
			marked = append(marked, r)
		}
	}
	return marked, state == campaign.Running, nil
}

// stopEarly ends a run that will not finish its batch: it writes the
// outcomes so far, returns rest (marked, not attempted) to queued, and
// returns the snooze for the job, or err when it is not nil. Recipients
// never marked are still queued.
func (w *sendWorker) stopEarly(ctx context.Context, b *batch, rest []recipient, wait time.Duration, err error) (*time.Duration, error) {
	ids := make([]int64, len(rest))
	for i, r := range rest {
		ids[i] = r.contactID
	}
	outSQL, outArgs := w.outcomeWrite(b)
	werr := w.retryDB(ctx, func(ctx context.Context) error {
		_, err := w.pool.Exec(ctx, `
			WITH done AS (`+outSQL+`)
			UPDATE deliveries SET state = 'queued', sending_job = NULL, attempts = attempts - 1, updated_at = now()
			WHERE campaign_id = $1 AND batch_no = $10 AND contact_id = ANY($11) AND state = 'sending' AND sending_job = $2`,
			append(outArgs, ids)...)
		return err
	})
	if werr != nil {
		return nil, fmt.Errorf("returning recipients of campaign %d batch %d to the queue: %w", b.cc.c.ID, b.job.Args.BatchNo, werr)
	}
	w.recorded(b)
	b.outcomes = b.outcomes[:0]
	if err != nil {
		return nil, err
	}
	return &wait, nil
}

// outcomeWrite returns the statement writing b's pending outcomes and its
// parameters $1..$10: writeSameOutcomeSQL when they are all the same but
// for the recipient (none pending counts), else writeOutcomesSQL.
func (w *sendWorker) outcomeWrite(b *batch) (string, []any) {
	if o, ok := sameOutcome(b.outcomes); ok {
		ids := make([]int64, len(b.outcomes))
		for i, o := range b.outcomes {
			ids[i] = o.contactID
		}
		var code *int32
		var enhanced, text *string
		if o.reply != nil {
			c := int32(o.reply.Code)
			code = &c
			if o.reply.Enhanced != (smtp.EnhancedCode{}) {
				e := o.reply.Enhanced.String()
				enhanced = &e
			}
			t := o.reply.Text
			text = &t
		} else if o.errText != "" {
			t := o.errText
			text = &t
		}
		var state *string
		if len(b.outcomes) > 0 {
			state = &o.state
		}
		var ambiguous int32
		if o.ambiguous {
			ambiguous = 1
		}
		return writeSameOutcomeSQL, []any{b.cc.c.ID, b.job.ID, ids, state, code, enhanced, text, o.next, ambiguous, b.job.Args.BatchNo}
	}
	return writeOutcomesSQL, w.outcomeArgs(b)
}

// sameOutcome returns the first outcome and whether every outcome writes
// the same columns as it (all but the contact id). An empty list is the
// same (ok, zero outcome).
func sameOutcome(outs []outcome) (outcome, bool) {
	if len(outs) == 0 {
		return outcome{}, true
	}
	first := outs[0]
	for _, o := range outs[1:] {
		if o.state != first.state || o.errText != first.errText || o.ambiguous != first.ambiguous ||
			!sameReply(o.reply, first.reply) || !sameTime(o.next, first.next) {
			return first, false
		}
	}
	return first, true
}

func sameReply(a, b *smtp.Reply) bool {
	if a == b {
		return true
	}
	if a == nil || b == nil {
		return false
	}
	return a.Code == b.Code && a.Enhanced == b.Enhanced && a.Text == b.Text
}

func sameTime(a, b *time.Time) bool {
	if a == b {
		return true
	}
	return a != nil && b != nil && a.Equal(*b)
}

// outcomeArgs are the parameters $1..$10 of writeOutcomesSQL for b's
// pending outcomes.
func (w *sendWorker) outcomeArgs(b *batch) []any {
	n := len(b.outcomes)
	ids := make([]int64, n)
	states := make([]string, n)
	codes := make([]*int32, n)
	enhanced := make([]*string, n)
	texts := make([]*string, n)
	nexts := make([]*time.Time, n)
	ambiguous := make([]int32, n)
	for i, o := range b.outcomes {
		ids[i], states[i], nexts[i] = o.contactID, o.state, o.next
		if o.ambiguous {
			ambiguous[i] = 1
		}
		if o.reply != nil {
			code := int32(o.reply.Code)
			codes[i] = &code
			if o.reply.Enhanced != (smtp.EnhancedCode{}) {
				e := o.reply.Enhanced.String()
				enhanced[i] = &e
			}
			t := o.reply.Text
			texts[i] = &t
		} else if o.errText != "" {
			t := o.errText
			texts[i] = &t
		}
	}
	return []any{b.cc.c.ID, b.job.ID, ids, states, codes, enhanced, texts, nexts, ambiguous, b.job.Args.BatchNo}
}

// record writes the last chunk's outcomes, marks the batch done or
// schedules its next attempt, completes the job and finishes the campaign
// if it was the last batch: one transaction, so a crash leaves either all
// of it or none. A lost database is waited for (retryDB).
func (w *sendWorker) record(ctx context.Context, b *batch) error {
	ctx = context.WithoutCancel(ctx) // outcomes are recorded even on shutdown
	var closed bool
	err := w.retryDB(ctx, func(ctx context.Context) error {
		var err error
		closed, err = w.recordTx(ctx, b)
		return err
	})
	if err != nil {
		return err
	}
	// After the commit, not in it: two last batches committing at once
	// would each see the other still pending. Whichever commits last sees
	// both done here.
	if closed {
		if _, err := campaign.FinishIfDone(ctx, w.pool, b.job.Args.CampaignID); err != nil {
			return err
		}
	}
	w.recorded(b)
	return nil
}

func (w *sendWorker) recordTx(ctx context.Context, b *batch) (closed bool, err error) {
	args := b.job.Args
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("recording campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	defer tx.Rollback(ctx)
	// Two runs of one batch (a rescued job and the sweep's, a retry's and a
	// scheduled one) record one after the other, so the second sees what
	// the first left pending.
	if _, err := tx.Exec(ctx, `SELECT 1 FROM batches WHERE campaign_id = $1 AND batch_no = $2 FOR UPDATE`,
		args.CampaignID, args.BatchNo); err != nil {
		return false, fmt.Errorf("locking campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	if len(b.outcomes) > 0 {
		outSQL, outArgs := w.outcomeWrite(b)
		if _, err := tx.Exec(ctx, outSQL, outArgs...); err != nil {
			return false, fmt.Errorf("recording outcomes of campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
		}
	}
	// A campaign cancelled while this batch was in flight: what this run
	// deferred will never be retried.
	if _, err := tx.Exec(ctx, `
		UPDATE deliveries SET state = 'cancelled', next_attempt_at = NULL, updated_at = now()
		WHERE campaign_id = $1 AND batch_no = $2 AND state IN ('queued', 'deferred')
		  AND (SELECT state FROM campaigns WHERE id = $1) = 'cancelled'`, args.CampaignID, args.BatchNo); err != nil {
		return false, fmt.Errorf("cancelling campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	var next *time.Time
	var waiting, sending int
	err = tx.QueryRow(ctx, `
		SELECT min(next_attempt_at) FILTER (WHERE state = 'deferred'),
		       count(*) FILTER (WHERE state IN ('queued', 'sending')),
		       count(*) FILTER (WHERE state = 'sending')
		FROM deliveries WHERE campaign_id = $1 AND batch_no = $2`, args.CampaignID, args.BatchNo).Scan(&next, &waiting, &sending)
	if err != nil {
		return false, fmt.Errorf("reading pending recipients of campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	switch {
	case waiting > 0:
		// Requeued meanwhile (campaign retry, an orphan sweep) or being
		// sent by another run of the batch; each enqueued or is a job of
		// its own: leave the batch open, schedule nothing.
	case next != nil:
		opts := campaign.JobOpts(b.cc.c.Kind)
		opts.ScheduledAt = *next
		if _, err := river.ClientFromContext[pgx.Tx](ctx).InsertTx(ctx, tx, args, opts); err != nil {
			return false, fmt.Errorf("scheduling retry of campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
		}
	}
	// Nothing of the batch in flight (this transaction holds the batch
	// row, so no mark can add any): the sweep need not look at it, and
	// with nothing queued or deferred either the batch is done.
	closed = waiting == 0 && next == nil
	if sending == 0 {
		if _, err := tx.Exec(ctx, `UPDATE batches SET sending_job = NULL, done = done OR $3
			WHERE campaign_id = $1 AND batch_no = $2`, args.CampaignID, args.BatchNo, closed); err != nil {
			return false, fmt.Errorf("closing campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
		}
	}
	job, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, b.job)
	if err != nil {
		return false, fmt.Errorf("completing job %d: %w", b.job.ID, err)
	}
	if job.State != rivertype.JobStateCompleted {
		// The job was no longer ours (rescued or cancelled meanwhile):
		// roll back rather than record outcomes under someone else's run.
		return false, fmt.Errorf("job %d is %s, not running: outcomes of this run discarded", b.job.ID, job.State)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("committing outcomes of campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	return closed, nil
}

// retryDB runs f until it succeeds, fails for a reason other than a lost
// database connection, or w.dbRetry has passed: a PostgreSQL restart
// costs a pause, not the outcomes of the transactions in flight. f runs
// detached from ctx's cancellation, so outcomes are written on shutdown.
func (w *sendWorker) retryDB(ctx context.Context, f func(context.Context) error) error {
	ctx = context.WithoutCancel(ctx)
	deadline := time.Now().Add(w.dbRetry)
	wait := 50 * time.Millisecond
	for {
		err := f(ctx)
		if err == nil || !connectionLost(err) || time.Now().After(deadline) {
			return err
		}
		w.logger.Warn("database unreachable: retrying", "err", err, "in", wait)
		time.Sleep(wait)
		wait = min(2*wait, time.Second)
	}
}

// connectionLost reports whether err is the database going away (a
// restart, a network failure) rather than a statement failing: PostgreSQL
// classes 08 (connection exception) and 57P01..03 (shutdown, cannot
// connect now), a failed dial, a closed connection and network errors,
// which carry no SQLSTATE. Any other error (a constraint, a job that is no
// longer running, a scan) would fail again the same way: it is returned
// at once, not retried for DBRetry.
func connectionLost(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) || pgconn.SafeToRetry(err) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}

// liveJob, followed by a job id expression, finds that job running for
// less than $1 seconds: a live run.
const liveJob = `SELECT 1 FROM river_job j WHERE j.state = 'running'
	AND j.attempted_at > now() - make_interval(secs => $1) AND j.id = `

// recoverOrphans takes over the sending rows of runs that died: rows whose
// job is not running, or has been running longer than rescueAfter (longer
// than any live run may: JobTimeout is shorter). They become unknown or
// queued (orphanSet), and every batch they belong to gets a new send job
// in the same transaction, so the rest of a killed batch goes on within a
// sweep interval of rescueAfter, without waiting for River's rescuer
// (which runs every 30 s, on the leader only). So does every batch whose
// run died with nobody sending. A later run of the dead job finds
// nothing of its own and works what is still queued. It returns the
// number of rows taken over. The rows are found through their batches
// (batches.sending_job), not by scanning deliveries: no index on
// deliveries covers the state, so that the workers' updates stay HOT.
func recoverOrphans(ctx context.Context, pool *pgxpool.Pool, rc *river.Client[pgx.Tx], rescueAfter time.Duration) (int, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("recovering orphaned deliveries: %w", err)
	}
	defer tx.Rollback(ctx)
	// The batches a dead job marked (batches.sending_job, migration 0008),
	// locked: a mark or a record of the batch takes the same lock first,
	// so the statements after this one see every row made sending. Batches
	// a live run holds are skipped, for the next sweep.
	rows, err := tx.Query(ctx, `
		SELECT b.campaign_id, b.batch_no FROM batches b
		WHERE b.sending_job IS NOT NULL AND NOT EXISTS (`+liveJob+`b.sending_job)
		FOR UPDATE OF b SKIP LOCKED`, rescueAfter.Seconds())
	if err != nil {
		return 0, fmt.Errorf("recovering orphaned deliveries: %w", err)
	}
	var campaigns []int64
	var batches []int32
	var cid int64
	var bno int32
	if _, err := pgx.ForEachRow(rows, []any{&cid, &bno}, func() error {
		campaigns, batches = append(campaigns, cid), append(batches, bno)
		return nil
	}); err != nil {
		return 0, fmt.Errorf("recovering orphaned deliveries: %w", err)
	}
	var params []river.InsertManyParams
	total := 0
	seen := map[campaign.SendBatchArgs]bool{}
	collect := func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var args campaign.SendBatchArgs
			var kind campaign.Kind
			var n int
			if err := rows.Scan(&args.CampaignID, &args.BatchNo, &kind, &n); err != nil {
				return err
			}
			total += n
			if !seen[args] {
				seen[args] = true
				params = append(params, river.InsertManyParams{Args: args, InsertOpts: campaign.JobOpts(kind)})
			}
		}
		return rows.Err()
	}
	if len(campaigns) > 0 {
		// Their rows still sending under a job that is not live are the
		// orphans (a live run of the batch, started since, keeps its own),
		// then the batches with none left sending are cleared: the orphans
		// first, then the batches, in the order of a run's record.
		rows, err = tx.Query(ctx, `
			WITH orphans AS (`+orphanSet+`(d.campaign_id, d.batch_no) IN (SELECT * FROM unnest($2::bigint[], $3::int[]))
				  AND NOT EXISTS (`+liveJob+`d.sending_job)
				RETURNING d.campaign_id, d.batch_no, c.kind)
			SELECT campaign_id, batch_no, kind, count(*)::int FROM orphans GROUP BY 1, 2, 3`,
			rescueAfter.Seconds(), campaigns, batches)
		if err != nil {
			return 0, fmt.Errorf("recovering orphaned deliveries: %w", err)
		}
		if err := collect(rows); err != nil {
			return 0, fmt.Errorf("recovering orphaned deliveries: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			UPDATE batches b SET sending_job = NULL
			FROM unnest($1::bigint[], $2::int[]) AS k(campaign_id, batch_no)
			WHERE b.campaign_id = k.campaign_id AND b.batch_no = k.batch_no
			  AND NOT EXISTS (SELECT 1 FROM deliveries d
			                  WHERE d.campaign_id = b.campaign_id AND d.batch_no = b.batch_no AND d.state = 'sending')`,
			campaigns, batches); err != nil {
			return 0, fmt.Errorf("clearing batches of dead runs: %w", err)
		}
	}
	// Batches whose run died with nobody sending (before its first chunk,
	// waiting for a connection or the throttle, between chunks): their
	// jobs are still running, past the rescue time. Once per dead job.
	rows, err = tx.Query(ctx, `
		UPDATE batches b SET rescued_job = j.id FROM river_job j, campaigns c
		WHERE j.kind = 'send_batch' AND j.state = 'running'
		  AND j.attempted_at <= now() - make_interval(secs => $1)
		  AND b.campaign_id = (j.args->>'campaign_id')::bigint AND b.batch_no = (j.args->>'batch_no')::int
		  AND c.id = b.campaign_id AND NOT b.done AND b.rescued_job IS DISTINCT FROM j.id
		RETURNING b.campaign_id, b.batch_no, c.kind, 0`, rescueAfter.Seconds())
	if err != nil {
		return 0, fmt.Errorf("recovering batches of dead runs: %w", err)
	}
	if err := collect(rows); err != nil {
		return 0, fmt.Errorf("recovering batches of dead runs: %w", err)
	}
	if len(params) == 0 {
		return 0, nil
	}
	if _, err := rc.InsertManyFastTx(ctx, tx, params); err != nil {
		return 0, fmt.Errorf("enqueueing runs of batches with orphaned deliveries: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("committing recovery of orphaned deliveries: %w", err)
	}
	return total, nil
}
