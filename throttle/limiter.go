package throttle

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limiter paces transactions and connections per scope and backs off on
// the replies it is told about. It is safe for concurrent use. Its methods
// Acquire and Observe make it the worker's Throttle.
type Limiter struct {
	cfg Config
	now func() time.Time
	st  store
	pg  *pgStore  // nil for local budgets
	mem *memStore // nil for shared budgets

	owner string // this process in throttle_conns

	mu        sync.Mutex
	mx        map[string]mxEntry   // domain -> its budget
	recoverAt map[string]time.Time // scope -> next recovery attempt
	suspended map[string]time.Time // scope -> own suspensions, seen at once
	inflight  map[string]int       // scope -> connections this process holds
	others    map[string]int       // scope -> connections other processes hold

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// mxEntry is a domain's resolved budget, cached.
type mxEntry struct {
	ref     scopeRef
	expires time.Time
}

// scopeRef is one scope of a key with its limits.
type scopeRef struct {
	name string
	lim  Limits
}

// New returns a Limiter for cfg (WithDefaults applied).
func New(cfg Config) (*Limiter, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("throttle config: %w", err)
	}
	l := &Limiter{
		cfg:       cfg,
		now:       cfg.NowFunc,
		mx:        map[string]mxEntry{},
		recoverAt: map[string]time.Time{},
		suspended: map[string]time.Time{},
		inflight:  map[string]int{},
		others:    map[string]int{},
	}
	if l.now == nil {
		l.now = time.Now
	}
	if cfg.Pool != nil {
		l.pg = newPGStore(cfg.Pool, cfg.LeaseFraction, time.Duration(cfg.LeaseTTL), cfg.NowFunc == nil)
		l.st = l.pg
	} else {
		l.mem = newMemStore()
		l.st = l.mem
	}
	host, _ := os.Hostname()
	var b [4]byte
	rand.Read(b[:])
	l.owner = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	return l, nil
}

// Config returns the configuration in force (defaults applied).
func (l *Limiter) Config() Config { return l.cfg }

// Acquire takes budget for one transaction of n recipients under key from
// every scope of key: global, route, destination and campaign; newsletters
// (not key.Alert) also from the newsletter share of each. It waits up to
// Config.MaxWait for budget; when the budget is further off, or a scope is
// suspended, it takes nothing and returns how long to wait instead.
//
// No bucket holds more than its burst, so n above the smallest burst
// (Limits(key).MaxRcpts, which the send worker keeps to) is taken in
// burst-sized pieces, each waiting up to MaxWait: such a transaction waits
// for its tokens to accumulate. When a later piece is refused, the pieces
// already taken stay spent (the throttle errs on the slow side).
func (l *Limiter) Acquire(ctx context.Context, key Key, n int) (time.Duration, error) {
	refs := l.scopes(ctx, key)
	bs := l.rateBuckets(refs, key.Alert)
	piece := maxTake(bs)
	for n > 0 {
		k := n
		if piece > 0 {
			k = min(n, piece)
		}
		if wait, err := l.take(ctx, bs, refs, k); err != nil || wait > 0 {
			return wait, err
		}
		n -= k
	}
	return 0, nil
}

// maxTake is the most tokens one take from bs can get at once: the
// smallest burst among the buckets that limit it; 0 when none does.
func maxTake(bs []bucket) int {
	m := 0
	for _, b := range bs {
		if !b.debit && (m == 0 || b.burst < m) {
			m = b.burst
		}
	}
	return m
}

// take runs the store's take until it grants, or the wait exceeds MaxWait.
func (l *Limiter) take(ctx context.Context, bs []bucket, refs []scopeRef, n int) (time.Duration, error) {
	names := make([]string, len(refs))
	for i, r := range refs {
		names[i] = r.name
	}
	now := l.now()
	if w := l.ownSuspension(names, now); w > 0 {
		return w, nil
	}
	deadline := now.Add(time.Duration(l.cfg.MaxWait))
	for {
		ok, wait, err := l.st.take(ctx, bs, names, n, deadline.Sub(now), now)
		if err != nil {
			return 0, err
		}
		if ok {
			if wait > 0 {
				if err := l.cfg.SleepFunc(ctx, wait); err != nil {
					return 0, err
				}
			}
			return 0, nil
		}
		if wait > deadline.Sub(now) {
			return wait, nil
		}
		if err := l.cfg.SleepFunc(ctx, wait); err != nil {
			return 0, err
		}
		now = l.now()
	}
}

// ownSuspension is how long the longest suspension this process decided
// among scopes still runs.
func (l *Limiter) ownSuspension(scopes []string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var w time.Duration
	for _, s := range scopes {
		if until, ok := l.suspended[s]; ok {
			if until.After(now) {
				w = max(w, until.Sub(now))
			} else {
				delete(l.suspended, s)
			}
		}
	}
	return w
}

// rateBuckets are the message-rate buckets of refs: each limited scope's
// total and its newsletter share, (1-AlertReserve) of it. Newsletters need
// tokens from both; alerts from the total only, and are charged to the
// newsletter share as well (see bucket.debit): newsletters never use the
// reserve, and use only what alerts leave of the rest, so an alert blast
// goes out first, at the full rate.
func (l *Limiter) rateBuckets(refs []scopeRef, alert bool) []bucket {
	var bs []bucket
	for _, r := range refs {
		if r.lim.Rate <= 0 {
			continue
		}
		b := bucket{name: r.name, scope: r.name, rate: r.lim.Rate, burst: r.lim.burst()}
		bs = append(bs, b)
		if res := l.cfg.AlertReserve; res > 0 {
			bs = append(bs, bucket{name: r.name + "/bulk", scope: r.name, rate: b.rate * (1 - res),
				burst: max(1, int(float64(b.burst)*(1-res))), debit: alert})
		}
	}
	return bs
}

// Observe feeds back a transaction's outcome: nil after a success, an
// *smtp.Error, or a connection error. Errors that a back-off rule matches
// suspend or slow the key's destination (or route); successes let slowed
// scopes recover, one step per Config.RecoveryInterval.
func (l *Limiter) Observe(key Key, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := l.now()
	if err == nil {
		l.maybeRecover(ctx, key, now)
		return
	}
	d := l.Decide(err)
	if d.Action != Suspend && d.Action != Slow {
		return
	}
	ref, ok := l.adaptScope(ctx, key, d.Scope)
	if !ok {
		return
	}
	a := adaptation{min: l.cfg.MinFactor, rule: d.Rule, reason: d.Reason, holdFor: d.For}
	switch d.Action {
	case Suspend:
		a.suspendFor, a.mult, a.cap = d.For, 1, l.cfg.RecoveryStart
	case Slow:
		a.mult, a.cap = 1, 1
		if d.Factor > 0 {
			a.mult = d.Factor
		}
		if d.Rate > 0 && ref.lim.Rate > 0 {
			a.cap = min(1, d.Rate/ref.lim.Rate)
		}
	}
	if a.suspendFor > 0 {
		l.mu.Lock()
		if u := now.Add(a.suspendFor); u.After(l.suspended[ref.name]) {
			l.suspended[ref.name] = u
		}
		l.mu.Unlock()
	}
	log := l.cfg.Logger.With("scope", ref.name, "rule", d.Rule, "action", string(d.Action), "for", d.For, "reason", d.Reason)
	if l.pg != nil {
		// Write the scope's buckets, so that status knows its configured
		// rate even when nothing was sent under it yet (a relay refusing
		// every connection).
		if err := l.pg.ensure(ctx, l.rateBuckets([]scopeRef{ref}, false), now); err != nil {
			log.Error("throttle: recording back-off", "err", err)
			return
		}
	}
	if err := l.st.adapt(ctx, ref.name, a, now); err != nil {
		log.Error("throttle: recording back-off", "err", err)
		return
	}
	log.Warn("throttle: backing off")
}

// adaptScope is the scope a rule acts on: the destination, the route, or
// for "auto" the route when it is a relay and the destination otherwise.
func (l *Limiter) adaptScope(ctx context.Context, key Key, which string) (scopeRef, bool) {
	if l.routeDecides(key, which) {
		return l.routeScope(key.Route), true
	}
	if key.Domain != "" {
		return l.domainScope(ctx, key.Domain), true
	}
	if key.Route != "" {
		return l.routeScope(key.Route), true
	}
	return scopeRef{}, false
}

// routeDecides reports whether a rule acting on which ("auto", "route",
// "domain") adapts key's route rather than its destination: "route"
// always, "auto" through a relay, and anything through a relay that the
// destination scopes do not apply to (see Config.DomainLimitsViaRelay).
func (l *Limiter) routeDecides(key Key, which string) bool {
	if key.Route == "" {
		return false
	}
	return which == "route" || isRelay(key.Route) && (which == "auto" || !l.cfg.DomainLimitsViaRelay)
}

// isRelay tells a relay route from direct delivery ("mx:HOST") and the
// pickup directory ("pickup:DIR").
func isRelay(route string) bool {
	return !strings.HasPrefix(route, "mx:") && !strings.HasPrefix(route, "pickup:")
}

// maybeRecover lets the key's slowed scopes take a recovery step, asking
// the store at most four times per interval per scope.
func (l *Limiter) maybeRecover(ctx context.Context, key Key, now time.Time) {
	var due []string
	l.mu.Lock()
	for _, which := range []string{"domain", "route"} {
		ref, ok := l.adaptScopeLocked(key, which)
		if !ok || slices.Contains(due, ref.name) {
			continue
		}
		if now.Before(l.recoverAt[ref.name]) {
			continue
		}
		l.recoverAt[ref.name] = now.Add(time.Duration(l.cfg.RecoveryInterval) / 4)
		due = append(due, ref.name)
	}
	l.mu.Unlock()
	if len(due) == 0 {
		return
	}
	if err := l.st.recover(ctx, due, l.cfg.RecoveryStep, time.Duration(l.cfg.RecoveryInterval), now); err != nil {
		l.cfg.Logger.Error("throttle: recovering", "scopes", due, "err", err)
	}
}

// adaptScopeLocked is adaptScope from the cache only; l.mu is held.
func (l *Limiter) adaptScopeLocked(key Key, which string) (scopeRef, bool) {
	if l.routeDecides(key, which) {
		return l.routeScope(key.Route), true
	}
	if key.Domain != "" {
		if e, ok := l.mx[key.Domain]; ok {
			return e.ref, true
		}
		return l.staticDomainScope(key.Domain), true
	}
	if key.Route != "" {
		return l.routeScope(key.Route), true
	}
	return scopeRef{}, false
}

// Limits returns the limits that hold for key: the tightest of its scopes'.
// The MX transport takes its connection caps (MaxConns, MaxMsgsPerConn) and
// the send worker its transaction size (MaxRcpts) from here. MaxRcpts is
// also kept to the most one Acquire under key can take at once (the
// smallest burst of its rate buckets, the newsletter share's for
// newsletters): a bigger transaction would wait for tokens while holding
// its connection, and land on the server as a burst above the rate.
func (l *Limiter) Limits(key Key) Limits {
	var out Limits
	refs := l.scopes(context.Background(), key)
	for _, r := range refs {
		out = out.tighter(r.lim)
	}
	return out.tighter(Limits{MaxRcpts: maxTake(l.rateBuckets(refs, key.Alert))})
}

// scopes lists key's scopes: global, route, destination (not through a
// relay unless Config.DomainLimitsViaRelay), campaign.
func (l *Limiter) scopes(ctx context.Context, key Key) []scopeRef {
	refs := []scopeRef{{name: "global", lim: l.cfg.Global.merge(Limits{})}}
	if key.Route != "" {
		refs = append(refs, l.routeScope(key.Route))
	}
	if key.Domain != "" && (key.Route == "" || !isRelay(key.Route) || l.cfg.DomainLimitsViaRelay) {
		refs = append(refs, l.domainScope(ctx, key.Domain))
	}
	if key.Campaign != 0 {
		id := strconv.FormatInt(key.Campaign, 10)
		refs = append(refs, scopeRef{name: "campaign:" + id, lim: l.cfg.Campaigns[id].merge(l.cfg.Campaign)})
	}
	return refs
}

func (l *Limiter) routeScope(route string) scopeRef {
	return scopeRef{name: "route:" + route, lim: l.cfg.Routes[route].merge(l.cfg.Route)}
}

// ScopeLimits returns the configured limits of a scope by its name as
// `blaster throttle status` shows it ("global", "route:NAME",
// "domain:NAME", "campaign:ID"), and whether the name has that form.
func (c Config) ScopeLimits(scope string) (Limits, bool) {
	kind, name, _ := strings.Cut(scope, ":")
	switch kind {
	case "global":
		return c.Global.merge(Limits{}), true
	case "route":
		return c.Routes[name].merge(c.Route), true
	case "campaign":
		return c.Campaigns[name].merge(c.Campaign), true
	case "domain":
		if lim, ok := c.Domains[name]; ok {
			return lim.merge(c.Domain), true
		}
		for _, g := range c.Groups {
			if g.Name == name {
				return g.Limits.merge(c.Domain), true
			}
		}
		return c.Domain.merge(Limits{}), true
	}
	return Limits{}, false
}

// staticDomainScope resolves a domain without DNS: an explicit [domains]
// entry, then a group's domain patterns, else the domain alone.
func (l *Limiter) staticDomainScope(domain string) scopeRef {
	if lim, ok := l.cfg.Domains[domain]; ok {
		return scopeRef{name: "domain:" + domain, lim: lim.merge(l.cfg.Domain)}
	}
	for _, g := range l.cfg.Groups {
		for _, p := range g.Domains {
			if ok, _ := path.Match(p, domain); ok {
				return scopeRef{name: "domain:" + g.Name, lim: g.Limits.merge(l.cfg.Domain)}
			}
		}
	}
	return scopeRef{name: "domain:" + domain, lim: l.cfg.Domain.merge(Limits{})}
}

// domainScope resolves a destination domain to its budget: statically
// when it can; else, with MXHostsFunc, to the group one of whose MX
// patterns matches an MX host, or to a budget shared by every domain with
// the same MX hosts ("domain:mx:HOST,HOST"). Results are cached for
// MXCacheTTL (a failed lookup for a minute, as the domain alone).
func (l *Limiter) domainScope(ctx context.Context, domain string) scopeRef {
	now := l.now()
	l.mu.Lock()
	e, ok := l.mx[domain]
	l.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.ref
	}
	ref := l.staticDomainScope(domain)
	ttl := time.Duration(l.cfg.MXCacheTTL)
	if _, explicit := l.cfg.Domains[domain]; !explicit && ref.name == "domain:"+domain && l.cfg.MXHostsFunc != nil {
		hosts, err := l.cfg.MXHostsFunc(ctx, domain)
		if err != nil {
			ttl = time.Minute
			l.cfg.Logger.Debug("throttle: MX lookup for grouping failed", "domain", domain, "err", err)
		} else if len(hosts) > 0 {
			ref = l.mxScope(hosts)
		}
	}
	l.mu.Lock()
	l.mx[domain] = mxEntry{ref: ref, expires: now.Add(ttl)}
	l.mu.Unlock()
	return ref
}

func (l *Limiter) mxScope(hosts []string) scopeRef {
	norm := make([]string, 0, len(hosts))
	for _, h := range hosts {
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if h != "" && !slices.Contains(norm, h) {
			norm = append(norm, h)
		}
	}
	for _, g := range l.cfg.Groups {
		for _, p := range g.MX {
			for _, h := range norm {
				if ok, _ := path.Match(p, h); ok {
					return scopeRef{name: "domain:" + g.Name, lim: g.Limits.merge(l.cfg.Domain)}
				}
			}
		}
	}
	slices.Sort(norm)
	return scopeRef{name: "domain:mx:" + strings.Join(norm, ","), lim: l.cfg.Domain.merge(Limits{})}
}

// AcquireConn reserves a connection under key: within every scope's
// MaxConns (counting the connections other processes published, see
// Start) and ConnRate. release gives the slot back; call it when the
// connection closes. When no slot is free, or a scope is suspended, it
// returns how long to wait instead.
func (l *Limiter) AcquireConn(ctx context.Context, key Key) (release func(), retryAfter time.Duration, err error) {
	refs := l.scopes(ctx, key)
	l.mu.Lock()
	for _, r := range refs {
		if r.lim.MaxConns > 0 && l.inflight[r.name]+l.others[r.name] >= r.lim.MaxConns {
			l.mu.Unlock()
			return nil, time.Duration(l.cfg.SyncInterval), nil
		}
	}
	for _, r := range refs {
		l.inflight[r.name]++
	}
	l.mu.Unlock()
	release = sync.OnceFunc(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, r := range refs {
			if l.inflight[r.name]--; l.inflight[r.name] <= 0 {
				delete(l.inflight, r.name)
			}
		}
	})
	var bs []bucket
	for _, r := range refs {
		if r.lim.ConnRate > 0 {
			bs = append(bs, bucket{name: r.name + "/conn", scope: r.name, rate: r.lim.ConnRate,
				burst: max(1, int(math.Ceil(r.lim.ConnRate)))})
		}
	}
	wait, err := l.take(ctx, bs, refs, 1)
	if err != nil || wait > 0 {
		release()
		return nil, wait, err
	}
	return release, 0, nil
}

// InFlight returns the connections this process holds under scope.
func (l *Limiter) InFlight(scope string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inflight[scope]
}

// MXHosts adapts an MX lookup (net.Resolver.LookupMX, the MX transport's
// LookupMXFunc) to Config.MXHostsFunc, so grouping and delivery share one
// resolver: cfg.MXHostsFunc = throttle.MXHosts(net.DefaultResolver.LookupMX).
func MXHosts(lookup func(ctx context.Context, domain string) ([]*net.MX, error)) func(ctx context.Context, domain string) ([]string, error) {
	return func(ctx context.Context, domain string) ([]string, error) {
		mxs, err := lookup(ctx, domain)
		if err != nil {
			return nil, fmt.Errorf("looking up MX of %s: %w", domain, err)
		}
		hosts := make([]string, 0, len(mxs))
		for _, mx := range mxs {
			hosts = append(hosts, mx.Host)
		}
		return hosts, nil
	}
}
