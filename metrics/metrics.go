package metrics

import (
	"context"
	"errors"
	"log/slog"
	"path"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/blaster-mail/blaster/throttle"
)

// Other is the label value of the domains and routes past the caps.
const Other = "other"

// Config configures Metrics.
type Config struct {
	// Pool, when set, is read at scrape time: River's jobs per queue and
	// state, and the shared throttle's scopes. Nil: neither is exported.
	Pool *pgxpool.Pool
	// Throttle is the throttle configuration in force, for the domain
	// labels of its [domains] and [[mx_group]] entries and the configured
	// rates and caps of its scopes. Nil: no domain is named by the
	// configuration.
	Throttle *throttle.Config
	// MaxDomains is how many destination domains, beyond those the
	// throttle configuration names, get a label value of their own (first
	// come, first served); the rest are "other". Default 50.
	MaxDomains int
	// MaxRoutes is the same cap for routes (relays, or MX hosts in direct
	// delivery). Default 50.
	MaxRoutes int
	// ScrapeTimeout bounds each database read of one scrape. Default 2s.
	ScrapeTimeout time.Duration
	// ThrottleWindow is how recently a throttle scope must have been used
	// to be exported (suspended and slowed scopes always are). Default 1m.
	ThrottleWindow time.Duration
	// Logger reports failed scrape-time reads; default slog.Default().
	Logger *slog.Logger
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.MaxDomains <= 0 {
		c.MaxDomains = 50
	}
	if c.MaxRoutes <= 0 {
		c.MaxRoutes = 50
	}
	if c.ScrapeTimeout <= 0 {
		c.ScrapeTimeout = 2 * time.Second
	}
	if c.ThrottleWindow <= 0 {
		c.ThrottleWindow = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Metrics holds a worker process's metrics in a registry of its own.
type Metrics struct {
	river.MiddlewareDefaults // Work makes it a River worker middleware

	cfg      Config
	registry *prometheus.Registry
	domains  *labeler
	routes   *labeler

	messages     *prometheus.CounterVec
	recipients   *prometheus.CounterVec
	replies      *prometheus.CounterVec
	sessionFails *prometheus.CounterVec
	transaction  *prometheus.HistogramVec
	batch        *prometheus.HistogramVec
	snoozes      *prometheus.CounterVec
	backoffs     *prometheus.CounterVec
	scrapeErrors *prometheus.CounterVec

	mu    sync.Mutex
	pools []poolSource // transports with connection pools, set by Transport
}

// New builds the metrics and registers them, with Go's runtime and
// process collectors, in a new registry.
func New(cfg Config) *Metrics {
	cfg = cfg.WithDefaults()
	m := &Metrics{
		cfg:      cfg,
		registry: prometheus.NewRegistry(),
		domains:  &labeler{max: cfg.MaxDomains, seen: map[string]bool{}, named: configDomain(cfg.Throttle)},
		routes:   &labeler{max: cfg.MaxRoutes, seen: map[string]bool{}},
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blaster_messages_total",
			Help: "SMTP transactions (one message, one or more recipients) by outcome: sent, deferred, bounced, unknown (the reply to the data was lost), refused (no recipient accepted, no data sent).",
		}, []string{"route", "domain", "outcome"}),
		recipients: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blaster_recipients_total",
			Help: "Recipients by the outcome recorded in the ledger: sent, deferred, bounced, expired, unknown.",
		}, []string{"route", "domain", "outcome"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blaster_smtp_replies_total",
			Help: "SMTP replies by stage (rcpt, data, other), code and enhanced status class.subject (RFC 3463, e.g. 5.1; empty when the server sent none).",
		}, []string{"route", "stage", "code", "enhanced"}),
		sessionFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blaster_sessions_failed_total",
			Help: "Failures to get a session (connect, greeting, TLS, AUTH) for a batch.",
		}, []string{"route", "domain"}),
		transaction: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "blaster_smtp_transaction_seconds",
			Help:    "Time of one SMTP transaction: MAIL, the RCPTs and the data, pipelined.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12), // 1 ms to 60 s
		}, []string{"route"}),
		batch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "blaster_batch_seconds",
			Help:    "Time of one send_batch job, by queue and result: completed, snoozed, cancelled, failed.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 12), // 10 ms to 10 min
		}, []string{"queue", "result"}),
		snoozes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blaster_throttle_snoozes_total",
			Help: "Transactions the throttle refused (a scope suspended or out of budget): the batch was put back and snoozed.",
		}, []string{"route", "domain"}),
		backoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blaster_throttle_backoffs_total",
			Help: "Back-off decisions this process took on a reply or connection error, by action (suspend, slow) and rule.",
		}, []string{"action", "rule"}),
		scrapeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blaster_scrape_errors_total",
			Help: "Scrape-time reads that failed or timed out, by source (queue, throttle).",
		}, []string{"source"}),
	}
	m.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.messages, m.recipients, m.replies, m.sessionFails, m.transaction, m.batch, m.snoozes, m.backoffs,
		m.scrapeErrors, &scrapeCollector{m: m})
	return m
}

// Registry is the registry to serve (promhttp.HandlerFor) or to add to.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Recorded counts recipients by the ledger state recorded for them
// (worker.Metrics): call it once the outcomes are committed.
func (m *Metrics) Recorded(key throttle.Key, states map[string]int) {
	route, domain := m.routes.label(key.Route), m.domains.label(key.Domain)
	for state, n := range states {
		m.recipients.WithLabelValues(route, domain, state).Add(float64(n))
	}
}

// Work times a River job and counts how it ended; as a
// rivertype.WorkerMiddleware it wraps every job the worker runs.
func (m *Metrics) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	began := time.Now()
	err := doInner(ctx)
	result := "failed"
	var snooze *rivertype.JobSnoozeError
	var cancel *rivertype.JobCancelError
	switch {
	case err == nil:
		result = "completed"
	case errors.As(err, &snooze):
		result = "snoozed"
	case errors.As(err, &cancel):
		result = "cancelled"
	}
	m.batch.WithLabelValues(job.Queue, result).Observe(time.Since(began).Seconds())
	return err
}

var _ rivertype.WorkerMiddleware = (*Metrics)(nil)

// labeler bounds a label's values: names a configuration gives (named),
// then the first max distinct values seen, then Other.
type labeler struct {
	named func(string) (string, bool)
	max   int

	mu   sync.Mutex
	seen map[string]bool
}

// label returns v's label value, admitting v when there is room.
func (l *labeler) label(v string) string {
	if v == "" {
		return ""
	}
	if l.named != nil {
		if n, ok := l.named(v); ok {
			return n
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[v] {
		return v
	}
	if len(l.seen) >= l.max {
		return Other
	}
	l.seen[v] = true
	return v
}

// known returns v's label value without admitting it: false when v would
// be Other or has not been seen.
func (l *labeler) known(v string) (string, bool) {
	if l.named != nil {
		if n, ok := l.named(v); ok {
			return n, true
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return v, l.seen[v]
}

// configDomain names a domain after the throttle configuration: its
// [domains] entry, or the [[mx_group]] whose domain patterns match it, as
// the throttle's destination scopes do (without the MX lookup). Group
// names are their own names too, so that throttle scopes match.
func configDomain(cfg *throttle.Config) func(string) (string, bool) {
	if cfg == nil {
		return nil
	}
	return func(domain string) (string, bool) {
		if _, ok := cfg.Domains[domain]; ok {
			return domain, true
		}
		for _, g := range cfg.Groups {
			if g.Name == domain {
				return domain, true
			}
			for _, p := range g.Domains {
				if ok, _ := path.Match(p, domain); ok {
					return g.Name, true
				}
			}
		}
		return "", false
	}
}
