package throttle

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// bucket is one token bucket: a scope's rate for all traffic, the
// newsletter share of it (name scope+"/bulk"), or its connection rate
// (scope+"/conn").
type bucket struct {
	name  string
	scope string
	rate  float64 // configured tokens per second, > 0
	burst int
	// debit marks a bucket that does not limit this take but is charged
	// for it, into debt down to -burst: an alert's charge to the
	// newsletter share, so that newsletters only use what alerts leave.
	debit bool
}

// adaptation is a back-off decision applied to one scope: its rate factor
// becomes max(min, min(factor*mult, cap)), it is suspended for suspendFor
// (when not zero), and recovery waits holdFor.
type adaptation struct {
	suspendFor   time.Duration
	holdFor      time.Duration
	mult, cap    float64
	min          float64
	rule, reason string
}

// store keeps the buckets and the scopes' adaptive state: in this process
// (memStore) or in PostgreSQL, shared by every worker process (pgStore).
type store interface {
	// take takes n tokens from every bucket in bs, unless one of scopes is
	// suspended. ok means the tokens are the caller's once wait has passed.
	// Otherwise wait is how long until they could be: when it exceeds
	// maxWait nothing is kept, else the caller waits and calls again.
	take(ctx context.Context, bs []bucket, scopes []string, n int, maxWait time.Duration, now time.Time) (ok bool, wait time.Duration, err error)
	// adapt applies a back-off decision to scope, whose rate buckets are bs.
	adapt(ctx context.Context, scope string, a adaptation, now time.Time) error
	// recover multiplies the factor of each slowed scope by step (up to 1),
	// once per interval, past its hold time.
	recover(ctx context.Context, scopes []string, step float64, interval time.Duration, now time.Time) error
}

// scopeState is a scope's adaptive state.
type scopeState struct {
	factor         float64
	suspendedUntil time.Time
	holdUntil      time.Time
	stepAt         time.Time
	rule, reason   string
	reasonAt       time.Time
}

func (s scopeState) apply(a adaptation, now time.Time) scopeState {
	if s.factor == 0 {
		s.factor = 1
	}
	// A slow-down compounds at most once a second, so a burst of errors
	// from concurrent connections counts as one signal.
	if a.mult == 1 || !now.Before(s.reasonAt.Add(time.Second)) {
		s.factor = max(a.min, min(s.factor*a.mult, a.cap))
	}
	if u := now.Add(a.suspendFor); a.suspendFor > 0 && u.After(s.suspendedUntil) {
		s.suspendedUntil = u
	}
	if h := now.Add(a.holdFor); h.After(s.holdUntil) {
		s.holdUntil = h
	}
	if s.holdUntil.After(s.stepAt) {
		s.stepAt = s.holdUntil
	}
	s.rule, s.reason, s.reasonAt = a.rule, a.reason, now
	return s
}

// memStore keeps everything in this process, with golang.org/x/time/rate
// limiters driven by explicit times (ReserveN/CancelAt), so a fake clock
// drives them in tests.
type memStore struct {
	mu      sync.Mutex
	buckets map[string]*memBucket
	scopes  map[string]scopeState
}

type memBucket struct {
	bucket
	lim *rate.Limiter
}

func newMemStore() *memStore {
	return &memStore{buckets: map[string]*memBucket{}, scopes: map[string]scopeState{}}
}

// limiter returns b's limiter, created full, retuned when the
// configuration changed.
func (s *memStore) limiter(b bucket, now time.Time) *rate.Limiter {
	b.debit = false // a property of the take, not of the bucket
	mb := s.buckets[b.name]
	if mb == nil {
		mb = &memBucket{bucket: b, lim: rate.NewLimiter(rate.Limit(b.rate*s.factor(b.scope)), b.burst)}
		mb.lim.SetLimitAt(now, mb.lim.Limit()) // start the bucket full at now
		s.buckets[b.name] = mb
	} else if mb.bucket != b {
		mb.bucket = b
		mb.lim.SetLimitAt(now, rate.Limit(b.rate*s.factor(b.scope)))
		mb.lim.SetBurstAt(now, b.burst)
	}
	return mb.lim
}

func (s *memStore) factor(scope string) float64 {
	if st, ok := s.scopes[scope]; ok && st.factor > 0 {
		return st.factor
	}
	return 1
}

func (s *memStore) take(ctx context.Context, bs []bucket, scopes []string, n int, maxWait time.Duration, now time.Time) (bool, time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var wait time.Duration
	for _, sc := range scopes {
		if until := s.scopes[sc].suspendedUntil; until.After(now) {
			wait = max(wait, until.Sub(now))
		}
	}
	if wait > 0 {
		return false, wait, nil
	}
	var rs []*rate.Reservation
	var debits []*rate.Limiter
	for _, b := range bs {
		lim := s.limiter(b, now)
		if b.debit {
			debits = append(debits, lim)
			continue
		}
		// ReserveN refuses more than the burst at once: reserve in
		// burst-sized pieces, each going into debt after the last.
		for left := n; left > 0; {
			k := min(left, b.burst)
			r := lim.ReserveN(now, k)
			rs = append(rs, r)
			wait = max(wait, r.DelayFrom(now))
			left -= k
		}
	}
	if wait > maxWait {
		for i := len(rs) - 1; i >= 0; i-- {
			rs[i].CancelAt(now)
		}
		return false, wait, nil
	}
	for _, lim := range debits {
		// Charge n, but leave no more debt than one burst.
		if k := min(n, int(lim.TokensAt(now))+lim.Burst()); k > 0 {
			for left := k; left > 0; {
				c := min(left, lim.Burst())
				lim.ReserveN(now, c)
				left -= c
			}
		}
	}
	return true, wait, nil
}

func (s *memStore) adapt(ctx context.Context, scope string, a adaptation, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.scopes[scope].apply(a, now)
	s.scopes[scope] = st
	s.retune(scope, now)
	if a.suspendFor > 0 {
		// Empty the scope's buckets as of the suspension's end: it resumes
		// at its reduced rate, not with a full burst (as pgStore.adapt).
		for _, mb := range s.buckets {
			if mb.scope == scope {
				mb.lim.ReserveN(st.suspendedUntil, int(mb.lim.TokensAt(st.suspendedUntil)))
			}
		}
	}
	return nil
}

// retune sets the limit of scope's buckets to rate x factor.
func (s *memStore) retune(scope string, now time.Time) {
	f := s.factor(scope)
	for _, mb := range s.buckets {
		if mb.scope == scope {
			mb.lim.SetLimitAt(now, rate.Limit(mb.rate*f))
		}
	}
}

func (s *memStore) recover(ctx context.Context, scopes []string, step float64, interval time.Duration, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sc := range scopes {
		st, ok := s.scopes[sc]
		if !ok || st.factor >= 1 || now.Before(st.holdUntil) || now.Before(st.stepAt.Add(interval)) {
			continue
		}
		st.factor = min(1, st.factor*step)
		st.stepAt = now
		s.scopes[sc] = st
		s.retune(sc, now)
	}
	return nil
}

// state returns a copy of scope's adaptive state, for tests and status.
func (s *memStore) state(scope string) scopeState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.scopes[scope]
	if st.factor == 0 {
		st.factor = 1
	}
	return st
}
