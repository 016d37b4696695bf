package campaign

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
)

// ErrTransition is wrapped by Pause, Resume, Cancel and Retry when the
// campaign's state does not allow the operation (resuming a done campaign,
// pausing a draft).
var ErrTransition = errors.New("invalid campaign state transition")

// transitionError names the campaign, its state and what was asked.
func transitionError(id int64, op string, state State, why string) error {
	return fmt.Errorf("cannot %s campaign %d: it is %s%s: %w", op, id, state, why, ErrTransition)
}

// Pause stops a running campaign from starting new SMTP transactions: the
// worker snoozes every batch of a paused campaign it picks up (for
// worker.Config.PauseRecheck, 1 s by default), while batches already in
// flight finish and record their outcomes. Only a running campaign can be
// paused.
func Pause(ctx context.Context, q Querier, id int64) error {
	tag, err := q.Exec(ctx, `UPDATE campaigns SET state = 'paused' WHERE id = $1 AND state = 'running'`, id)
	if err != nil {
		return fmt.Errorf("pausing campaign %d: %w", id, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	return stateError(ctx, q, id, "pause", "; only a running campaign can be paused")
}

// Resume lets a paused campaign go on where it stopped: its snoozed
// batches run at their next recheck and claim only recipients still queued
// or due. A campaign whose last batches finished while it was paused (so
// the worker could not mark it done) becomes done at once.
func Resume(ctx context.Context, q Querier, id int64) error {
	tag, err := q.Exec(ctx, `
		UPDATE campaigns SET
		       state = CASE WHEN EXISTS (SELECT 1 FROM batches WHERE campaign_id = $1 AND NOT done)
		                    THEN 'running' ELSE 'done' END,
		       finished_at = CASE WHEN EXISTS (SELECT 1 FROM batches WHERE campaign_id = $1 AND NOT done)
		                    THEN NULL ELSE now() END
		WHERE id = $1 AND state = 'paused'`, id)
	if err != nil {
		return fmt.Errorf("resuming campaign %d: %w", id, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	return stateError(ctx, q, id, "resume", "; only a paused campaign can be resumed")
}

// CancelResult says what Cancel did.
type CancelResult struct {
	// Cancelled is the number of recipients never attempted (queued) or
	// waiting for a retry (deferred) that are now cancelled.
	Cancelled int `json:"cancelled"`
}

// Cancel stops a draft, running or paused campaign for good, in one
// transaction: the campaign becomes cancelled, every delivery still queued
// or deferred becomes cancelled, and every batch is marked done. The
// worker cancels the send jobs of a cancelled campaign when it picks them
// up; transactions already in flight finish and their outcomes are
// recorded.
func Cancel(ctx context.Context, pool Pool, id int64) (*CancelResult, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("cancelling campaign %d: %w", id, err)
	}
	defer tx.Rollback(ctx)
	state, err := lockCampaign(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	switch state {
	case Draft, Running, Paused:
	default:
		return nil, transitionError(id, "cancel", state, "; only a draft, running or paused campaign can be cancelled")
	}
	// The batches first: a worker's mark locks its batch row before the
	// deliveries it marks, so taking them in the same order cannot
	// deadlock with it.
	if _, err := tx.Exec(ctx, `UPDATE batches SET done = true WHERE campaign_id = $1 AND NOT done`, id); err != nil {
		return nil, fmt.Errorf("closing batches of campaign %d: %w", id, err)
	}
	tag, err := tx.Exec(ctx, `
		UPDATE deliveries SET state = 'cancelled', next_attempt_at = NULL, updated_at = now()
		WHERE campaign_id = $1 AND state IN ('queued', 'deferred')`, id)
	if err != nil {
		return nil, fmt.Errorf("cancelling deliveries of campaign %d: %w", id, err)
	}
	res := &CancelResult{Cancelled: int(tag.RowsAffected())}
	if _, err := tx.Exec(ctx, `UPDATE campaigns SET state = 'cancelled', finished_at = now() WHERE id = $1`, id); err != nil {
		return nil, fmt.Errorf("marking campaign %d cancelled: %w", id, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("committing cancel of campaign %d: %w", id, err)
	}
	return res, nil
}

// RetryStates are the delivery states Retry accepts.
var RetryStates = []string{StateDeferred, StateExpired, StateUnknown, StateBounced}

// DefaultRetryStates are the states Retry sends again when none are given:
// the recipients whose delivery may still succeed. Bounced recipients are
// retried only when asked for.
var DefaultRetryStates = []string{StateDeferred, StateExpired, StateUnknown}

// RetryResult says what Retry did.
type RetryResult struct {
	Recipients int `json:"recipients"` // deliveries put back to queued
	Batches    int `json:"batches"`    // batches reopened, one send job each
	// Skipped counts recipients in a chosen state whose address has been
	// suppressed since (a hard bounce, an unsubscribe): they are not sent.
	Skipped int `json:"skipped"`
}

// ParseStates splits a comma-separated list of delivery states ("deferred,
// bounced") and checks each is one Retry accepts. An empty string gives
// DefaultRetryStates.
func ParseStates(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return DefaultRetryStates, nil
	}
	var out []string
	for i, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		if !slices.Contains(RetryStates, f) {
			return nil, fmt.Errorf("state %d %q: must be one of %s", i+1, f, strings.Join(RetryStates, ", "))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// Retry sends again to the campaign's recipients in the given delivery
// states (nil means DefaultRetryStates) and only to them, in one
// transaction: those deliveries go back to queued, their batches are
// reopened, a done campaign is running again (a paused one stays paused
// and goes on when resumed), and one send job is enqueued per reopened
// batch. The worker claims only queued and due deferred rows, so no
// recipient already sent is sent again. Recipients suppressed since are
// left as they are and counted in Skipped.
//
// Retried recipients keep their attempt count, and the campaign's maximum
// age still counts from its start: an expired recipient retried gets one
// more attempt, and expires again if that attempt is deferred.
func Retry(ctx context.Context, pool Pool, rc *river.Client[pgx.Tx], id int64, states []string) (*RetryResult, error) {
	if len(states) == 0 {
		states = DefaultRetryStates
	}
	for _, s := range states {
		if !slices.Contains(RetryStates, s) {
			return nil, fmt.Errorf("retrying campaign %d: state %q: must be one of %s", id, s, strings.Join(RetryStates, ", "))
		}
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("retrying campaign %d: %w", id, err)
	}
	defer tx.Rollback(ctx)
	state, err := lockCampaign(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	switch state {
	case Running, Paused, Done:
	default:
		return nil, transitionError(id, "retry", state, "; only a running, paused or done campaign can be retried")
	}
	var from string
	var kind Kind
	if err := tx.QueryRow(ctx, `SELECT from_addr, kind FROM campaigns WHERE id = $1`, id).Scan(&from, &kind); err != nil {
		return nil, fmt.Errorf("reading campaign %d: %w", id, err)
	}
	sender := senderKey(from)

	res := &RetryResult{}
	err = tx.QueryRow(ctx, `
		SELECT count(*) FROM deliveries d
		WHERE d.campaign_id = $1 AND d.state = ANY($2)
		  AND EXISTS (SELECT 1 FROM suppressions s WHERE s.email = lower(d.email) AND s.sender IN ('', $3))`,
		id, states, sender).Scan(&res.Skipped)
	if err != nil {
		return nil, fmt.Errorf("counting suppressed recipients of campaign %d: %w", id, err)
	}
	rows, err := tx.Query(ctx, `
		WITH requeued AS (
			UPDATE deliveries d SET state = 'queued', next_attempt_at = NULL, updated_at = now()
			WHERE d.campaign_id = $1 AND d.state = ANY($2) AND d.batch_no IS NOT NULL
			  AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = lower(d.email) AND s.sender IN ('', $3))
			RETURNING d.batch_no
		), reopened AS (
			UPDATE batches b SET done = false
			WHERE b.campaign_id = $1 AND b.batch_no IN (SELECT batch_no FROM requeued)
		)
		SELECT batch_no, count(*)::int FROM requeued GROUP BY batch_no ORDER BY batch_no`,
		id, states, sender)
	if err != nil {
		return nil, fmt.Errorf("requeueing recipients of campaign %d: %w", id, err)
	}
	var params []river.InsertManyParams
	opts := JobOpts(kind)
	for rows.Next() {
		var batchNo, n int
		if err := rows.Scan(&batchNo, &n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("requeueing recipients of campaign %d: %w", id, err)
		}
		res.Recipients += n
		params = append(params, river.InsertManyParams{Args: SendBatchArgs{CampaignID: id, BatchNo: batchNo}, InsertOpts: opts})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("requeueing recipients of campaign %d: %w", id, err)
	}
	res.Batches = len(params)
	if len(params) == 0 {
		return res, nil // nothing in those states: leave the campaign as it is
	}
	if _, err := rc.InsertManyFastTx(ctx, tx, params); err != nil {
		return nil, fmt.Errorf("enqueueing send jobs of campaign %d: %w", id, err)
	}
	if state == Done {
		if _, err := tx.Exec(ctx, `UPDATE campaigns SET state = 'running', finished_at = NULL WHERE id = $1`, id); err != nil {
			return nil, fmt.Errorf("marking campaign %d running: %w", id, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("committing retry of campaign %d: %w", id, err)
	}
	return res, nil
}

// lockCampaign reads a campaign's state and holds its row lock until tx
// ends, so lifecycle changes and Start on one campaign are serialized.
func lockCampaign(ctx context.Context, tx pgx.Tx, id int64) (State, error) {
	var state State
	err := tx.QueryRow(ctx, `SELECT state FROM campaigns WHERE id = $1 FOR UPDATE`, id).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("campaign %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("locking campaign %d: %w", id, err)
	}
	return state, nil
}

// stateError explains why an UPDATE guarded by the campaign's state changed
// nothing: the campaign does not exist, or it is in another state.
func stateError(ctx context.Context, q Querier, id int64, op, why string) error {
	var state State
	err := q.QueryRow(ctx, `SELECT state FROM campaigns WHERE id = $1`, id).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("campaign %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("reading campaign %d: %w", id, err)
	}
	return transitionError(id, op, state, why)
}
