package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/message"
	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/throttle"
	"github.com/blaster-mail/blaster/transport"
)

// Throttle paces transactions; package throttle implements it. A nil
// Throttle sends as fast as the transport takes it.
type Throttle interface {
	// Acquire reserves budget for one transaction of n recipients under
	// key. It waits for budget that comes soon; when the scope is
	// suspended or its budget is far off, it returns how long to wait
	// instead, and the batch is snoozed without spending an attempt.
	Acquire(ctx context.Context, key throttle.Key, n int) (retryAfter time.Duration, err error)
	// Observe feeds a transaction's outcome back: a reply or a connection
	// error, for adaptive back-off. err is nil after a success.
	Observe(key throttle.Key, err error)
	// Limits are the limits in force for key; transactions carry at most
	// MaxRcpts recipients (0: no limit beyond the batch).
	Limits(key throttle.Key) throttle.Limits
	// Decide maps a failed transaction's error to the action of the back-off
	// rule it matches; a Bounce makes a transient reply final.
	Decide(err error) throttle.Decision
	// AcquireConn reserves a connection under key within every scope's
	// max_connections (across processes) and conn_rate; release gives it
	// back. A batch holds one for its session; when none is free it is
	// snoozed like a batch out of budget.
	AcquireConn(ctx context.Context, key throttle.Key) (release func(), retryAfter time.Duration, err error)
}

// sendWorker delivers one batch: claim its recipients, talk SMTP, record
// every recipient's outcome and complete the job in one transaction.
type sendWorker struct {
	river.WorkerDefaults[campaign.SendBatchArgs]

	pool      *pgxpool.Pool
	transport transport.Transport
	throttle  Throttle
	logger    *slog.Logger
	now       func() time.Time
	timeout   time.Duration
	pauseWait time.Duration
	secrets   campaign.Secrets
	metrics   Metrics // nil: none

	spoolDir  string // this process's; attachments and large messages
	spoolOver int    // message size past which it is spooled to a file

	mu        sync.Mutex
	campaigns map[int64]*compiled // a started campaign's content never changes
}

// Timeout bounds one batch: up to 100 transactions on one connection.
func (w *sendWorker) Timeout(*river.Job[campaign.SendBatchArgs]) time.Duration { return w.timeout }

// NextRetry is used only when a job fails outside SMTP (the database went
// away, a panic): retry soon, not River's attempt^4 seconds.
func (w *sendWorker) NextRetry(job *river.Job[campaign.SendBatchArgs]) time.Time {
	d := time.Duration(job.Attempt) * 5 * time.Second
	if d > time.Minute {
		d = time.Minute
	}
	return w.now().Add(d)
}

func (w *sendWorker) Work(ctx context.Context, job *river.Job[campaign.SendBatchArgs]) error {
	args := job.Args
	cc, err := w.campaign(ctx, args.CampaignID)
	if err != nil {
		return err
	}
	defer w.release(cc)
	var state campaign.State
	var domain string
	err = w.pool.QueryRow(ctx, `
		SELECT c.state, b.domain FROM campaigns c JOIN batches b ON b.campaign_id = c.id
		WHERE c.id = $1 AND b.batch_no = $2`, args.CampaignID, args.BatchNo).Scan(&state, &domain)
	if errors.Is(err, pgx.ErrNoRows) {
		return river.JobCancel(fmt.Errorf("campaign %d batch %d does not exist", args.CampaignID, args.BatchNo))
	}
	if err != nil {
		return fmt.Errorf("reading campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	switch state {
	case campaign.Paused:
		return river.JobSnooze(w.pauseWait)
	case campaign.Cancelled:
		// Recipients put back by a run that saw the cancel never go out.
		if _, err := w.pool.Exec(ctx, `
			WITH c AS (
				UPDATE deliveries SET state = 'cancelled', next_attempt_at = NULL, updated_at = now()
				WHERE campaign_id = $1 AND batch_no = $2 AND state IN ('queued', 'deferred'))
			UPDATE batches SET done = true WHERE campaign_id = $1 AND batch_no = $2`, args.CampaignID, args.BatchNo); err != nil {
			return fmt.Errorf("cancelling campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
		}
		return river.JobCancel(fmt.Errorf("campaign %d is cancelled", args.CampaignID))
	case campaign.Done, campaign.Draft:
		return river.JobCancel(fmt.Errorf("campaign %d is %s", args.CampaignID, state))
	}

	log := w.logger.With("campaign", args.CampaignID, "batch", args.BatchNo, "domain", domain,
		"route", w.transport.Route(domain))
	b := &batch{job: job, cc: cc, domain: domain, log: log,
		key: throttle.Key{Route: w.transport.Route(domain), Domain: domain, Campaign: cc.c.ID, Alert: cc.c.Kind == campaign.Alert}}

	// The batch's connection slot comes first: a batch of a suspended scope,
	// or one whose connections are all taken, is snoozed before it claims
	// anyone (no attempt counted, nothing for a crash to leave "sending").
	if w.throttle != nil {
		release, wait, err := w.throttle.AcquireConn(ctx, b.key)
		if err != nil {
			return fmt.Errorf("reserving a connection for campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
		}
		if wait > 0 {
			return river.JobSnooze(wait)
		}
		defer release()
	}
	rcpts, err := w.claim(ctx, b)
	if err != nil {
		return err
	}
	if len(rcpts) > 0 {
		if snooze, err := w.deliver(ctx, b, rcpts); err != nil {
			return err
		} else if snooze > 0 {
			return river.JobSnooze(snooze)
		}
	}
	return w.record(ctx, b)
}

// batch is one job's working state.
type batch struct {
	job      *river.Job[campaign.SendBatchArgs]
	cc       *compiled
	domain   string
	key      throttle.Key
	log      *slog.Logger
	outcomes []outcome
}

// recipient is one claimed delivery.
type recipient struct {
	contactID int64
	email     string
	name      string
	attrs     map[string]string
	attempts  int
}

// outcome is what happened to one recipient in this attempt.
type outcome struct {
	contactID int64
	state     string
	reply     *smtp.Reply // nil for a connection error
	errText   string      // the error, when there is no reply
	next      *time.Time  // next attempt, for deferred
}

// claim marks the batch's due recipients sending (committed before any SMTP
// is spoken) and returns them with their contact data.
//
// Rows found already sending were claimed by an attempt that died (the
// worker was killed) and may have been delivered: under at-least-once they
// are sent again, under at-most-once they become unknown.
func (w *sendWorker) claim(ctx context.Context, b *batch) ([]recipient, error) {
	args := b.job.Args
	orphanState := campaign.StateUnknown
	if b.cc.c.Settings.AtLeastOnce {
		orphanState = campaign.StateSending
	}
	if b.job.Attempt > 1 || len(b.job.Errors) > 0 {
		_, err := w.pool.Exec(ctx, `
			UPDATE deliveries SET state = $3, updated_at = now(),
			       last_text = 'worker stopped during the attempt; outcome unknown'
			WHERE campaign_id = $1 AND batch_no = $2 AND state = 'sending' AND $3 = 'unknown'`,
			args.CampaignID, args.BatchNo, orphanState)
		if err != nil {
			return nil, fmt.Errorf("recovering campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
		}
	}
	rows, err := w.pool.Query(ctx, `
		UPDATE deliveries d SET state = 'sending', attempts = d.attempts + 1, updated_at = now()
		FROM contacts c
		WHERE d.campaign_id = $1 AND d.batch_no = $2 AND c.id = d.contact_id
		  AND (d.state = 'queued' OR d.state = 'sending'
		       OR (d.state = 'deferred' AND d.next_attempt_at <= now()))
		RETURNING d.contact_id, d.email, c.name, c.attrs, d.attempts`,
		args.CampaignID, args.BatchNo)
	if err != nil {
		return nil, fmt.Errorf("claiming campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	rcpts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (recipient, error) {
		var r recipient
		var attrs map[string]any
		err := row.Scan(&r.contactID, &r.email, &r.name, &attrs, &r.attempts)
		r.attrs = stringAttrs(attrs)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("claiming campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	return rcpts, nil
}

func stringAttrs(m map[string]any) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if s, ok := v.(string); ok {
			out[k] = s
		} else {
			out[k] = fmt.Sprint(v)
		}
	}
	return out
}

// deliver sends to rcpts over one session and appends an outcome for each
// to b.outcomes. A snooze > 0 means the throttle refused: the recipients not
// yet attempted were put back to queued and the job should be snoozed.
func (w *sendWorker) deliver(ctx context.Context, b *batch, rcpts []recipient) (snooze time.Duration, err error) {
	sess, err := w.transport.Session(ctx, b.domain)
	if err != nil && ctx.Err() != nil {
		// Stopping, not failing: nothing was attempted.
		return w.putBack(ctx, b, rcpts, 0, ctx.Err())
	}
	if err != nil {
		if w.throttle != nil {
			w.throttle.Observe(b.key, err)
		}
		b.log.Warn("no session", "err", err)
		w.failAll(b, rcpts, err)
		return 0, nil
	}
	var lastErr error
	defer func() { sess.Release(lastErr) }()

	if b.cc.tmpl.Personalized() {
		checked := w.now()
		for i, r := range rcpts {
			// A pause or cancel takes hold between transactions, not only
			// between batches: the state is read again every pauseWait.
			if w.now().Sub(checked) >= w.pauseWait {
				checked = w.now()
				if running, err := w.stillRunning(ctx, b.cc.c.ID); err != nil || !running {
					return w.putBack(ctx, b, rcpts[i:], w.pauseWait, err)
				}
			}
			if wait, err := w.acquire(ctx, b, 1); err != nil || wait > 0 {
				return w.putBack(ctx, b, rcpts[i:], wait, err)
			}
			data := &message.Data{Email: r.email, Name: r.name, Attrs: r.attrs,
				CampaignID: b.cc.c.ID, ContactID: r.contactID}
			// In memory up to the spool threshold, else in a file.
			body, err := b.cc.tmpl.Build(r.email, data)
			if err != nil {
				b.outcomes = append(b.outcomes, outcome{contactID: r.contactID, state: campaign.StateBounced, errText: err.Error()})
				continue
			}
			lastErr = w.transact(ctx, b, sess, rcpts[i:i+1], body)
			body.Release()
			if lastErr != nil && brokenSession(lastErr) {
				w.failAll(b, rcpts[i+1:], lastErr)
				return 0, nil
			}
		}
		return 0, nil
	}

	// Same for all: built (and signed) once per campaign, not per batch.
	body, err := b.cc.tmpl.Shared(groupName(b.cc.listName))
	if err != nil {
		w.failAll(b, rcpts, err)
		return 0, nil
	}
	defer body.Release()
	size := len(rcpts)
	if w.throttle != nil {
		if m := w.throttle.Limits(b.key).MaxRcpts; m > 0 {
			size = m
		}
	}
	if b.cc.perRecipientReturnPath() {
		size = 1 // one return path per recipient: one transaction each
	}
	for i := 0; i < len(rcpts); i += size {
		chunk := rcpts[i:min(i+size, len(rcpts))]
		if wait, err := w.acquire(ctx, b, len(chunk)); err != nil || wait > 0 {
			return w.putBack(ctx, b, rcpts[i:], wait, err)
		}
		lastErr = w.transact(ctx, b, sess, chunk, body)
		if lastErr != nil && brokenSession(lastErr) {
			w.failAll(b, rcpts[i+len(chunk):], lastErr)
			return 0, nil
		}
	}
	return 0, nil
}

// stillRunning reports whether the campaign is still running (not paused
// or cancelled).
func (w *sendWorker) stillRunning(ctx context.Context, id int64) (bool, error) {
	var state campaign.State
	if err := w.pool.QueryRow(ctx, "SELECT state FROM campaigns WHERE id = $1", id).Scan(&state); err != nil {
		return false, fmt.Errorf("reading state of campaign %d: %w", id, err)
	}
	return state == campaign.Running, nil
}

func (w *sendWorker) acquire(ctx context.Context, b *batch, n int) (time.Duration, error) {
	if w.throttle == nil {
		return 0, nil
	}
	return w.throttle.Acquire(ctx, b.key, n)
}

// putBack returns recipients not attempted to queued, keeping what was done.
func (w *sendWorker) putBack(ctx context.Context, b *batch, rest []recipient, wait time.Duration, err error) (time.Duration, error) {
	ids := make([]int64, len(rest))
	for i, r := range rest {
		ids[i] = r.contactID
	}
	ctx = context.WithoutCancel(ctx)
	if len(b.outcomes) > 0 {
		if rerr := w.writeOutcomes(ctx, w.pool, b); rerr != nil {
			return 0, rerr
		}
		w.recorded(b)
		b.outcomes = nil
	}
	_, perr := w.pool.Exec(ctx, `
		UPDATE deliveries SET state = 'queued', attempts = attempts - 1, updated_at = now()
		WHERE campaign_id = $1 AND contact_id = ANY($2) AND state = 'sending'`, b.cc.c.ID, ids)
	if perr != nil {
		return 0, fmt.Errorf("returning recipients of campaign %d batch %d to the queue: %w", b.cc.c.ID, b.job.Args.BatchNo, perr)
	}
	if err != nil {
		return 0, err
	}
	return wait, nil
}

// transact runs SMTP transactions for rcpts with one body: recipients
// answered 452 (too many recipients, RFC 5321 §4.5.3.1.10) go again at once
// in the next transaction on the same connection.
func (w *sendWorker) transact(ctx context.Context, b *batch, sess transport.Session, rcpts []recipient, body *message.Body) error {
	for len(rcpts) > 0 {
		env := w.envelope(b, rcpts)
		env.Size = body.Size()
		res, err := sess.Send(ctx, env, body.Reader())
		if w.throttle != nil {
			// Rate limits answered to a RCPT count as much as to DATA.
			w.throttle.Observe(b.key, throttle.ResultError(res, err))
		}
		var again []recipient
		for i, r := range rcpts {
			var rr *smtp.Reply
			if res != nil && i < len(res.Rcpts) {
				rr = res.Rcpts[i]
			}
			switch {
			case rr != nil && rr.Code == 452:
				// Too many recipients for this transaction: the next one,
				// on the same connection, at once.
				again = append(again, r)
			case rr != nil && rr.Code >= 400:
				b.outcomes = append(b.outcomes, w.replyOutcome(b, r, rr))
			case err != nil:
				b.outcomes = append(b.outcomes, w.errOutcome(b, r, err))
			case res != nil && res.Data != nil:
				b.outcomes = append(b.outcomes, w.replyOutcome(b, r, res.Data))
			default:
				b.outcomes = append(b.outcomes, w.errOutcome(b, r, errors.New("no reply to RCPT or data")))
			}
		}
		if err != nil {
			w.failAll(b, again, err)
			return err
		}
		if len(again) == len(rcpts) {
			// The server took none of them: do not loop.
			w.failAll(b, again, errors.New("452 for every recipient of the transaction"))
			return nil
		}
		rcpts = again
	}
	return nil
}

// replyOutcome maps a recipient's final reply to its ledger state.
func (w *sendWorker) replyOutcome(b *batch, r recipient, reply *smtp.Reply) outcome {
	o := outcome{contactID: r.contactID, reply: reply}
	switch smtp.ReplyOutcome(reply) {
	case smtp.Sent:
		o.state = campaign.StateSent
	case smtp.Bounce:
		o.state = campaign.StateBounced
	default:
		if w.bounceRule(reply) {
			o.state = campaign.StateBounced
			break
		}
		w.defer_(b, r, &o)
	}
	return o
}

// bounceRule reports whether a back-off rule makes a transient reply final
// (the shipped "mailbox-gone": a 450 for a disabled account will not
// succeed by retrying for days).
func (w *sendWorker) bounceRule(reply *smtp.Reply) bool {
	return w.throttle != nil && w.throttle.Decide(&smtp.Error{Reply: *reply}).Action == throttle.Bounce
}

// errOutcome maps an error with no per-recipient reply to a ledger state.
func (w *sendWorker) errOutcome(b *batch, r recipient, err error) outcome {
	o := outcome{contactID: r.contactID, errText: err.Error()}
	var se *smtp.Error
	if errors.As(err, &se) {
		o.reply = &se.Reply
	}
	switch smtp.Classify(err) {
	case smtp.Sent:
		o.state = campaign.StateSent
	case smtp.Bounce:
		o.state = campaign.StateBounced
	case smtp.Unknown:
		if b.cc.c.Settings.AtLeastOnce {
			w.defer_(b, r, &o)
		} else {
			o.state = campaign.StateUnknown
		}
	default:
		w.defer_(b, r, &o)
	}
	return o
}

// defer_ schedules r's next attempt, or expires it past the campaign's
// maximum age.
func (w *sendWorker) defer_(b *batch, r recipient, o *outcome) {
	s := b.cc.c.Settings.WithDefaults()
	next := w.now().Add(s.RetryDelay(r.attempts))
	started := w.now()
	if b.cc.c.StartedAt != nil {
		started = *b.cc.c.StartedAt
	}
	if next.After(started.Add(time.Duration(s.MaxAge))) {
		o.state = campaign.StateExpired
		return
	}
	o.state = campaign.StateDeferred
	o.next = &next
}

func (w *sendWorker) failAll(b *batch, rcpts []recipient, err error) {
	for _, r := range rcpts {
		b.outcomes = append(b.outcomes, w.errOutcome(b, r, err))
	}
}

// brokenSession reports whether err leaves the session unusable for the
// rest of the batch (a connection error, not a reply).
func brokenSession(err error) bool {
	var se *smtp.Error
	if errors.As(err, &se) {
		return se.Code == 421
	}
	return err != nil
}

// groupName is the To header of a message sent to many: an empty RFC 5322
// group (§3.4) named after the list.
func groupName(list string) string {
	name := strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(`()<>[]:;@\,."`, r) {
			return -1
		}
		return r
	}, list)
	if strings.TrimSpace(name) == "" {
		name = "undisclosed-recipients"
	}
	return name + ":;"
}

// record writes every outcome, marks the batch done or schedules its next
// attempt, completes the job and finishes the campaign if it was the last
// batch: one transaction, so a crash leaves either all of it or none.
func (w *sendWorker) record(ctx context.Context, b *batch) error {
	ctx = context.WithoutCancel(ctx) // outcomes are recorded even on shutdown
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("recording campaign %d batch %d: %w", b.cc.c.ID, b.job.Args.BatchNo, err)
	}
	defer tx.Rollback(ctx)
	if err := w.writeOutcomes(ctx, tx, b); err != nil {
		return err
	}
	args := b.job.Args
	// A campaign cancelled while this batch was in flight: what this run
	// deferred will never be retried.
	if _, err := tx.Exec(ctx, `
		UPDATE deliveries SET state = 'cancelled', next_attempt_at = NULL, updated_at = now()
		WHERE campaign_id = $1 AND batch_no = $2 AND state IN ('queued', 'deferred')
		  AND (SELECT state FROM campaigns WHERE id = $1) = 'cancelled'`, args.CampaignID, args.BatchNo); err != nil {
		return fmt.Errorf("cancelling campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	var next *time.Time
	var waiting int
	err = tx.QueryRow(ctx, `
		SELECT min(next_attempt_at) FILTER (WHERE state = 'deferred'),
		       count(*) FILTER (WHERE state IN ('queued', 'sending'))
		FROM deliveries WHERE campaign_id = $1 AND batch_no = $2`, args.CampaignID, args.BatchNo).Scan(&next, &waiting)
	if err != nil {
		return fmt.Errorf("reading pending recipients of campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	switch {
	case waiting > 0:
		// Requeued meanwhile (campaign retry), which enqueued a job of its
		// own for them: leave the batch open, schedule nothing.
	case next != nil:
		opts := campaign.JobOpts(b.cc.c.Kind)
		opts.ScheduledAt = *next
		if _, err := river.ClientFromContext[pgx.Tx](ctx).InsertTx(ctx, tx, args, opts); err != nil {
			return fmt.Errorf("scheduling retry of campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
		}
	default:
		if _, err := tx.Exec(ctx, `UPDATE batches SET done = true WHERE campaign_id = $1 AND batch_no = $2`,
			args.CampaignID, args.BatchNo); err != nil {
			return fmt.Errorf("closing campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
		}
	}
	job, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, b.job)
	if err != nil {
		return fmt.Errorf("completing job %d: %w", b.job.ID, err)
	}
	if job.State != rivertype.JobStateCompleted {
		// The job was no longer ours (rescued or cancelled meanwhile):
		// roll back rather than record outcomes under someone else's run.
		return fmt.Errorf("job %d is %s, not running: outcomes of this run discarded", b.job.ID, job.State)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing outcomes of campaign %d batch %d: %w", args.CampaignID, args.BatchNo, err)
	}
	// After the commit, not in it: two last batches committing at once
	// would each see the other still pending. Whichever commits last sees
	// both done here.
	if next == nil && waiting == 0 {
		if _, err := campaign.FinishIfDone(ctx, w.pool, args.CampaignID); err != nil {
			return err
		}
	}
	w.recorded(b)
	return nil
}

// writeOutcomes updates every outcome's delivery row in one statement.
func (w *sendWorker) writeOutcomes(ctx context.Context, q campaign.Querier, b *batch) error {
	n := len(b.outcomes)
	if n == 0 {
		return nil
	}
	ids := make([]int64, n)
	states := make([]string, n)
	codes := make([]*int32, n)
	enhanced := make([]*string, n)
	texts := make([]*string, n)
	nexts := make([]*time.Time, n)
	for i, o := range b.outcomes {
		ids[i], states[i], nexts[i] = o.contactID, o.state, o.next
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
	_, err := q.Exec(ctx, `
		UPDATE deliveries d SET state = u.state, last_code = u.code, last_enhanced = u.enhanced,
		       last_text = u.text, next_attempt_at = u.next, updated_at = now(),
		       sent_at = CASE WHEN u.state = 'sent' THEN now() ELSE d.sent_at END
		FROM unnest($2::bigint[], $3::text[], $4::int[], $5::text[], $6::text[], $7::timestamptz[])
		     AS u(contact_id, state, code, enhanced, text, next)
		WHERE d.campaign_id = $1 AND d.contact_id = u.contact_id`,
		b.cc.c.ID, ids, states, codes, enhanced, texts, nexts)
	if err != nil {
		return fmt.Errorf("recording outcomes of campaign %d batch %d: %w", b.cc.c.ID, b.job.Args.BatchNo, err)
	}
	return nil
}
