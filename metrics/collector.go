package metrics

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/throttle"
)

var (
	poolConnsDesc = prometheus.NewDesc("blaster_pool_connections",
		"Connections of this process's pools by route and state: open (idle + in_use), idle, in_use, dialing, waiting (Gets blocked at the cap).",
		[]string{"route", "state"}, nil)
	poolCreatedDesc = prometheus.NewDesc("blaster_pool_connections_created_total",
		"Connections dialed by this process's pools.", []string{"route"}, nil)
	poolReusedDesc = prometheus.NewDesc("blaster_pool_connections_reused_total",
		"Sessions served by an idle pooled connection.", []string{"route"}, nil)
	queueJobsDesc = prometheus.NewDesc("blaster_queue_jobs",
		"River jobs by queue and state, read from the database at scrape time (all workers).",
		[]string{"queue", "state"}, nil)
	queueOldestDesc = prometheus.NewDesc("blaster_queue_oldest_job_seconds",
		"Age of the oldest River job in each queue and state.", []string{"queue", "state"}, nil)
	throttleRateDesc = prometheus.NewDesc("blaster_throttle_rate",
		"Configured rate of a throttle scope in recipients per second (0: unlimited).", []string{"scope"}, nil)
	throttleCurrentDesc = prometheus.NewDesc("blaster_throttle_current_rate",
		"Rate in force after back-off, in recipients per second.", []string{"scope"}, nil)
	throttleSuspendedDesc = prometheus.NewDesc("blaster_throttle_suspended",
		"1 while a throttle scope is suspended.", []string{"scope"}, nil)
	throttleConnsDesc = prometheus.NewDesc("blaster_throttle_connections",
		"Connections in flight under a throttle scope, across all workers.", []string{"scope"}, nil)
	throttleSuspendedScopesDesc = prometheus.NewDesc("blaster_throttle_suspended_scopes",
		"Suspended throttle scopes by kind (global, route, domain, campaign), labelled or not.", []string{"kind"}, nil)
)

// scrapeCollector reads the pools, River's jobs and the throttle's scopes
// when Prometheus scrapes.
type scrapeCollector struct{ m *Metrics }

func (c *scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConnsDesc, poolCreatedDesc, poolReusedDesc, queueJobsDesc, queueOldestDesc,
		throttleRateDesc, throttleCurrentDesc, throttleSuspendedDesc, throttleConnsDesc, throttleSuspendedScopesDesc} {
		ch <- d
	}
}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	c.collectPools(ch)
	if c.m.cfg.Pool == nil {
		return
	}
	c.collectQueues(ch)
	c.collectThrottle(ch)
}

// collectPools sums the pools' counters per route label (routes past the
// cap add up under "other").
func (c *scrapeCollector) collectPools(ch chan<- prometheus.Metric) {
	type sums struct{ open, idle, inUse, dialing, waiting, created, reused float64 }
	byRoute := map[string]*sums{}
	c.m.mu.Lock()
	sources := append([]poolSource(nil), c.m.pools...)
	c.m.mu.Unlock()
	for _, src := range sources {
		for name, st := range src.stats() {
			route := c.m.routes.label(src.route(name))
			s := byRoute[route]
			if s == nil {
				s = &sums{}
				byRoute[route] = s
			}
			s.open += float64(st.Open)
			s.idle += float64(st.Idle)
			s.inUse += float64(st.InUse)
			s.dialing += float64(st.Dialing)
			s.waiting += float64(st.Waiting)
			s.created += float64(st.Created)
			s.reused += float64(st.Reused)
		}
	}
	for route, s := range byRoute {
		for state, v := range map[string]float64{"open": s.open, "idle": s.idle, "in_use": s.inUse,
			"dialing": s.dialing, "waiting": s.waiting} {
			ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, v, route, state)
		}
		ch <- prometheus.MustNewConstMetric(poolCreatedDesc, prometheus.CounterValue, s.created, route)
		ch <- prometheus.MustNewConstMetric(poolReusedDesc, prometheus.CounterValue, s.reused, route)
	}
}

func (c *scrapeCollector) failed(source string, err error) {
	c.m.scrapeErrors.WithLabelValues(source).Inc()
	c.m.cfg.Logger.Warn("metrics: scrape-time read failed", "source", source, "err", err)
}

func (c *scrapeCollector) collectQueues(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.m.cfg.ScrapeTimeout)
	defer cancel()
	counts, err := QueueCounts(ctx, c.m.cfg.Pool)
	if err != nil {
		c.failed("queue", err)
		return
	}
	for _, q := range counts {
		ch <- prometheus.MustNewConstMetric(queueJobsDesc, prometheus.GaugeValue, float64(q.Jobs), q.Queue, q.State)
		ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, q.OldestSeconds, q.Queue, q.State)
	}
}

// QueueCount is the River jobs of one queue in one state.
type QueueCount struct {
	Queue, State string
	Jobs         int
	// OldestSeconds is the age of the oldest of them, on the database's
	// clock (the one that wrote created_at).
	OldestSeconds float64
}

// QueueCounts counts river_job by queue and state (only the pairs that
// have jobs): River has no count API.
func QueueCounts(ctx context.Context, q campaign.Querier) ([]QueueCount, error) {
	rows, err := q.Query(ctx, `
		SELECT queue, state::text, count(*), extract(epoch FROM now() - min(created_at))::float8
		FROM river_job GROUP BY queue, state ORDER BY queue, state`)
	if err != nil {
		return nil, fmt.Errorf("counting river_job by queue and state: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueueCount, error) {
		var c QueueCount
		err := r.Scan(&c.Queue, &c.State, &c.Jobs, &c.OldestSeconds)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("counting river_job by queue and state: %w", err)
	}
	return out, nil
}

// collectThrottle exports the scopes used within ThrottleWindow whose
// name has a label value: global, routes and destinations within the caps
// (a scope is not admitted here: only the traffic this process sent
// admits a route or domain). Campaign scopes and those past the caps are
// only counted, when suspended, in blaster_throttle_suspended_scopes.
func (c *scrapeCollector) collectThrottle(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.m.cfg.ScrapeTimeout)
	defer cancel()
	scopes, err := throttle.Status(ctx, c.m.cfg.Pool, c.m.cfg.Throttle, c.m.cfg.ThrottleWindow)
	if err != nil {
		c.failed("throttle", err)
		return
	}
	suspended := map[string]int{"global": 0, "route": 0, "domain": 0, "campaign": 0}
	for _, s := range scopes {
		kind, name, _ := strings.Cut(s.Scope, ":")
		if s.SuspendedUntil != nil {
			suspended[kind]++
		}
		label, ok := "global", kind == "global"
		switch kind {
		case "route":
			name, ok = c.m.routes.known(name)
			label = "route:" + name
		case "domain":
			name, ok = c.m.domains.known(name)
			label = "domain:" + name
		}
		if !ok {
			continue
		}
		susp := 0.0
		if s.SuspendedUntil != nil {
			susp = 1
		}
		ch <- prometheus.MustNewConstMetric(throttleRateDesc, prometheus.GaugeValue, s.ConfiguredRate, label)
		ch <- prometheus.MustNewConstMetric(throttleCurrentDesc, prometheus.GaugeValue, s.CurrentRate, label)
		ch <- prometheus.MustNewConstMetric(throttleSuspendedDesc, prometheus.GaugeValue, susp, label)
		ch <- prometheus.MustNewConstMetric(throttleConnsDesc, prometheus.GaugeValue, float64(s.InFlight), label)
	}
	for kind, n := range suspended {
		ch <- prometheus.MustNewConstMetric(throttleSuspendedScopesDesc, prometheus.GaugeValue, float64(n), kind)
	}
}
