// Package fakeclock is a clock that tests move by hand, for the NowFunc
// fields of the pool, the transports and the throttle.
package fakeclock

import (
	"context"
	"sync"
	"time"
)

// Clock is a settable clock, safe for concurrent use. It moves only when
// Advance is called.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// New returns a Clock set to 2026-01-02 03:04:05 UTC: a fixed instant,
// so every run of a test sees the same times.
func New() *Clock { return At(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) }

// At returns a Clock set to t (e.g. time.Now(), for code whose times meet
// a database's clock).
func At(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time; pass the method value as a NowFunc.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Sleep advances the clock by d at once, for code that sleeps through an
// injected function: a wait costs no real time. It returns ctx's error,
// without advancing, when ctx is already done.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.Advance(d)
	return nil
}
