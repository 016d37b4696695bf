package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

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

// sendWorker delivers one batch: read its due recipients, mark a chunk of
// them sending just before their SMTP transactions, write the chunk's
// outcomes together with marking the next chunk, and record the last
// outcomes and complete the job in one transaction (see ledger.go).
type sendWorker struct {
	river.WorkerDefaults[campaign.SendBatchArgs]

	pool      *pgxpool.Pool
	transport transport.Transport
	throttle  Throttle
	logger    *slog.Logger
	now       func() time.Time
	timeout   time.Duration
	budget    time.Duration // no transaction starts after this much of a run
	flush     time.Duration // how long a personalized chunk aims to last
	pauseWait time.Duration
	dbRetry   time.Duration // how long ledger writes are retried through a lost database
	secrets   campaign.Secrets
	metrics   Metrics // nil: none

	spool     *workerSpool // this process's; attachments and large messages
	spoolOver int          // message size past which it is spooled to a file

	mu        sync.Mutex
	campaigns map[int64]*compiled // a started campaign's content never changes
}

// Timeout bounds one run of a batch. A run stops starting transactions
// after its budget (half the timeout by default) and snoozes for the rest,
// so the timeout is only reached by a transaction that hangs.
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
	var state campaign.State
	var domain string
	err := w.pool.QueryRow(ctx, `
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
	// Compiled (its attachments copied) only for a batch that sends: the
	// jobs of a paused, cancelled or finished campaign do not need it, and
	// the sweep drops a cancelled campaign's copies.
	cc, err := w.campaign(ctx, args.CampaignID)
	if err != nil {
		return err
	}
	defer w.release(cc)

	log := w.logger.With("campaign", args.CampaignID, "batch", args.BatchNo, "domain", domain,
		"route", w.transport.Route(domain))
	b := &batch{job: job, cc: cc, domain: domain, log: log,
		key:      throttle.Key{Route: w.transport.Route(domain), Domain: domain, Campaign: cc.c.ID, Alert: cc.c.Kind == campaign.Alert},
		deadline: w.now().Add(w.budget),
		jitter:   1 + campaign.RetryJitter*(2*rand.Float64()-1),
	}

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
		} else if snooze != nil {
			return river.JobSnooze(*snooze)
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
	deadline time.Time // no transaction starts after it: the run's budget
	jitter   float64   // factor on this run's retry waits, drawn once per run
	// outcomes are the results not yet written: those of the current
	// chunk, whose rows are sending.
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
	ambiguous bool        // the reply to the final "." was lost
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

// deliver sends to rcpts over one session, chunk by chunk (see mark), and
// leaves the outcomes of the last chunk in b.outcomes for record. A
// non-nil snooze means the run stopped early (the campaign was paused or
// cancelled, the throttle refused, the run's budget was spent): what was
// done is written, the recipients not attempted are queued again, and the
// job should be snoozed for *snooze.
func (w *sendWorker) deliver(ctx context.Context, b *batch, rcpts []recipient) (snooze *time.Duration, err error) {
	sess, err := w.transport.Session(ctx, b.domain)
	if err != nil && ctx.Err() != nil {
		// Stopping, not failing: nothing was marked or attempted.
		return nil, ctx.Err()
	}
	if err != nil {
		if w.throttle != nil {
			w.throttle.Observe(b.key, err)
		}
		b.log.Warn("no session", "err", err)
		return w.failRest(ctx, b, nil, rcpts, err)
	}
	var lastErr error
	defer func() { sess.Release(lastErr) }()
	// reconnect replaces a session that broke (a dropped connection, a 421)
	// with a new one, at most maxReconnects times a run: one bad connection
	// does not defer the rest of the batch for a retry interval, and a
	// route that keeps failing does.
	reconnects := 0
	reconnect := func() bool {
		if reconnects == maxReconnects || ctx.Err() != nil {
			return false
		}
		reconnects++
		next, err := w.transport.Session(ctx, b.domain)
		if err != nil {
			if w.throttle != nil {
				w.throttle.Observe(b.key, err)
			}
			return false
		}
		sess.Release(lastErr)
		sess, lastErr = next, nil
		return true
	}

	// A transaction is one recipient (personalized content, or a return
	// path per recipient) or up to size recipients with one shared body.
	var shared *message.Body
	size := 1
	if !b.cc.tmpl.Personalized() {
		// Same for all: built (and signed) once per campaign, not per batch.
		if shared, err = b.cc.tmpl.Shared(message.GroupAddress(b.cc.listName)); err != nil {
			return w.failRest(ctx, b, nil, rcpts, err)
		}
		defer shared.Release()
		size = len(rcpts)
		if w.throttle != nil {
			if m := w.throttle.Limits(b.key).MaxRcpts; m > 0 {
				size = m
			}
		}
		if b.cc.perRecipientReturnPath() {
			size = 1 // one return path per recipient: one transaction each
		}
	}
	// A chunk is one multi-recipient transaction, or as many one-recipient
	// transactions as last about w.flush: its recipients are marked
	// sending just before it, together with writing the outcomes of the
	// chunk before (mark).
	k := firstChunk
	for i := 0; i < len(rcpts); {
		if stop, wait := w.mustStop(ctx, b, i); stop {
			return w.stopEarly(ctx, b, nil, wait, ctx.Err())
		}
		n := min(k, len(rcpts)-i)
		if size > 1 {
			n = min(size, len(rcpts)-i)
			// The throttle first: nobody waits for it in the window.
			if wait, err := w.acquire(ctx, b, n); err != nil || wait > 0 {
				return w.stopEarly(ctx, b, nil, wait, err)
			}
		}
		began := w.now()
		chunk, running, err := w.mark(ctx, b, rcpts[i:i+n])
		if err != nil {
			return nil, err
		}
		i += n
		if !running {
			return w.stopEarly(ctx, b, nil, w.pauseWait, nil)
		}
		for j := 0; j < len(chunk); j += size {
			part := chunk[j:min(j+size, len(chunk))]
			if size == 1 {
				if wait, err := w.acquire(ctx, b, 1); err != nil || wait > 0 {
					return w.stopEarly(ctx, b, chunk[j:], wait, err)
				}
			}
			msg := shared
			if shared == nil {
				r := part[0]
				data := &message.Data{Email: r.email, Name: r.name, Attrs: r.attrs,
					CampaignID: b.cc.c.ID, ContactID: r.contactID}
				// In memory up to the spool threshold, else in a file.
				body, err := b.cc.tmpl.Build(r.email, data)
				if err != nil {
					b.outcomes = append(b.outcomes, outcome{contactID: r.contactID, state: campaign.StateBounced, errText: err.Error()})
					continue
				}
				msg = body
			}
			lastErr = w.transact(ctx, b, sess, part, msg)
			if shared == nil {
				msg.Release()
			}
			if lastErr != nil && brokenSession(lastErr) && !reconnect() {
				if errors.Is(ctx.Err(), context.Canceled) {
					// Stopping (the worker shuts down), not failing: the
					// recipients not attempted go back to the queue, as at
					// a chunk's start (mustStop), rather than spend an
					// attempt and wait for a retry. A job timeout is a
					// transaction that hung: the route is failing, and
					// the rest is deferred below.
					return w.stopEarly(ctx, b, chunk[j+len(part):], 0, ctx.Err())
				}
				return w.failRest(ctx, b, chunk[j+len(part):], rcpts[i:], lastErr)
			}
		}
		if size == 1 {
			k = nextChunk(n, w.now().Sub(began), w.flush)
		}
	}
	return nil, nil
}

// maxReconnects is how many times a run replaces a broken session.
const maxReconnects = 3

// firstChunk is how many recipients the first chunk of one-recipient
// transactions marks; later chunks are sized by nextChunk.
const firstChunk = 4

// maxChunk bounds a chunk of one-recipient transactions: the recipients a
// worker killed at the worst moment may leave unknown.
const maxChunk = 32

// nextChunk sizes the next chunk of one-recipient transactions so that it lasts about
// target, from how long the last one of n recipients took: one ledger
// round trip per target of transactions, not per message.
func nextChunk(n int, took, target time.Duration) int {
	if took <= 0 {
		return maxChunk
	}
	k := int(float64(n) * float64(target) / float64(took))
	return max(1, min(k, maxChunk))
}

// mustStop reports whether the run should start no more transactions
// after the first i recipients: the worker is stopping (ctx ended), or the
// run spent its budget (then the job is snoozed for wait = 0 and goes on
// in a new run). The first chunk always goes, so every run makes progress.
func (w *sendWorker) mustStop(ctx context.Context, b *batch, i int) (bool, time.Duration) {
	if ctx.Err() != nil {
		return true, 0
	}
	return i > 0 && !w.now().Before(b.deadline), 0
}

// failRest gives every recipient left when a session broke or could not be
// had the session's error as its outcome: marked are the rest of the
// current chunk, unmarked the recipients after it, which are marked (an
// attempt that failed) first. None of them was in a transaction, so a lost
// reply (smtp.ErrUnknownOutcome) counts for them as a connection lost
// before their turn: deferred, never unknown.
func (w *sendWorker) failRest(ctx context.Context, b *batch, marked, unmarked []recipient, err error) (*time.Duration, error) {
	err = notAttempted(err)
	w.failAll(b, marked, err)
	if len(unmarked) == 0 {
		return nil, nil
	}
	more, running, merr := w.mark(ctx, b, unmarked)
	if merr != nil {
		return nil, merr
	}
	if !running {
		return w.stopEarly(ctx, b, nil, w.pauseWait, nil)
	}
	w.failAll(b, more, err)
	return nil, nil
}

// notAttempted is err as the outcome of a recipient whose transaction
// never started because an earlier one failed with err.
func notAttempted(err error) error {
	if smtp.Classify(err) == smtp.Unknown {
		return fmt.Errorf("not attempted: the connection was lost earlier in the batch (%s)", err.Error())
	}
	return err
}

func (w *sendWorker) acquire(ctx context.Context, b *batch, n int) (time.Duration, error) {
	if w.throttle == nil {
		return 0, nil
	}
	return w.throttle.Acquire(ctx, b.key, n)
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
			// A recipient answered 452 was not in the failed transaction.
			w.failAll(b, again, notAttempted(err))
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
		o.ambiguous = true
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
	next := w.now().Add(time.Duration(float64(s.RetryDelay(r.attempts)) * b.jitter))
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
