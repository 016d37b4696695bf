package throttle

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ScopeStatus is one scope's state as the worker processes left it in
// PostgreSQL.
type ScopeStatus struct {
	// Scope is "global", "route:NAME", "domain:NAME" or "campaign:ID".
	Scope string `json:"scope"`
	// ConfiguredRate is the rate in recipients per second (0: unlimited),
	// as the workers wrote it, or from the configuration given to Status.
	ConfiguredRate float64 `json:"configured_rate"`
	// Factor is the share of the configured rate in force after back-off.
	Factor float64 `json:"factor"`
	// CurrentRate is ConfiguredRate x Factor.
	CurrentRate float64 `json:"current_rate"`
	// Burst is the bucket size; Tokens what it held at UpdatedAt.
	Burst  float64 `json:"burst,omitempty"`
	Tokens float64 `json:"tokens,omitempty"`
	// InFlight is the connections the live worker processes hold.
	InFlight int `json:"in_flight"`
	// MaxConns is the configured cap, when a configuration is given.
	MaxConns int `json:"max_connections,omitempty"`
	// SuspendedUntil is set while the scope is suspended.
	SuspendedUntil *time.Time `json:"suspended_until,omitempty"`
	// Rule and Reason are the last back-off: the rule and the reply (or
	// connection error) that matched it, at ReasonAt.
	Rule     string     `json:"rule,omitempty"`
	Reason   string     `json:"reason,omitempty"`
	ReasonAt *time.Time `json:"reason_at,omitempty"`
	// UpdatedAt is the last lease from the scope's bucket.
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
}

// Status lists the active scopes: leased from within the last `within`,
// suspended, slowed, backed off within `within`, or holding connections.
// cfg, when not nil, supplies the configured rates and caps.
func Status(ctx context.Context, pool *pgxpool.Pool, cfg *Config, within time.Duration) ([]ScopeStatus, error) {
	rows, err := pool.Query(ctx, `
		WITH b AS (SELECT scope, rate, burst, tokens, updated_at FROM throttle_buckets WHERE name = scope),
		c AS (SELECT scope, sum(n)::int AS n FROM throttle_conns
		      WHERE updated_at > now() - interval '10 seconds' GROUP BY scope),
		names AS (SELECT scope FROM b UNION SELECT scope FROM throttle_scopes UNION SELECT scope FROM c),
		w AS (SELECT now() - make_interval(secs => $1) AS since)
		SELECT n.scope, coalesce(b.rate, 0), coalesce(s.factor, 1), coalesce(b.burst, 0), coalesce(b.tokens, 0),
		       coalesce(c.n, 0), CASE WHEN s.suspended_until > now() THEN s.suspended_until END,
		       coalesce(s.rule, ''), coalesce(s.reason, ''), s.reason_at, b.updated_at
		FROM names n CROSS JOIN w
		LEFT JOIN b ON b.scope = n.scope
		LEFT JOIN throttle_scopes s ON s.scope = n.scope
		LEFT JOIN c ON c.scope = n.scope
		WHERE b.updated_at > w.since OR s.suspended_until > now() OR s.factor < 1
		   OR s.reason_at > w.since OR c.n > 0
		ORDER BY n.scope`, within.Seconds())
	if err != nil {
		return nil, fmt.Errorf("reading throttle status: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ScopeStatus, error) {
		var s ScopeStatus
		err := r.Scan(&s.Scope, &s.ConfiguredRate, &s.Factor, &s.Burst, &s.Tokens, &s.InFlight,
			&s.SuspendedUntil, &s.Rule, &s.Reason, &s.ReasonAt, &s.UpdatedAt)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading throttle status: %w", err)
	}
	for i := range out {
		s := &out[i]
		if cfg != nil {
			if lim, ok := cfg.ScopeLimits(s.Scope); ok {
				s.ConfiguredRate, s.MaxConns = lim.Rate, lim.MaxConns
			}
		}
		s.CurrentRate = s.ConfiguredRate * s.Factor
	}
	return out, nil
}
