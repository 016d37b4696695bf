package throttle

import (
	"context"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// TestSoakRealTime measures the shared throttle on the real clock: three
// processes (Limiters on their own pools, the database's clock) with eight
// senders each, through one relay limited to 200 recipients/s, for the
// duration in $BLASTER_THROTTLE_SOAK (e.g. 2m). It reports the grants per
// second and overall, and fails past the goals (overall within 2%, no
// second over 110%). Skipped when the variable is unset: it takes real time.
//
//	BLASTER_THROTTLE_SOAK=2m go test -run TestSoakRealTime -v ./throttle/
func TestSoakRealTime(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("BLASTER_THROTTLE_SOAK"))
	if err != nil {
		t.Skip("set BLASTER_THROTTLE_SOAK to a duration to run")
	}
	const rate, procs, senders = 200, 3, 8
	pools := processes(t, procs)
	secs := int(d / time.Second)
	counts := make([]atomic.Int64, secs+2)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	var g errgroup.Group
	var waits atomic.Int64
	for _, p := range pools {
		l, err := New(Config{
			Pool:         p,
			AlertReserve: -1,
			Routes:       map[string]Limits{relay: {Rate: rate, Burst: rate / 10}},
			Logger:       slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer l.Stop()
		for i := 0; i < senders; i++ {
			g.Go(func() error {
				key := Key{Route: relay, Domain: "example.test", Campaign: 1}
				for ctx.Err() == nil {
					w, err := l.Acquire(ctx, key, 1)
					if err != nil {
						return nil // ctx ended
					}
					if w > 0 {
						waits.Add(1)
						if sleep(ctx, w) != nil {
							return nil
						}
						continue
					}
					if s := int(time.Since(start) / time.Second); s < len(counts) {
						counts[s].Add(1)
					}
				}
				return nil
			})
		}
	}
	g.Wait()
	total, maxSec, minSec := int64(0), int64(0), int64(1<<62)
	for s := 0; s < secs; s++ {
		n := counts[s].Load()
		total += n
		maxSec = max(maxSec, n)
		minSec = min(minSec, n)
	}
	per := make([]int64, secs)
	for s := range per {
		per[s] = counts[s].Load()
	}
	t.Logf("per second: %v", per)
	overall := float64(total) / float64(secs)
	t.Logf("%d processes x %d senders, limit %d/s, %ds: %d granted, %.2f/s overall (%.2f%% of the limit), seconds min %d max %d, %d refusals",
		procs, senders, rate, secs, total, overall, 100*overall/rate, minSec, maxSec, waits.Load())
	if overall > rate*1.02 || overall < rate*0.98 {
		t.Errorf("overall %.2f/s, want within 2%% of %d", overall, rate)
	}
	if float64(maxSec) > rate*1.10 {
		t.Errorf("a second had %d, over 110%% of %d", maxSec, rate)
	}
}
