package throttle

import (
	"context"
	"errors"
	"github.com/blaster-mail/blaster/internal/fakeclock"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/smtp"
)

// processes opens n pools on one fresh database: each Limiter built on one
// acts as a separate worker process.
func processes(t *testing.T, n int) []*pgxpool.Pool {
	t.Helper()
	url := dbtest.New(t)
	pools := make([]*pgxpool.Pool, n)
	for i := range pools {
		p, err := db.Open(context.Background(), url, 4)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		pools[i] = p
	}
	return pools
}

// newDBFakeClock starts at the real time, so that what the database
// compares with its own clock (status, connection heartbeats) agrees.
func newDBFakeClock() *fakeclock.Clock { return fakeclock.At(time.Now()) }

const relay = "smtp://relay.example.test:587"

func sharedConfig(pool *pgxpool.Pool, clk *fakeclock.Clock) Config {
	return Config{
		Pool:         pool,
		NowFunc:      clk.Now,
		SleepFunc:    clk.Sleep,
		MaxWait:      Duration(time.Nanosecond),
		AlertReserve: -1,
		Routes:       map[string]Limits{relay: {Rate: 200, Burst: 20}},
		Logger:       slog.New(slog.DiscardHandler),
	}
}

// TestSharedRateThreeProcesses: three processes sending as fast as they
// may through one relay limited to 200/s keep the limit together: over 30
// simulated seconds the total is within 2% of it and no second exceeds
// 110%.
func TestSharedRateThreeProcesses(t *testing.T) {
	clk := newDBFakeClock()
	var ls []*Limiter
	for _, p := range processes(t, 3) {
		ls = append(ls, newTestLimiter(t, sharedConfig(p, clk)))
	}
	ctx := context.Background()
	const secs = 30
	perSec := make([]int, secs)
	perProc := make([]int, len(ls))
	start := clk.Now()
	for step := 0; step < secs*20; step++ { // 50ms steps
		sec := int(clk.Now().Sub(start) / time.Second)
		// Processes take turns going first, as they would race.
		for i := range ls {
			j := (i + step) % len(ls)
			for k := 0; ; k++ {
				if k == 10000 {
					t.Fatal("never refused")
				}
				w, err := ls[j].Acquire(ctx, Key{Route: relay, Domain: "example.test", Campaign: 1}, 1)
				if err != nil {
					t.Fatal(err)
				}
				if w > 0 {
					break
				}
				perSec[sec]++
				perProc[j]++
			}
		}
		clk.Advance(50 * time.Millisecond)
	}
	total := 0
	for s, n := range perSec {
		total += n
		if n > 220 {
			t.Errorf("second %d: %d sent, over 110%% of 200", s, n)
		}
	}
	if limit := 200 * secs; total > limit*102/100 || total < limit*98/100 {
		t.Errorf("total %d in %ds, want within 2%% of %d", total, secs, limit)
	}
	for i, n := range perProc {
		if n < total/10 {
			t.Errorf("process %d got only %d of %d", i, n, total)
		}
	}
	t.Logf("total %d in %ds (limit %d), per process %v, first seconds %v", total, secs, 200*secs, perProc, perSec[:5])
}

// TestSharedSuspension: a suspension one process decides stops another
// within LeaseTTL, even one holding leased tokens; it shows in Status and
// recovers step by step for all.
func TestSharedSuspension(t *testing.T) {
	clk := newDBFakeClock()
	pools := processes(t, 2)
	a := newTestLimiter(t, sharedConfig(pools[0], clk))
	b := newTestLimiter(t, sharedConfig(pools[1], clk))
	ctx := context.Background()
	// Direct delivery: a reply speaks for the destination.
	key := Key{Route: "mx:mx.example.test", Domain: "example.test", Campaign: 1}
	if w, err := b.Acquire(ctx, key, 1); err != nil || w != 0 {
		t.Fatalf("b before: %v %v", w, err)
	}
	if w, err := b.Acquire(ctx, Key{Route: relay, Domain: "example.test", Campaign: 1}, 1); err != nil || w != 0 {
		t.Fatalf("b through the relay: %v %v", w, err)
	}
	a.Observe(key, &smtp.Error{Reply: smtp.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 1}, Text: "rate limited, try again in 5 minutes"}})
	if w := acquire(t, a, key, 1); w != 5*time.Minute {
		t.Fatalf("a after its own suspension: wait %v, want 5m", w)
	}
	clk.Advance(time.Duration(b.Config().LeaseTTL) + time.Millisecond)
	w, err := b.Acquire(ctx, key, 1)
	if err != nil {
		t.Fatal(err)
	}
	if w < 4*time.Minute || w > 5*time.Minute {
		t.Fatalf("b after a's suspension and LeaseTTL: wait %v, want ~5m", w)
	}
	// A fresh process sees it at once.
	c := newTestLimiter(t, sharedConfig(pools[1], clk))
	if w := acquire(t, c, key, 1); w == 0 {
		t.Fatal("new process not suspended")
	}
	// Another destination goes on.
	if w := acquire(t, b, Key{Route: "mx:mx.example.test", Domain: "other.example.test"}, 1); w != 0 {
		t.Fatalf("other destination: wait %v", w)
	}

	st, err := Status(ctx, pools[0], nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range st {
		if s.Scope == "domain:example.test" {
			found = true
			if s.SuspendedUntil == nil || s.Rule != "4.7.x" || s.Reason != "451 4.7.1 rate limited, try again in 5 minutes" || s.Factor != 0.25 {
				t.Errorf("status of the suspended scope: %+v", s)
			}
		}
		if s.Scope == "route:"+relay && s.ConfiguredRate != 200 {
			t.Errorf("status of the relay: %+v", s)
		}
	}
	if !found {
		t.Errorf("suspended scope missing from status %+v", st)
	}

	// Recovery after the suspension, shared: 0.25, then x1.5 per 30s.
	clk.Advance(5 * time.Minute)
	for _, want := range []float64{0.25, 0.375, 0.5625} {
		var f float64
		if err := pools[0].QueryRow(ctx, `SELECT factor FROM throttle_scopes WHERE scope = 'domain:example.test'`).Scan(&f); err != nil {
			t.Fatal(err)
		}
		if f != want {
			t.Fatalf("factor %v, want %v", f, want)
		}
		clk.Advance(30 * time.Second)
		b.Observe(key, nil)
	}
}

// TestSharedAlertReserve: newsletters in two processes give way to alerts
// in a third.
func TestSharedAlertReserve(t *testing.T) {
	clk := newDBFakeClock()
	pools := processes(t, 3)
	var ls []*Limiter
	for _, p := range pools {
		cfg := sharedConfig(p, clk)
		cfg.AlertReserve = 0.2
		cfg.Routes = map[string]Limits{relay: {Rate: 100, Burst: 10}}
		ls = append(ls, newTestLimiter(t, cfg))
	}
	news := Key{Route: relay, Domain: "example.test", Campaign: 1}
	alert := Key{Route: relay, Domain: "example.test", Campaign: 2, Alert: true}
	// run drives the newsletter processes and, when alerts is set, the
	// alert process greedily for 10s in 50ms steps.
	run := func(alerts bool) (nn, na int) {
		for step := 0; step < 200; step++ {
			for _, l := range ls[:2] {
				for k := 0; ; k++ {
					if k == 10000 {
						t.Fatal("newsletters never refused")
					}
					if w := acquire(t, l, news, 1); w > 0 {
						break
					}
					nn++
				}
			}
			for k := 0; alerts; k++ {
				if k == 10000 {
					t.Fatal("alerts never refused")
				}
				if w := acquire(t, ls[2], alert, 1); w > 0 {
					break
				}
				na++
			}
			clk.Advance(50 * time.Millisecond)
		}
		return nn, na
	}
	// Newsletters alone: 80 of the 100/s.
	if nn, _ := run(false); nn < 790 || nn > 810 {
		t.Fatalf("newsletters alone got %d in 10s at 100/s with 20%% reserved, want ~800", nn)
	}
	nn, na := run(true)
	if na < 970 || nn+na > 1010 {
		t.Fatalf("newsletters %d, alerts %d in 10s at 100/s: want alerts first, nearly all", nn, na)
	}
}

// TestDatabaseClock: without a NowFunc the database's clock refills the
// buckets.
func TestDatabaseClock(t *testing.T) {
	pools := processes(t, 1)
	l := newTestLimiter(t, Config{
		Pool:    pools[0],
		MaxWait: Duration(time.Nanosecond),
		Routes:  map[string]Limits{relay: {Rate: 0.001, Burst: 3}},
		Logger:  slog.New(slog.DiscardHandler),
	})
	ctx := context.Background()
	granted := 0
	for i := 0; i < 10; i++ {
		w, err := l.Acquire(ctx, Key{Route: relay, Alert: true}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if w == 0 {
			granted++
		} else if w < 10*time.Minute {
			t.Fatalf("wait %v at 0.001/s, want ~1000s", w)
		}
	}
	if granted != 3 {
		t.Fatalf("granted %d at 0.001/s with burst 3, want 3", granted)
	}
}

// TestSharedConnectionCap: connections held in one process count against
// max_connections in another once both have synced.
func TestSharedConnectionCap(t *testing.T) {
	clk := newDBFakeClock()
	pools := processes(t, 2)
	ctx := context.Background()
	var ls []*Limiter
	for _, p := range pools {
		cfg := sharedConfig(p, clk)
		cfg.Routes = map[string]Limits{relay: {MaxConns: 3}}
		ls = append(ls, newTestLimiter(t, cfg))
	}
	a, b := ls[0], ls[1]
	key := Key{Route: relay, Domain: "example.test"}
	var releases []func()
	for i := 0; i < 2; i++ {
		r, w, err := a.AcquireConn(ctx, key)
		if err != nil || w != 0 {
			t.Fatalf("a conn %d: %v %v", i, w, err)
		}
		releases = append(releases, r)
	}
	for _, l := range ls {
		if err := l.sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	r, w, err := b.AcquireConn(ctx, key)
	if err != nil || w != 0 {
		t.Fatalf("b's first connection (3rd of 3): %v %v", w, err)
	}
	if _, w, _ := b.AcquireConn(ctx, key); w == 0 {
		t.Fatal("b opened a 4th connection with max_connections 3 and 2 held by a")
	}
	st, err := Status(ctx, pools[0], nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Scope == "route:"+relay && s.InFlight != 2 {
			t.Errorf("status in flight %d for the relay, want 2 (a's, published)", s.InFlight)
		}
	}
	for _, r := range releases {
		r()
	}
	if err := a.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.sync(ctx); err != nil {
		t.Fatal(err)
	}
	r2, w, _ := b.AcquireConn(ctx, key)
	if w != 0 {
		t.Fatalf("after a released and synced: wait %v", w)
	}
	r()
	r2()
}

// TestStartStop: a started Limiter publishes, gives back leased tokens and
// removes its rows on Stop; Stop is idempotent.
func TestStartStop(t *testing.T) {
	clk := newDBFakeClock()
	pools := processes(t, 1)
	l := newTestLimiter(t, sharedConfig(pools[0], clk))
	ctx := context.Background()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	key := Key{Route: relay}
	if w, err := l.Acquire(ctx, key, 1); err != nil || w != 0 {
		t.Fatalf("acquire: %v %v", w, err)
	}
	release, _, _ := l.AcquireConn(ctx, key)
	if err := l.sync(ctx); err != nil {
		t.Fatal(err)
	}
	var conns int
	pools[0].QueryRow(ctx, `SELECT coalesce(sum(n), 0) FROM throttle_conns WHERE scope = $1`, "route:"+relay).Scan(&conns)
	if conns != 1 {
		t.Fatalf("published %d connections, want 1", conns)
	}
	release()
	var tokens float64
	pools[0].QueryRow(ctx, `SELECT tokens FROM throttle_buckets WHERE name = $1`, "route:"+relay).Scan(&tokens)
	t.Logf("before stop %v", tokens)
	l.Stop()
	l.Stop()
	pools[0].QueryRow(ctx, `SELECT tokens FROM throttle_buckets WHERE name = $1`, "route:"+relay).Scan(&tokens)
	// One of the slice of 20 was used; Stop gave back the other 19.
	if tokens != 19 {
		t.Fatalf("bucket holds %v tokens after Stop, want 19", tokens)
	}
	pools[0].QueryRow(ctx, `SELECT count(*) FROM throttle_conns`).Scan(&conns)
	if conns != 0 {
		t.Fatalf("%d connection rows left after Stop", conns)
	}
}

// TestRelayReplySuspendsTheRelay: through a relay, a 421 speaks for the
// relay (scope auto): every destination behind it waits.
func TestRelayReplySuspendsTheRelay(t *testing.T) {
	clk := newDBFakeClock()
	pools := processes(t, 1)
	l := newTestLimiter(t, sharedConfig(pools[0], clk))
	l.Observe(Key{Route: relay, Domain: "example.test"}, &smtp.Error{Reply: smtp.Reply{Code: 421, Text: "too busy"}})
	if w := acquire(t, l, Key{Route: relay, Domain: "other.example.test"}, 1); w != time.Minute {
		t.Fatalf("another destination through the suspended relay: wait %v, want 1m", w)
	}
	if w := acquire(t, l, Key{Route: "mx:mx.example.test", Domain: "example.test"}, 1); w != 0 {
		t.Fatalf("the destination by another route: wait %v, want 0", w)
	}
}

// BenchmarkAcquireShared is the cost of one Acquire within budget with
// leases from PostgreSQL, the rate too high to bind; lease_fraction is set
// so that a lease covers 100 Acquires, as at 1,000/s.
func BenchmarkAcquireShared(b *testing.B) {
	pool := dbtest.Pool(b)
	l, err := New(Config{Pool: pool, AlertReserve: -1, Routes: map[string]Limits{relay: {Rate: 1e9, Burst: 1e9}},
		LeaseFraction: 1e-7,
		MaxWait:       Duration(time.Minute), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	key := Key{Route: relay, Domain: "example.test", Campaign: 1}
	ctx := context.Background()
	for b.Loop() {
		if _, err := l.Acquire(ctx, key, 1); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSharedAcquireAboveBurst: a transaction of more recipients than a
// bucket holds still gets its tokens from the shared store, piece by piece
// at the rate (before, every lease stopped at the burst and the wait for
// the rest always exceeded MaxWait: such a batch was snoozed for ever).
func TestSharedAcquireAboveBurst(t *testing.T) {
	clk := newDBFakeClock()
	cfg := sharedConfig(processes(t, 1)[0], clk)
	cfg.MaxWait = Duration(2 * time.Second)
	cfg.AlertReserve = 0.2
	cfg.Domain = Limits{Rate: 20, Burst: 20}
	l := newTestLimiter(t, cfg)
	key := Key{Route: "mx:mx.example.test", Domain: "example.test", Campaign: 1}
	start := clk.Now()
	if w := acquire(t, l, key, 100); w != 0 {
		t.Fatalf("Acquire(100) at 20/s, burst 20: wait %v, want 0", w)
	}
	// The newsletter share is 16/s with a burst of 16: 84 more take 5.25s.
	if slept := clk.Now().Sub(start); slept < 5*time.Second || slept > 6*time.Second {
		t.Fatalf("Acquire(100) slept %v, want ~5.25s", slept)
	}
}

// TestResumeWithoutBurst: a suspended scope resumes at its reduced rate
// with an empty bucket, in both stores: the batches snoozed for the
// suspension all wake at its end, and a full bucket would send them to the
// server at once, straight into the next refusal.
func TestResumeWithoutBurst(t *testing.T) {
	for _, shared := range []bool{false, true} {
		clk := newDBFakeClock()
		cfg := testConfig(clk)
		cfg.AlertReserve = -1
		if shared {
			cfg.Pool = processes(t, 1)[0]
		}
		l := newTestLimiter(t, cfg)
		key := Key{Route: "mx:mx.example.test", Domain: "example.test"}
		if w := acquire(t, l, key, 1); w != 0 {
			t.Fatalf("shared %v: first acquire waits %v", shared, w)
		}
		l.Observe(key, &smtp.Error{Reply: smtp.Reply{Code: 421, Text: "busy, try again in 10 seconds"}})
		clk.Advance(10*time.Second + time.Millisecond)
		// 10/s x RecoveryStart 0.25 = 2.5/s from empty: 400ms per token.
		w := acquire(t, l, key, 1)
		if w < 350*time.Millisecond || w > 400*time.Millisecond {
			t.Errorf("shared %v: first acquire after the suspension waits %v, want ~400ms (no burst)", shared, w)
		}
	}
}

// TestStatusOfScopeNeverUsed: a relay that refuses every connection is
// slowed before anything was sent through it; status still shows its
// configured rate, the slowed rate and the error that caused it.
func TestStatusOfScopeNeverUsed(t *testing.T) {
	clk := newDBFakeClock()
	pool := processes(t, 1)[0]
	l := newTestLimiter(t, sharedConfig(pool, clk))
	l.Observe(Key{Route: relay, Domain: "example.test"}, errors.New("dial tcp 192.0.2.1:587: connect: connection refused"))
	st, err := Status(context.Background(), pool, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].Scope != "route:"+relay || st[0].ConfiguredRate != 200 || st[0].CurrentRate != 100 ||
		st[0].Rule != "connection" || !strings.Contains(st[0].Reason, "connection refused") {
		t.Fatalf("status %+v, want the relay at 200/s slowed to 100/s by the connection rule", st)
	}
}
