package throttle

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// pgStore keeps the buckets and the scopes' state in PostgreSQL
// (migrations/0002_throttle.sql), shared by every worker process.
//
// A process leases tokens in slices of LeaseFraction of a second's budget
// with one UPDATE ... RETURNING over the buckets of a key, which refills
// each bucket from its last update time in SQL (a token bucket with lazy
// refill and no goroutine, as tailscale's tstime/rate does it in memory).
// Leased tokens are kept per set of buckets and given back after LeaseTTL,
// so a suspension another process decides stops this one within LeaseTTL.
type pgStore struct {
	pool     *pgxpool.Pool
	fraction float64
	ttl      time.Duration
	dbClock  bool // pass NULL as the time: the database's clock refills

	mu      sync.Mutex
	ensured map[bucket]bool
	caches  map[string]*leaseCache // by joined bucket names
}

// leaseCache holds tokens leased for one set of buckets.
type leaseCache struct {
	mu       sync.Mutex // held across a lease for the set
	tokens   int
	leasedAt time.Time
	suspend  time.Time // latest suspension seen for the set's scopes
	minRate  float64   // the smallest effective rate seen, for slice size
	buckets  []string  // the set's bucket names
}

func newPGStore(pool *pgxpool.Pool, fraction float64, ttl time.Duration, dbClock bool) *pgStore {
	return &pgStore{pool: pool, fraction: fraction, ttl: ttl, dbClock: dbClock,
		ensured: map[bucket]bool{}, caches: map[string]*leaseCache{}}
}

func (s *pgStore) ts(now time.Time) any {
	if s.dbClock {
		return nil
	}
	return now
}

// ensure creates or updates the rows of buckets this process has not yet
// written: the configuration of the last process to start wins.
func (s *pgStore) ensure(ctx context.Context, bs []bucket, now time.Time) error {
	s.mu.Lock()
	var todo []bucket
	for _, b := range bs {
		b.debit = false
		if !s.ensured[b] {
			todo = append(todo, b)
		}
	}
	s.mu.Unlock()
	for _, b := range todo {
		_, err := s.pool.Exec(ctx, `
			INSERT INTO throttle_buckets (name, scope, rate, burst, tokens, updated_at)
			VALUES ($1, $2, $3, $4, $4, coalesce($5::timestamptz, clock_timestamp()))
			ON CONFLICT (name) DO UPDATE SET scope = EXCLUDED.scope, rate = EXCLUDED.rate,
				burst = EXCLUDED.burst, tokens = least(throttle_buckets.tokens, EXCLUDED.burst)
			WHERE (throttle_buckets.rate, throttle_buckets.burst) IS DISTINCT FROM (EXCLUDED.rate, EXCLUDED.burst)`,
			b.name, b.scope, b.rate, float64(b.burst), s.ts(now))
		if err != nil {
			return fmt.Errorf("creating throttle bucket %s: %w", b.name, err)
		}
		s.mu.Lock()
		s.ensured[b] = true
		s.mu.Unlock()
	}
	return nil
}

func (s *pgStore) cache(bs []bucket, scopes []string) *leaseCache {
	names := make([]string, 0, len(bs)+len(scopes))
	for _, b := range bs {
		names = append(names, b.name)
	}
	k := make([]string, 0, len(bs)+len(scopes)+1)
	for _, b := range bs {
		if b.debit {
			k = append(k, "debit:"+b.name)
		} else {
			k = append(k, b.name)
		}
	}
	k = append(k, "|")
	key := strings.Join(append(k, scopes...), "\x00")
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.caches[key]
	if c == nil {
		c = &leaseCache{minRate: math.Inf(1), buckets: names}
		for _, b := range bs {
			if !b.debit {
				c.minRate = min(c.minRate, b.rate)
			}
		}
		s.caches[key] = c
	}
	return c
}

// leaseSQL takes up to $2 tokens from every bucket named in $1, the same
// number from each, giving back $5 tokens first; nothing while a scope in
// $4 is suspended. Buckets also named in $7 (debit) do not limit the grant
// but are charged for it, into debt down to minus their burst. $3 is the time (NULL: the database's). It returns
// the grant, the time, how long in seconds until $6 tokens could be
// granted, the smallest effective rate, and the latest suspension. (The
// UPDATE in u runs whether or not the SELECT reads it.)
const leaseSQL = `
WITH t AS (SELECT coalesce($3::timestamptz, clock_timestamp()) AS now),
s AS (SELECT scope, factor, suspended_until, reason FROM throttle_scopes WHERE scope = ANY($4::text[])),
cur AS (
	SELECT b.name, coalesce(b.name = ANY($7::text[]), false) AS debit, b.burst, b.rate * coalesce(s.factor, 1) AS eff,
	       least(b.burst, b.tokens + $5::int
	             + b.rate * coalesce(s.factor, 1) * greatest(0, extract(epoch FROM t.now - b.updated_at)::float8)) AS avail
	FROM throttle_buckets b CROSS JOIN t LEFT JOIN s ON s.scope = b.scope
	WHERE b.name = ANY($1::text[])
	ORDER BY b.name
	FOR UPDATE OF b
),
g AS (
	SELECT CASE WHEN EXISTS (SELECT 1 FROM s, t WHERE s.suspended_until > t.now) THEN 0
	            ELSE greatest(0, least($2::int, floor(coalesce(min(cur.avail) FILTER (WHERE NOT cur.debit), $2::int))))::int
	       END AS granted
	FROM cur
),
u AS (
	UPDATE throttle_buckets b
	SET tokens = CASE WHEN cur.debit THEN greatest(-cur.burst, cur.avail - g.granted) ELSE cur.avail - g.granted END,
	    updated_at = greatest(b.updated_at, t.now)
	FROM cur, g, t WHERE b.name = cur.name
	RETURNING b.name
)
SELECT g.granted, t.now,
       coalesce((SELECT max(greatest(0, $6::int - cur.avail) / cur.eff) FROM cur WHERE NOT cur.debit), 0),
       coalesce((SELECT min(cur.eff) FROM cur WHERE NOT cur.debit), 0),
       (SELECT max(suspended_until) FROM s)
FROM g, t`

func (s *pgStore) take(ctx context.Context, bs []bucket, scopes []string, n int, maxWait time.Duration, now time.Time) (bool, time.Duration, error) {
	if err := s.ensure(ctx, bs, now); err != nil {
		return false, 0, err
	}
	c := s.cache(bs, scopes)
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.suspend.After(now) {
		return false, c.suspend.Sub(now), s.giveBack(ctx, c)
	}
	fresh := !now.After(c.leasedAt.Add(s.ttl))
	if fresh && c.tokens >= n {
		c.tokens -= n
		return true, 0, nil
	}
	back := 0
	if !fresh {
		back, c.tokens = c.tokens, 0
	}
	need := n - c.tokens
	slice := 1000 // no rate limits the set: it only checks suspensions
	if !math.IsInf(c.minRate, 1) {
		slice = max(1, int(math.Ceil(c.minRate*s.fraction)))
	}
	want := max(need, slice)
	names := make([]string, len(bs))
	var debit []string
	for i, b := range bs {
		names[i] = b.name
		if b.debit {
			debit = append(debit, b.name)
		}
	}
	var (
		granted  int
		dbNow    time.Time
		waitSecs float64
		minEff   float64
		susp     *time.Time
	)
	err := s.pool.QueryRow(ctx, leaseSQL, names, want, s.ts(now), scopes, back, need, debit).
		Scan(&granted, &dbNow, &waitSecs, &minEff, &susp)
	if err != nil {
		c.tokens += back // not given back after all
		return false, 0, fmt.Errorf("leasing throttle tokens for %s: %w", strings.Join(names, ", "), err)
	}
	if minEff > 0 {
		c.minRate = minEff
	}
	if granted > 0 {
		c.tokens += granted
		c.leasedAt = now
	}
	if susp != nil && susp.After(dbNow) {
		c.suspend = now.Add(susp.Sub(dbNow))
		return false, susp.Sub(dbNow), s.giveBack(ctx, c)
	}
	if c.tokens >= n {
		c.tokens -= n
		return true, 0, nil
	}
	wait := time.Duration(waitSecs * float64(time.Second))
	if wait <= 0 {
		wait = time.Millisecond
	}
	if wait > maxWait {
		return false, wait, s.giveBack(ctx, c)
	}
	return false, wait, nil
}

// giveBack returns c's tokens to their buckets. c.mu is held.
func (s *pgStore) giveBack(ctx context.Context, c *leaseCache) error {
	names := c.buckets
	if c.tokens == 0 || len(names) == 0 {
		c.tokens = 0
		return nil
	}
	back := c.tokens
	c.tokens = 0
	_, err := s.pool.Exec(ctx, `
		UPDATE throttle_buckets SET tokens = least(burst, tokens + $2)
		WHERE name = ANY($1::text[])`, names, back)
	if err != nil {
		return fmt.Errorf("giving back throttle tokens for %s: %w", strings.Join(names, ", "), err)
	}
	return nil
}

// flush gives back every cache's tokens leased longer than the TTL ago.
func (s *pgStore) flush(ctx context.Context, now time.Time) error {
	s.mu.Lock()
	cs := make([]*leaseCache, 0, len(s.caches))
	for _, c := range s.caches {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	var firstErr error
	for _, c := range cs {
		if !c.mu.TryLock() {
			continue // in use: its owner will refresh it
		}
		if c.tokens > 0 && now.After(c.leasedAt.Add(s.ttl)) {
			if err := s.giveBack(ctx, c); err != nil && firstErr == nil {
				firstErr = err
			}
		}
		c.mu.Unlock()
	}
	return firstErr
}

func (s *pgStore) adapt(ctx context.Context, scope string, a adaptation, now time.Time) error {
	var susp any
	if a.suspendFor > 0 {
		susp = a.suspendFor.Seconds()
	}
	// A suspension also empties the scope's buckets as of its end, so the
	// scope resumes at its (reduced) rate, not with a burst from every
	// worker whose snoozed batches wake at that same moment.
	_, err := s.pool.Exec(ctx, `
		WITH t AS (SELECT coalesce($9::timestamptz, clock_timestamp()) AS now),
		ins AS (
		INSERT INTO throttle_scopes AS s (scope, factor, suspended_until, hold_until, step_at, rule, reason, reason_at)
		SELECT $1, greatest($4::float8, least($2::float8, $3::float8)),
		       t.now + make_interval(secs => $5::float8), t.now + make_interval(secs => $6::float8),
		       t.now + make_interval(secs => $6::float8), $7, $8, t.now
		FROM t
		ON CONFLICT (scope) DO UPDATE SET
			factor = CASE WHEN $2 = 1 OR s.reason_at <= EXCLUDED.reason_at - interval '1 second'
			              THEN greatest($4::float8, least(s.factor * $2, $3::float8)) ELSE s.factor END,
			suspended_until = greatest(s.suspended_until, EXCLUDED.suspended_until),
			hold_until = greatest(s.hold_until, EXCLUDED.hold_until),
			step_at = greatest(s.step_at, EXCLUDED.hold_until),
			rule = EXCLUDED.rule, reason = EXCLUDED.reason, reason_at = EXCLUDED.reason_at
		RETURNING suspended_until)
		UPDATE throttle_buckets b SET tokens = least(b.tokens, 0), updated_at = greatest(b.updated_at, ins.suspended_until)
		FROM ins WHERE b.scope = $1 AND $5::float8 IS NOT NULL`,
		scope, a.mult, a.cap, a.min, susp, a.holdFor.Seconds(), a.rule, a.reason, s.ts(now))
	if err != nil {
		return fmt.Errorf("recording back-off of %s: %w", scope, err)
	}
	return nil
}

func (s *pgStore) recover(ctx context.Context, scopes []string, step float64, interval time.Duration, now time.Time) error {
	_, err := s.pool.Exec(ctx, `
		WITH t AS (SELECT coalesce($4::timestamptz, clock_timestamp()) AS now)
		UPDATE throttle_scopes s SET factor = least(1, factor * $2), step_at = t.now
		FROM t
		WHERE s.scope = ANY($1::text[]) AND s.factor < 1 AND s.hold_until <= t.now
		  AND s.step_at <= t.now - make_interval(secs => $3)`,
		scopes, step, interval.Seconds(), s.ts(now))
	if err != nil {
		return fmt.Errorf("recovering rates of %s: %w", strings.Join(scopes, ", "), err)
	}
	return nil
}
