package transport

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/blaster-mail/blaster/pool"
	"github.com/blaster-mail/blaster/smtp"
)

// Defaults of MXOptions.
const (
	DefaultMXPort       = 25 // RFC 5321 §4.5.4.2 ("SMTP" well-known port)
	DefaultMXCacheTTL   = 5 * time.Minute
	DefaultReapInterval = 30 * time.Second
)

// MXOptions configures NewMX.
type MXOptions struct {
	// LookupMXFunc returns a domain's MX records. Default
	// net.DefaultResolver.LookupMX. Tests point MX records at loopback.
	LookupMXFunc func(ctx context.Context, domain string) ([]*net.MX, error)
	// LookupHostFunc returns a host's addresses (A and AAAA). Default
	// net.DefaultResolver.LookupHost.
	LookupHostFunc func(ctx context.Context, host string) ([]string, error)
	// Port is the TCP port dialed on every MX host. Default DefaultMXPort
	// (25); tests point it at loopback servers.
	Port int
	// LocalName is the EHLO name; default the host name.
	LocalName string
	// TLS is the STARTTLS policy. Default smtp.TLSOpportunistic (the zero
	// value): encrypted when the MX offers STARTTLS, plain otherwise.
	TLS smtp.TLSMode
	// TLSConfig is the base TLS configuration (RootCAs...); ServerName is
	// set to each MX host's name. Default: system roots, verified, so an
	// MX whose certificate does not verify is skipped like one that cannot
	// be reached. Many MX hosts on the Internet present self-signed or
	// mismatched certificates; an operator who wants Postfix's
	// "smtp_tls_security_level = may" (RFC 7435 opportunistic security:
	// encrypt, do not authenticate) sets InsecureSkipVerify here, knowingly.
	TLSConfig *tls.Config
	// Timeouts are the SMTP command timeouts; zero fields take the
	// client's RFC 5321 §4.5.3.2 defaults.
	Timeouts smtp.Timeouts
	// DialFunc opens TCP connections; default net.Dialer.
	DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)
	// CacheTTL is how long an MX answer (or a permanent failure: null MX,
	// no such domain) is reused. Go's resolver does not expose record
	// TTLs, so one TTL serves all. Default DefaultMXCacheTTL (5 min).
	// Transient DNS failures are never cached.
	CacheTTL time.Duration
	// RetryAfter is how long an MX host that could not be dialed (or
	// greeted with 4xx/5xx) is tried after the domain's other MX hosts.
	// Default DefaultRetryAfter (1 min).
	RetryAfter time.Duration
	// MaxConnsPerHost caps connections to one MX host; 0 means
	// pool.DefaultMaxConns.
	MaxConnsPerHost int
	// MaxMessages, IdleTimeout and CheckAfter are the pools' (see
	// pool.Config); 0 means the pool's default.
	MaxMessages             int
	IdleTimeout, CheckAfter time.Duration
	// ReapInterval is how often the one janitor goroutine closes idle
	// connections and drops empty pools. Default DefaultReapInterval (30s).
	ReapInterval time.Duration
	// Shuffle randomizes MX hosts of equal preference (RFC 5321 §5.1).
	// Default math/rand/v2's Shuffle.
	Shuffle func(n int, swap func(i, j int))
	// NowFunc is the clock for the cache, RetryAfter and the pools;
	// default time.Now.
	NowFunc func() time.Time
}

// MX delivers directly to each domain's MX hosts (RFC 5321 §5.1): in
// preference order, equal preferences shuffled, the domain itself as an
// implicit MX when it has no MX record, a permanent failure for a null MX
// (RFC 7505), and the next MX when one cannot be reached or greets with an
// error. One pool per MX host, shared by every domain it serves.
//
// Skipping a host that greets with 5xx and trying the next MX follows
// Postfix's smtp_skip_5xx_greeting (default yes).
type MX struct {
	opts MXOptions

	mu     sync.Mutex
	cache  map[string]*mxAnswer
	hosts  map[string]*mxHost
	closed bool

	stop chan struct{}
	done chan struct{}
}

var _ Transport = (*MX)(nil)

type mxAnswer struct {
	hosts   []string // MX host names, in the order to try
	err     error    // a permanent failure (null MX, no such domain)
	expires time.Time
}

type mxHost struct {
	name      string
	pool      *pool.Pool[*smtp.Client]
	downUntil time.Time // guarded by MX.mu
	lastUsed  time.Time // guarded by MX.mu
}

// NewMX returns a direct-to-MX transport and starts its janitor goroutine,
// which Close stops.
func NewMX(opts MXOptions) *MX {
	if opts.LookupMXFunc == nil {
		opts.LookupMXFunc = net.DefaultResolver.LookupMX
	}
	if opts.LookupHostFunc == nil {
		opts.LookupHostFunc = net.DefaultResolver.LookupHost
	}
	if opts.Port == 0 {
		opts.Port = DefaultMXPort
	}
	if opts.LocalName == "" {
		opts.LocalName = localName()
	}
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = DefaultMXCacheTTL
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = DefaultRetryAfter
	}
	if opts.ReapInterval <= 0 {
		opts.ReapInterval = DefaultReapInterval
	}
	if opts.Shuffle == nil {
		opts.Shuffle = rand.Shuffle
	}
	if opts.NowFunc == nil {
		opts.NowFunc = time.Now
	}
	m := &MX{
		opts:  opts,
		cache: make(map[string]*mxAnswer),
		hosts: make(map[string]*mxHost),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	go m.janitor()
	return m
}

// Session returns a connection to the first of domain's MX hosts that
// answers. Hosts that failed within RetryAfter are tried after the others.
// A null MX or a domain that does not exist is a permanent *smtp.Error
// (5xx, so smtp.Classify bounces); when every MX fails the error joins
// each host's.
func (m *MX) Session(ctx context.Context, domain string) (Session, error) {
	names, err := m.resolve(ctx, domain)
	if err != nil {
		return nil, err
	}
	now := m.opts.NowFunc()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, pool.ErrClosed
	}
	hosts := make([]*mxHost, 0, len(names))
	var down []*mxHost
	for _, n := range names {
		h := m.hostLocked(n)
		h.lastUsed = now
		if now.Before(h.downUntil) {
			down = append(down, h)
		} else {
			hosts = append(hosts, h)
		}
	}
	m.mu.Unlock()
	hosts = append(hosts, down...)

	var errs []error
	for _, h := range hosts {
		c, err := h.pool.Get(ctx)
		if err == nil {
			return &smtpSession{pool: h.pool, conn: c}, nil
		}
		if ctx.Err() != nil || errors.Is(err, pool.ErrClosed) {
			return nil, fmt.Errorf("delivering to %s via MX %s: %w", domain, h.name, err)
		}
		m.mu.Lock()
		h.downUntil = m.opts.NowFunc().Add(m.opts.RetryAfter)
		m.mu.Unlock()
		errs = append(errs, fmt.Errorf("MX %s: %w", h.name, err))
	}
	return nil, fmt.Errorf("delivering to %s: every MX host failed: %w", domain, errors.Join(errs...))
}

// Route is "mx:HOST" for the MX host domain's mail goes to first, or
// "mx:DOMAIN" when it cannot be resolved now. It resolves through the
// cache, waiting at most 10 seconds for DNS.
func (m *MX) Route(domain string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names, err := m.resolve(ctx, domain)
	if err != nil || len(names) == 0 {
		return "mx:" + normalizeDomain(domain)
	}
	return "mx:" + names[0]
}

// Close stops the janitor and closes every pool (QUIT on idle
// connections; those in use are QUIT when released).
func (m *MX) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	hosts := make([]*mxHost, 0, len(m.hosts))
	for _, h := range m.hosts {
		hosts = append(hosts, h)
	}
	m.mu.Unlock()
	close(m.stop)
	<-m.done
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Go(func() { _ = h.pool.Close() })
	}
	wg.Wait()
	return nil
}

// Stats returns each MX host's pool counters.
func (m *MX) Stats() map[string]pool.Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := make(map[string]pool.Stats, len(m.hosts))
	for n, h := range m.hosts {
		s[n] = h.pool.Stats()
	}
	return s
}

// janitor reaps idle connections and drops the pools of hosts unused for
// longer than the cache TTL that have nothing open: one goroutine for
// every pool, instead of one per pool.
func (m *MX) janitor() {
	defer close(m.done)
	t := time.NewTicker(m.opts.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.reap()
		}
	}
}

func (m *MX) reap() {
	now := m.opts.NowFunc()
	m.mu.Lock()
	defer m.mu.Unlock()
	for n, h := range m.hosts {
		if h.pool.Reap() == 0 && now.Sub(h.lastUsed) > m.opts.CacheTTL && !now.Before(h.downUntil) {
			_ = h.pool.Close() // nothing open: returns at once
			delete(m.hosts, n)
		}
	}
	for d, a := range m.cache {
		if !now.Before(a.expires) {
			delete(m.cache, d)
		}
	}
}

// hostLocked returns the pool of MX host name, creating it. m.mu is held.
func (m *MX) hostLocked(name string) *mxHost {
	if h, ok := m.hosts[name]; ok {
		return h
	}
	h := &mxHost{name: name}
	cfg := smtp.Config{
		LocalName:  m.opts.LocalName,
		ServerName: name,
		TLS:        m.opts.TLS,
		Timeouts:   m.opts.Timeouts,
		DialFunc:   m.opts.DialFunc,
	}
	if m.opts.TLSConfig != nil {
		cfg.TLSConfig = m.opts.TLSConfig.Clone()
		cfg.TLSConfig.ServerName = name
	}
	p, err := pool.New(pool.Config[*smtp.Client]{
		Dial:        func(ctx context.Context) (*smtp.Client, error) { return m.dialHost(ctx, name, cfg) },
		MaxConns:    m.opts.MaxConnsPerHost,
		MaxMessages: m.opts.MaxMessages,
		IdleTimeout: m.opts.IdleTimeout,
		CheckAfter:  m.opts.CheckAfter,
		NowFunc:     m.opts.NowFunc,
	})
	if err != nil {
		// Dial is set and MaxConns defaults to a positive value: only a
		// negative MaxConnsPerHost gets here, and NewMX's caller chose it.
		panic(fmt.Sprintf("transport: MX pool for %s: %v", name, err))
	}
	h.pool = p
	m.hosts[name] = h
	return h
}

// dialHost resolves an MX host's addresses and dials them in turn.
func (m *MX) dialHost(ctx context.Context, name string, cfg smtp.Config) (*smtp.Client, error) {
	addrs, err := m.opts.LookupHostFunc(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("resolving MX host %s: %w", name, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolving MX host %s: no address", name)
	}
	var errs []error
	for _, a := range addrs {
		c, err := smtp.Dial(ctx, net.JoinHostPort(a, strconv.Itoa(m.opts.Port)), cfg)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// resolve returns domain's MX host names in the order to try, from the
// cache when fresh.
func (m *MX) resolve(ctx context.Context, domain string) ([]string, error) {
	domain = normalizeDomain(domain)
	if domain == "" {
		return nil, errors.New("MX lookup: empty domain")
	}
	now := m.opts.NowFunc()
	m.mu.Lock()
	a, ok := m.cache[domain]
	m.mu.Unlock()
	if ok && now.Before(a.expires) {
		return a.hosts, a.err
	}
	hosts, err := m.lookup(ctx, domain)
	var se *smtp.Error
	if err == nil || errors.As(err, &se) { // answers and permanent failures
		m.mu.Lock()
		m.cache[domain] = &mxAnswer{hosts: hosts, err: err, expires: now.Add(m.opts.CacheTTL)}
		m.mu.Unlock()
	}
	return hosts, err
}

// lookup asks DNS for domain's MX hosts (RFC 5321 §5.1).
func (m *MX) lookup(ctx context.Context, domain string) ([]string, error) {
	mxs, err := m.opts.LookupMXFunc(ctx, domain)
	if len(mxs) == 0 {
		if err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("MX lookup for %s: %w", domain, err)
		}
		// No MX record: the domain itself is the implicit MX, if it has
		// an address (RFC 5321 §5.1).
		addrs, herr := m.opts.LookupHostFunc(ctx, domain)
		switch {
		case herr == nil && len(addrs) > 0:
			return []string{domain}, nil
		case herr == nil || isNotFound(herr):
			return nil, &smtp.Error{
				Reply: smtp.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 2},
					Text: "domain " + domain + " has no MX record and no address (RFC 5321 §5.1)"},
				Command: "MX lookup", Server: domain,
			}
		default:
			return nil, fmt.Errorf("address lookup for %s (implicit MX): %w", domain, herr)
		}
	}
	// Go returns the valid records along with an error when some were
	// malformed; the valid ones are used.
	type rec struct {
		host string
		pref uint16
	}
	recs := make([]rec, 0, len(mxs))
	null := false
	for _, mx := range mxs {
		h := normalizeDomain(mx.Host)
		if h == "" { // "." : null MX
			null = true
			continue
		}
		recs = append(recs, rec{h, mx.Pref})
	}
	if len(recs) == 0 && null {
		return nil, &smtp.Error{
			Reply: smtp.Reply{Code: 556, Enhanced: smtp.EnhancedCode{5, 1, 10},
				Text: "domain " + domain + " accepts no mail (null MX, RFC 7505)"},
			Command: "MX lookup", Server: domain,
		}
	}
	slices.SortStableFunc(recs, func(a, b rec) int { return cmp.Compare(a.pref, b.pref) })
	// Shuffle each run of equal preference (RFC 5321 §5.1).
	for i := 0; i < len(recs); {
		j := i + 1
		for j < len(recs) && recs[j].pref == recs[i].pref {
			j++
		}
		run := recs[i:j]
		m.opts.Shuffle(len(run), func(a, b int) { run[a], run[b] = run[b], run[a] })
		i = j
	}
	hosts := make([]string, 0, len(recs))
	for _, r := range recs {
		if !slices.Contains(hosts, r.host) {
			hosts = append(hosts, r.host)
		}
	}
	return hosts, nil
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

func normalizeDomain(d string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
}
