package throttle

import (
	"context"
	"fmt"
	"time"
)

// Start runs the limiter's background sync every Config.SyncInterval: it
// publishes this process's connection counts to PostgreSQL, reads the other
// processes' (for MaxConns), and gives back leased tokens held past
// LeaseTTL. Without a Pool it does nothing. Acquire and Observe work
// without Start; only the cross-process connection caps need it.
func (l *Limiter) Start(ctx context.Context) error {
	if l.pg == nil {
		return nil
	}
	if l.stop != nil {
		return fmt.Errorf("throttle: limiter already started")
	}
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	if err := l.sync(ctx); err != nil {
		return err
	}
	go func() {
		defer close(l.done)
		t := time.NewTicker(time.Duration(l.cfg.SyncInterval))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-l.stop:
				return
			case <-t.C:
				if err := l.sync(ctx); err != nil && ctx.Err() == nil {
					l.cfg.Logger.Warn("throttle: sync", "err", err)
				}
			}
		}
	}()
	return nil
}

// Stop ends the sync, gives back leased tokens and removes this process's
// connection counts. It is idempotent.
func (l *Limiter) Stop() {
	l.stopOnce.Do(func() {
		if l.stop == nil {
			return
		}
		close(l.stop)
		<-l.done
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.pg.flush(ctx, l.now().Add(time.Duration(l.cfg.LeaseTTL)+time.Nanosecond))
		if _, err := l.pg.pool.Exec(ctx, `DELETE FROM throttle_conns WHERE owner = $1`, l.owner); err != nil {
			l.cfg.Logger.Warn("throttle: removing connection counts", "err", err)
		}
	})
}

// sync publishes and reads connection counts and flushes stale leases.
func (l *Limiter) sync(ctx context.Context) error {
	l.mu.Lock()
	scopes := make([]string, 0, len(l.inflight))
	counts := make([]int32, 0, len(l.inflight))
	for s, n := range l.inflight {
		scopes = append(scopes, s)
		counts = append(counts, int32(n))
	}
	l.mu.Unlock()
	if err := l.pg.flush(ctx, l.now()); err != nil {
		return err
	}
	_, err := l.pg.pool.Exec(ctx, `
		WITH del AS (DELETE FROM throttle_conns WHERE owner = $1 AND NOT (scope = ANY($2::text[])))
		INSERT INTO throttle_conns (owner, scope, n, updated_at)
		SELECT $1, s, n, now() FROM unnest($2::text[], $3::int[]) AS u(s, n)
		ON CONFLICT (owner, scope) DO UPDATE SET n = EXCLUDED.n, updated_at = EXCLUDED.updated_at`,
		l.owner, scopes, counts)
	if err != nil {
		return fmt.Errorf("publishing connection counts: %w", err)
	}
	rows, err := l.pg.pool.Query(ctx, `
		SELECT scope, sum(n)::int FROM throttle_conns
		WHERE owner <> $1 AND updated_at > now() - make_interval(secs => $2)
		GROUP BY scope`, l.owner, 3*time.Duration(l.cfg.SyncInterval).Seconds())
	if err != nil {
		return fmt.Errorf("reading connection counts: %w", err)
	}
	defer rows.Close()
	others := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			return fmt.Errorf("reading connection counts: %w", err)
		}
		others[s] = n
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading connection counts: %w", err)
	}
	l.mu.Lock()
	l.others = others
	l.mu.Unlock()
	return nil
}
