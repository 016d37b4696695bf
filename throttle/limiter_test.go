package throttle

import (
	"context"
	"errors"
	"github.com/blaster-mail/blaster/internal/fakeclock"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/smtp"
)

// testConfig is a config with one limited domain and a fake clock; MaxWait
// 0 makes Acquire report every wait instead of sleeping.
func testConfig(clk *fakeclock.Clock) Config {
	return Config{
		NowFunc:   clk.Now,
		SleepFunc: clk.Sleep,
		MaxWait:   Duration(time.Nanosecond),
		Domain:    Limits{Rate: 10, Burst: 5},
		Domains:   map[string]Limits{"slow.example.test": {Rate: 1, Burst: 1}},
		Logger:    slog.New(slog.DiscardHandler),
	}
}

// acquire is Acquire that fails the test on an error.
func acquire(t testing.TB, l *Limiter, key Key, n int) time.Duration {
	t.Helper()
	w, err := l.Acquire(context.Background(), key, n)
	if err != nil {
		t.Fatalf("Acquire(%+v, %d): %v", key, n, err)
	}
	return w
}

func newTestLimiter(t *testing.T, cfg Config) *Limiter {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestAcquireRateAndBurst(t *testing.T) {
	clk := fakeclock.New()
	cfg := testConfig(clk)
	cfg.AlertReserve = -1
	l := newTestLimiter(t, cfg)
	ctx := context.Background()
	key := Key{Route: "mx:mx.example.test", Domain: "example.test", Campaign: 1}

	for i := 0; i < 5; i++ {
		if w, err := l.Acquire(ctx, key, 1); err != nil || w != 0 {
			t.Fatalf("acquire %d within the burst: wait %v, err %v", i, w, err)
		}
	}
	w, err := l.Acquire(ctx, key, 1)
	if err != nil || w != 100*time.Millisecond {
		t.Fatalf("acquire past the burst: wait %v, err %v; want 100ms", w, err)
	}
	// A refused Acquire takes nothing: after 100ms exactly one goes.
	clk.Advance(100 * time.Millisecond)
	if w := acquire(t, l, key, 1); w != 0 {
		t.Fatalf("after 100ms: wait %v", w)
	}
	if w := acquire(t, l, key, 1); w == 0 {
		t.Fatal("second acquire after 100ms was granted")
	}
	// An idle bucket fills to the burst, no further.
	clk.Advance(time.Hour)
	got := 0
	for {
		if w := acquire(t, l, key, 1); w > 0 {
			break
		}
		got++
	}
	if got != 5 {
		t.Fatalf("after an idle hour %d granted, want the burst 5", got)
	}
	// Another domain has its own budget.
	if w := acquire(t, l, Key{Domain: "other.example.test"}, 5); w != 0 {
		t.Fatalf("other domain: wait %v", w)
	}
}

func TestAcquireMoreThanBurstWaits(t *testing.T) {
	clk := fakeclock.New()
	cfg := testConfig(clk)
	cfg.AlertReserve = -1
	cfg.MaxWait = Duration(2 * time.Second)
	l := newTestLimiter(t, cfg)
	start := clk.Now()
	// 20 recipients at 10/s with a burst of 5: 15 must accumulate, 1.5s.
	if w, err := l.Acquire(context.Background(), Key{Domain: "example.test"}, 20); err != nil || w != 0 {
		t.Fatalf("wait %v, err %v", w, err)
	}
	if slept := clk.Now().Sub(start); slept != 1500*time.Millisecond {
		t.Fatalf("Acquire slept %v, want 1.5s", slept)
	}
	// 30 more need 3s, beyond MaxWait: taken in pieces of the burst, each
	// waiting 0.5s, so the transaction still goes (it used to be refused
	// again at every retry, for ever).
	start = clk.Now()
	if w := acquire(t, l, Key{Domain: "example.test"}, 30); w != 0 {
		t.Fatalf("wait %v, want 0", w)
	}
	if slept := clk.Now().Sub(start); slept != 3*time.Second {
		t.Fatalf("Acquire of 30 slept %v, want 3s", slept)
	}
}

// TestLimitsMaxRcptsWithinBurst: transactions are cut to what one Acquire
// can take at once: the burst for alerts, the newsletter share of it for
// newsletters, or max_recipients when that is smaller.
func TestLimitsMaxRcptsWithinBurst(t *testing.T) {
	clk := fakeclock.New()
	cfg := testConfig(clk)
	cfg.Domain = Limits{Rate: 20, Burst: 20, MaxRcpts: 100}
	cfg.Domains = map[string]Limits{"few.example.test": {MaxRcpts: 10}}
	l := newTestLimiter(t, cfg)
	for _, c := range []struct {
		key  Key
		want int
	}{
		{Key{Domain: "example.test"}, 16},
		{Key{Domain: "example.test", Alert: true}, 20},
		{Key{Domain: "few.example.test"}, 10},
		{Key{Route: "smtp://relay.example.test"}, 0}, // through a relay: no domain limits, no rate
	} {
		if got := l.Limits(c.key).MaxRcpts; got != c.want {
			t.Errorf("Limits(%+v).MaxRcpts = %d, want %d", c.key, got, c.want)
		}
	}
}

// simulate acquires greedily for the keys given (newsletter first, then
// alert) for d in 10ms steps and counts the recipients each got.
func simulate(t *testing.T, l *Limiter, clk *fakeclock.Clock, news, alert *Key, d time.Duration) (nn, na int) {
	t.Helper()
	for end := clk.Now().Add(d); clk.Now().Before(end); clk.Advance(10 * time.Millisecond) {
		for i := 0; news != nil; i++ {
			if i == 10000 {
				t.Fatal("newsletters never refused")
			}
			if w := acquire(t, l, *news, 1); w > 0 {
				break
			}
			nn++
		}
		for i := 0; alert != nil; i++ {
			if i == 10000 {
				t.Fatal("alerts never refused")
			}
			if w := acquire(t, l, *alert, 1); w > 0 {
				break
			}
			na++
		}
	}
	return nn, na
}

func TestAlertReserve(t *testing.T) {
	clk := fakeclock.New()
	cfg := testConfig(clk)
	cfg.Domain = Limits{Rate: 100, Burst: 10}
	l := newTestLimiter(t, cfg)
	key := Key{Domain: "example.test", Campaign: 7}
	akey := Key{Domain: "example.test", Campaign: 8, Alert: true}

	// Newsletters alone get 80% of the rate: 800 in 10s, plus a burst.
	news, _ := simulate(t, l, clk, &key, nil, 10*time.Second)
	if news < 790 || news > 810 {
		t.Fatalf("newsletters alone got %d in 10s at 100/s with 20%% reserved, want ~800", news)
	}
	// With alerts running too, the total is the full rate and alerts go
	// first, though newsletters ask first every step: newsletters only get
	// what alerts leave of their 80%.
	news, alert := simulate(t, l, clk, &key, &akey, 10*time.Second)
	if total := news + alert; total < 990 || total > 1010 {
		t.Fatalf("total %d in 10s, want ~1000", total)
	}
	if alert < 980 {
		t.Fatalf("alerts got %d of %d, want nearly all", alert, news+alert)
	}
	// Alerts alone use all of it.
	_, alert = simulate(t, l, clk, nil, &akey, 10*time.Second)
	if alert < 990 {
		t.Fatalf("alerts alone got %d in 10s, want ~1000", alert)
	}
}

func TestSuspendAndRecover(t *testing.T) {
	clk := fakeclock.New()
	cfg := testConfig(clk)
	cfg.AlertReserve = -1
	l := newTestLimiter(t, cfg)
	ctx := context.Background()
	key := Key{Domain: "example.test"}
	scope := "domain:example.test"

	l.Observe(key, &smtp.Error{Reply: smtp.Reply{Code: 421, Text: "too busy, try again in 2 minutes"}, Command: "MAIL"})
	w, err := l.Acquire(ctx, key, 1)
	if err != nil || w != 2*time.Minute {
		t.Fatalf("suspended: wait %v, err %v; want 2m", w, err)
	}
	if st := l.mem.state(scope); st.factor != 0.25 || st.rule != "421" || st.reason == "" {
		t.Fatalf("state after 421: %+v", st)
	}
	// Other destinations go on.
	if w := acquire(t, l, Key{Domain: "fine.example.test"}, 1); w != 0 {
		t.Fatalf("other domain suspended too: %v", w)
	}
	clk.Advance(2 * time.Minute)
	if w := acquire(t, l, key, 1); w != 0 {
		t.Fatalf("after the suspension: wait %v", w)
	}
	// Recovery: x1.5 per 30s interval of good replies, capped at 1.
	want := []float64{0.25, 0.375, 0.5625, 0.84375, 1, 1}
	for i, f := range want {
		if got := l.mem.state(scope).factor; got != f {
			t.Fatalf("step %d: factor %v, want %v", i, got, f)
		}
		clk.Advance(30 * time.Second)
		l.Observe(key, nil)
	}
	// A bad reply during recovery holds it again.
	l.Observe(key, errors.New("dial tcp 192.0.2.1:25: connect: connection refused"))
	if got := l.mem.state(scope).factor; got != 0.5 {
		t.Fatalf("after a refusal: factor %v, want 0.5", got)
	}
	clk.Advance(time.Minute)
	l.Observe(key, nil)
	if got := l.mem.state(scope).factor; got != 0.5 {
		t.Fatalf("recovered during the 2m hold: factor %v", got)
	}
}

func TestSlowCompoundsOncePerSecond(t *testing.T) {
	clk := fakeclock.New()
	l := newTestLimiter(t, testConfig(clk))
	key := Key{Domain: "example.test"}
	refused := errors.New("connection refused")
	for i := 0; i < 10; i++ {
		l.Observe(key, refused) // ten connections failing at once
	}
	if got := l.mem.state("domain:example.test").factor; got != 0.5 {
		t.Fatalf("factor %v after one burst of refusals, want 0.5", got)
	}
	clk.Advance(time.Second)
	l.Observe(key, refused)
	if got := l.mem.state("domain:example.test").factor; got != 0.25 {
		t.Fatalf("factor %v after a second refusal, want 0.25", got)
	}
	for i := 0; i < 10; i++ {
		clk.Advance(time.Second)
		l.Observe(key, refused)
	}
	if got := l.mem.state("domain:example.test").factor; got != 0.05 {
		t.Fatalf("factor %v, want the floor 0.05", got)
	}
}

func TestSlowedRateApplies(t *testing.T) {
	clk := fakeclock.New()
	cfg := testConfig(clk)
	cfg.AlertReserve = -1
	cfg.Domain = Limits{Rate: 100, Burst: 1}
	l := newTestLimiter(t, cfg)
	key := Key{Domain: "example.test"}
	l.Observe(key, &smtp.Error{Reply: smtp.Reply{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "Too many connections"}})
	news, _ := simulate(t, l, clk, &key, nil, 10*time.Second)
	if news < 495 || news > 505 {
		t.Fatalf("slowed to half of 100/s: %d in 10s, want ~500", news)
	}
}

func TestDomainGroups(t *testing.T) {
	clk := fakeclock.New()
	cfg, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.NowFunc = clk.Now
	cfg.Logger = slog.New(slog.DiscardHandler)
	lookups := 0
	cfg.MXHostsFunc = MXHosts(func(ctx context.Context, domain string) ([]*net.MX, error) {
		lookups++
		switch domain {
		case "corp.example.test":
			return []*net.MX{{Host: "aspmx.l.google.com.", Pref: 1}, {Host: "alt1.aspmx.l.google.com.", Pref: 5}}, nil
		case "a.example.test", "b.example.test":
			return []*net.MX{{Host: "mx2.example.test", Pref: 10}, {Host: "MX1.example.test.", Pref: 10}}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: domain, IsNotFound: true}
	})
	l := newTestLimiter(t, cfg)
	ctx := context.Background()
	tests := []struct{ domain, scope string }{
		{"gmail.com", "domain:gmail"},
		{"hotmail.co.uk", "domain:microsoft"},
		{"yahoo.fr", "domain:yahoo"},
		{"icloud.com", "domain:apple"},
		{"corp.example.test", "domain:gmail"},
		{"a.example.test", "domain:mx:mx1.example.test,mx2.example.test"},
		{"b.example.test", "domain:mx:mx1.example.test,mx2.example.test"},
		{"nxdomain.example.test", "domain:nxdomain.example.test"},
	}
	for _, tt := range tests {
		if got := l.domainScope(ctx, tt.domain).name; got != tt.scope {
			t.Errorf("%s: scope %s, want %s", tt.domain, got, tt.scope)
		}
	}
	n := lookups
	l.domainScope(ctx, "a.example.test")
	if lookups != n {
		t.Errorf("MX lookup not cached")
	}
	if lim := l.Limits(Key{Domain: "corp.example.test"}); lim.Rate != 100 || lim.MaxConns != 20 || lim.MaxRcpts != 80 {
		t.Errorf("Limits(corp.example.test) = %+v, want gmail's (80 recipients: the newsletter share of its burst)", lim)
	}
	if lim := l.Limits(Key{Domain: "icloud.com", Alert: true}); lim.MaxRcpts != 10 {
		t.Errorf("Limits(icloud.com) = %+v, want max 10 recipients (the burst, below max_recipients 50)", lim)
	}
}

// Through a relay the destination scopes apply only when asked for: the
// relay shapes per destination itself, and its replies are about itself.
func TestDomainLimitsViaRelay(t *testing.T) {
	relay := Key{Route: "smtp://relay.example.test:587", Domain: "slow.example.test"}
	for _, via := range []bool{false, true} {
		clk := fakeclock.New()
		cfg := testConfig(clk)
		cfg.AlertReserve = -1
		cfg.DomainLimitsViaRelay = via
		cfg.Rules = []Rule{{Name: "busy", Codes: []int{421}, Action: Suspend, Scope: "domain"}}
		l := newTestLimiter(t, cfg)
		acquire(t, l, relay, 1) // slow.example.test's burst is 1
		limited := acquire(t, l, relay, 1) > 0
		if limited != via {
			t.Errorf("DomainLimitsViaRelay %v: second recipient to slow.example.test limited = %v", via, limited)
		}
		// A rule with scope "domain" acts on the relay when the domain's
		// scope does not apply through it, else on the domain alone.
		l.Observe(relay, &smtp.Error{Reply: smtp.Reply{Code: 421, Text: "service busy"}})
		other := Key{Route: relay.Route, Domain: "other.example.test"}
		if w := acquire(t, l, other, 1); (w == 0) != via {
			t.Errorf("DomainLimitsViaRelay %v: after a 421 from the relay, other domain waits %v", via, w)
		}
	}
	// Direct delivery always counts against the destination.
	clk := fakeclock.New()
	l := newTestLimiter(t, testConfig(clk))
	mx := Key{Route: "mx:mx.slow.example.test", Domain: "slow.example.test", Alert: true}
	acquire(t, l, mx, 1)
	if acquire(t, l, mx, 1) == 0 {
		t.Error("direct delivery past the domain's burst was granted")
	}
}

func TestAcquireConn(t *testing.T) {
	clk := fakeclock.New()
	cfg := testConfig(clk)
	cfg.Domain = Limits{Rate: 100, MaxConns: 2, ConnRate: 10}
	l := newTestLimiter(t, cfg)
	ctx := context.Background()
	key := Key{Route: "mx:mx.example.test", Domain: "example.test"}

	r1, w, err := l.AcquireConn(ctx, key)
	if err != nil || w != 0 {
		t.Fatalf("first: %v %v", w, err)
	}
	clk.Advance(time.Second)
	r2, w, _ := l.AcquireConn(ctx, key)
	if w != 0 {
		t.Fatalf("second: wait %v", w)
	}
	if _, w, _ := l.AcquireConn(ctx, key); w == 0 {
		t.Fatal("third connection over max_connections 2 granted")
	}
	if n := l.InFlight("domain:example.test"); n != 2 {
		t.Fatalf("in flight %d, want 2", n)
	}
	r1()
	r1() // idempotent
	clk.Advance(time.Second)
	r3, w, _ := l.AcquireConn(ctx, key)
	if w != 0 {
		t.Fatalf("after a release: wait %v", w)
	}
	// conn_rate 10/s with burst 10... a new connection right away is fine,
	// but the rate holds: release all and open 11 in one instant.
	r2()
	r3()
	cfg.Domain.MaxConns = 100
	l = newTestLimiter(t, cfg)
	granted := 0
	for i := 0; i < 20; i++ {
		if _, w, _ := l.AcquireConn(ctx, key); w == 0 {
			granted++
		}
	}
	if granted != 10 {
		t.Fatalf("%d connections opened in one instant at conn_rate 10/s, want 10", granted)
	}
}

func TestConfig(t *testing.T) {
	cfg, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AlertReserve != 0.2 || len(cfg.Groups) != 4 || len(cfg.Rules) < 10 {
		t.Fatalf("default config: reserve %v, %d groups, %d rules", cfg.AlertReserve, len(cfg.Groups), len(cfg.Rules))
	}
	if lim, _ := cfg.ScopeLimits("domain:gmail"); lim.Rate != 100 || lim.MaxRcpts != 100 {
		t.Fatalf("gmail limits %+v", lim)
	}
	if lim, _ := cfg.ScopeLimits("domain:unknown.example.test"); lim.Rate != 20 {
		t.Fatalf("default domain limits %+v", lim)
	}
	bad := []struct{ name, toml string }{
		{"unknown key", "alert_reserv = 0.1"},
		{"syntax", "alert_reserve = = 1"},
		{"reserve", "alert_reserve = 1.5"},
		{"duration", `max_wait = "soon"`},
		{"group name", "[[mx_group]]\ndomains = [\"x\"]"},
		{"pattern", "[[mx_group]]\nname = \"x\"\ndomains = [\"[\"]"},
		{"rule", "[[rule]]\naction = \"nap\""},
	}
	for _, b := range bad {
		if _, err := ParseConfig("test.toml", []byte(b.toml)); err == nil {
			t.Errorf("%s: parsed %q", b.name, b.toml)
		} else if !strings.Contains(err.Error(), "test.toml") {
			t.Errorf("%s: error %q does not name the file", b.name, err)
		}
	}
	// Overrides inherit what they leave out; negative means unlimited.
	cfg, err = ParseConfig("t.toml", []byte(`
[domain]
rate = 20
max_connections = 5
[domains."big.example.test"]
rate = 200
[domains."free.example.test"]
rate = -1
`))
	if err != nil {
		t.Fatal(err)
	}
	if lim, _ := cfg.ScopeLimits("domain:big.example.test"); lim.Rate != 200 || lim.MaxConns != 5 {
		t.Errorf("override: %+v", lim)
	}
	if lim, _ := cfg.ScopeLimits("domain:free.example.test"); lim.Rate != 0 || lim.MaxConns != 5 {
		t.Errorf("unlimited override: %+v", lim)
	}
}

// BenchmarkAcquireLocal is the cost of one Acquire within budget, in
// process.
func BenchmarkAcquireLocal(b *testing.B) {
	l, err := New(Config{Route: Limits{Rate: 1e9, Burst: 1e9}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	key := Key{Route: "smtp://relay.example.test:587", Domain: "example.test", Campaign: 1}
	ctx := context.Background()
	for b.Loop() {
		if _, err := l.Acquire(ctx, key, 1); err != nil {
			b.Fatal(err)
		}
	}
}

// TestNoReserveFromFile: alert_reserve = -1 in a file reserves nothing,
// although New applies WithDefaults a second time (it used to turn -1
// into 0 and then into the default 0.2).
func TestNoReserveFromFile(t *testing.T) {
	cfg, err := ParseConfig("bench.toml", []byte("alert_reserve = -1\n[route]\nrate = 200\nburst = 20\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	l := newTestLimiter(t, cfg)
	key := Key{Route: "smtp://relay.example.test:587"}
	if got := l.Limits(key).MaxRcpts; got != 20 {
		t.Fatalf("newsletter MaxRcpts %d, want the whole burst 20 (no newsletter share)", got)
	}
	if bs := l.rateBuckets(l.scopes(context.Background(), key), false); len(bs) != 1 {
		t.Fatalf("buckets %+v, want the route's alone", bs)
	}
}
