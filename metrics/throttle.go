package metrics

import (
	"context"
	"time"

	"github.com/blaster-mail/blaster/throttle"
	"github.com/blaster-mail/blaster/worker"
)

// Throttle wraps t so that its refusals and back-off decisions are
// counted.
func (m *Metrics) Throttle(t worker.Throttle) worker.Throttle {
	return &meteredThrottle{Throttle: t, m: m}
}

type meteredThrottle struct {
	worker.Throttle
	m *Metrics
}

func (t *meteredThrottle) Acquire(ctx context.Context, key throttle.Key, n int) (time.Duration, error) {
	wait, err := t.Throttle.Acquire(ctx, key, n)
	if err == nil && wait > 0 {
		t.m.snoozes.WithLabelValues(t.m.routes.label(key.Route), t.m.domains.label(key.Domain)).Inc()
	}
	return wait, err
}

// AcquireConn counts a refusal (no connection free, or the scope
// suspended) as a snooze too: the batch is snoozed for it.
func (t *meteredThrottle) AcquireConn(ctx context.Context, key throttle.Key) (func(), time.Duration, error) {
	release, wait, err := t.Throttle.AcquireConn(ctx, key)
	if err == nil && wait > 0 {
		t.m.snoozes.WithLabelValues(t.m.routes.label(key.Route), t.m.domains.label(key.Domain)).Inc()
	}
	return release, wait, err
}

func (t *meteredThrottle) Observe(key throttle.Key, err error) {
	if err != nil {
		if d := t.Throttle.Decide(err); d.Action == throttle.Suspend || d.Action == throttle.Slow {
			t.m.backoffs.WithLabelValues(string(d.Action), d.Rule).Inc()
		}
	}
	t.Throttle.Observe(key, err)
}
