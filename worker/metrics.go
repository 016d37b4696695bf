package worker

import (
	"github.com/blaster-mail/blaster/throttle"
)

// Metrics sees what the send worker records, for monitoring; package
// metrics implements it. A Metrics that is also a
// rivertype.WorkerMiddleware is installed as River middleware, around
// every job this worker runs.
type Metrics interface {
	// Recorded is told, once a batch's outcomes are committed to the
	// ledger, how many of its recipients went into each delivery state
	// (sent, deferred, bounced, expired, unknown) under key.
	Recorded(key throttle.Key, states map[string]int)
}

// recorded reports b's committed outcomes to the metrics and the debug
// log (whose attributes name the campaign, batch, domain and route).
func (w *sendWorker) recorded(b *batch) {
	if len(b.outcomes) == 0 {
		return
	}
	states := map[string]int{}
	for _, o := range b.outcomes {
		states[o.state]++
	}
	if w.metrics != nil {
		w.metrics.Recorded(b.key, states)
	}
	b.log.Debug("outcomes recorded", "recipients", len(b.outcomes), "states", states)
}
