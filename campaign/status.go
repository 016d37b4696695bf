package campaign

import (
	"context"
	"fmt"
	"time"
)

// Delivery states of the per-recipient ledger (table deliveries).
const (
	StateQueued     = "queued"
	StateSending    = "sending"
	StateSent       = "sent"
	StateDeferred   = "deferred"
	StateBounced    = "bounced"
	StateExpired    = "expired"
	StateSuppressed = "suppressed"
	StateUnknown    = "unknown"
	StateCancelled  = "cancelled"
)

// Status is a campaign's progress: its state and a count for every
// delivery state. Its JSON field names are a stable interface.
type Status struct {
	ID         int64  `json:"id"`
	Name       string `json:"name"`
	Kind       Kind   `json:"kind"`
	State      State  `json:"state"`
	Total      int    `json:"total"`
	Queued     int    `json:"queued"`
	Sending    int    `json:"sending"`
	Sent       int    `json:"sent"`
	Deferred   int    `json:"deferred"`
	Bounced    int    `json:"bounced"`
	Expired    int    `json:"expired"`
	Suppressed int    `json:"suppressed"`
	Unknown    int    `json:"unknown"`
	Cancelled  int    `json:"cancelled"`
	// MaybeDuplicated counts sent recipients with an earlier attempt whose
	// outcome was unknown (a lost reply, a worker killed mid-transaction)
	// that was sent again under at-least-once: the server may have accepted
	// them twice. Always 0 under at-most-once.
	MaybeDuplicated int        `json:"maybe_duplicated"`
	StartedAt       *time.Time `json:"started_at,omitempty"`
	FinishedAt      *time.Time `json:"finished_at,omitempty"`
}

// Pending is the number of recipients still to be attempted or retried.
func (s *Status) Pending() int { return s.Queued + s.Sending + s.Deferred }

// GetStatus counts a campaign's deliveries by state.
func GetStatus(ctx context.Context, q Querier, id int64) (*Status, error) {
	c, err := Get(ctx, q, id)
	if err != nil {
		return nil, err
	}
	s := &Status{ID: c.ID, Name: c.Name, Kind: c.Kind, State: c.State, Total: c.Total,
		StartedAt: c.StartedAt, FinishedAt: c.FinishedAt}
	rows, err := q.Query(ctx, `
		SELECT state, count(*), count(*) FILTER (WHERE ambiguous > 0)
		FROM deliveries WHERE campaign_id = $1 GROUP BY state`, id)
	if err != nil {
		return nil, fmt.Errorf("counting deliveries of campaign %d: %w", id, err)
	}
	defer rows.Close()
	counts := map[string]*int{
		StateQueued: &s.Queued, StateSending: &s.Sending, StateSent: &s.Sent, StateDeferred: &s.Deferred,
		StateBounced: &s.Bounced, StateExpired: &s.Expired, StateSuppressed: &s.Suppressed,
		StateUnknown: &s.Unknown, StateCancelled: &s.Cancelled,
	}
	for rows.Next() {
		var state string
		var n, ambiguous int
		if err := rows.Scan(&state, &n, &ambiguous); err != nil {
			return nil, fmt.Errorf("counting deliveries of campaign %d: %w", id, err)
		}
		if p, ok := counts[state]; ok {
			*p = n
		}
		if state == StateSent {
			s.MaybeDuplicated = ambiguous
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("counting deliveries of campaign %d: %w", id, err)
	}
	return s, nil
}

// FinishIfDone marks a running campaign done when none of its batches has
// a recipient left queued, sending or deferred. It is one index probe
// (batches_pending), so the worker calls it after every batch.
func FinishIfDone(ctx context.Context, q Querier, id int64) (bool, error) {
	tag, err := q.Exec(ctx, `
		UPDATE campaigns SET state = 'done', finished_at = now()
		WHERE id = $1 AND state = 'running'
		  AND NOT EXISTS (SELECT 1 FROM batches WHERE campaign_id = $1 AND NOT done)`, id)
	if err != nil {
		return false, fmt.Errorf("finishing campaign %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// FinishAllDone marks every running campaign done whose batches are all
// done. Workers run it now and then to close campaigns whose last batch's
// worker died between committing and calling FinishIfDone.
func FinishAllDone(ctx context.Context, q Querier) (int64, error) {
	tag, err := q.Exec(ctx, `
		UPDATE campaigns c SET state = 'done', finished_at = now()
		WHERE c.state = 'running'
		  AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.campaign_id = c.id AND NOT b.done)`)
	if err != nil {
		return 0, fmt.Errorf("finishing done campaigns: %w", err)
	}
	return tag.RowsAffected(), nil
}
