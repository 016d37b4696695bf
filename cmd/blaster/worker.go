package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/blaster-mail/blaster/message"
	"github.com/blaster-mail/blaster/metrics"
	"github.com/blaster-mail/blaster/returnpath"
	"github.com/blaster-mail/blaster/throttle"
	"github.com/blaster-mail/blaster/unsubscribe"
	"github.com/blaster-mail/blaster/worker"
)

func newWorkerCmd(a *app) *cobra.Command {
	var (
		tf            transportFlags
		cfg           worker.Config
		stopTimeout   time.Duration
		unsubKeyFile  string
		throttleFile  string
		bounceKeyFile string
		mo            metricsOpts
		pprofAddr     string
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run send workers until SIGINT or SIGTERM",
		Long: `Run River workers that deliver campaign batches. Run as many worker processes,
on as many machines, as you like against one database.

Mail goes through the relays given with --relay (or $BLASTER_RELAY, comma
separated; failover in that order), directly to each domain's MX hosts with
--mx, or into a pickup directory with --pickup. The relay password comes from
$BLASTER_RELAY_PASSWORD or --relay-password-file, never from the command line.

With --metrics-addr the worker serves Prometheus metrics at /metrics (messages
and recipients by outcome, route and destination domain; SMTP replies;
transaction and batch latency; throttle rates, suspensions and snoozes; pool
connections; River's jobs per queue and state) and /healthz on that address.
Logs are JSON lines on stderr (text on a terminal); delivery lines carry the
campaign, batch, route and domain, never a password or a message body.

On SIGINT or SIGTERM the worker stops taking batches, finishes the SMTP
transactions in flight, records their outcomes, QUITs and exits.

The worker runs Go's garbage collector at GOGC=400 unless $GOGC says
otherwise: its heap is small and steady, and collecting less often saves CPU.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			setWorkerGC()
			a.dbConns = worker.PoolSize(cfg)
			pool, err := a.db(ctx)
			if err != nil {
				return err
			}
			if pprofAddr != "" {
				srv, bound, err := servePprof(ctx, pprofAddr)
				if err != nil {
					return err
				}
				a.logger.Info("serving pprof", "addr", bound.String())
				defer srv.Shutdown(ctx)
			}
			if err := tf.loadFile(cmd.Flags()); err != nil {
				return err
			}
			// One connection per batch this process runs at once: alert
			// batches must not wait for connections newsletter batches hold.
			tf.relayConns = cfg.NewsletterWorkers + cfg.AlertWorkers
			tr, err := tf.build(a)
			if err != nil {
				return err
			}
			if key, err := unsubscribe.LoadKey(unsubKeyFile, os.Getenv); err == nil {
				cfg.Secrets.UnsubscribeKey = key
			} else if unsubKeyFile != "" {
				return err
			}
			// Campaigns with a return path need the key; others do not.
			if key, err := returnpath.LoadKey(bounceKeyFile, os.Getenv); err == nil {
				cfg.Secrets.BounceKey = key
			} else if bounceKeyFile != "" || os.Getenv(returnpath.KeyEnv) != "" {
				return err // given, but unusable
			}
			tcfg, err := throttle.LoadConfig(throttleFile)
			if err != nil {
				return err
			}
			tcfg.Pool = pool
			tcfg.Logger = a.logger
			if tf.mx {
				tcfg.MXHostsFunc = throttle.MXHosts(net.DefaultResolver.LookupMX)
			}
			lim, err := throttle.New(tcfg)
			if err != nil {
				return err
			}
			if err := lim.Start(ctx); err != nil {
				return err
			}
			defer lim.Stop()
			cfg.Throttle = lim
			cfg.Pool = pool
			cfg.Transport = tr
			cfg.Logger = a.logger
			var srv *httpServer
			if mo.addr != "" {
				m := metrics.New(metrics.Config{Pool: pool, Throttle: &tcfg, MaxDomains: mo.maxDomains,
					MaxRoutes: mo.maxRoutes, Logger: a.logger})
				cfg.Metrics, cfg.Transport, cfg.Throttle = m, m.Transport(tr), m.Throttle(lim)
				if srv, err = a.serveMetrics(ctx, mo.addr, m, pool); err != nil {
					tr.Close()
					return err
				}
				defer srv.Shutdown(ctx)
			}
			w, err := worker.New(cfg)
			if err != nil {
				tr.Close()
				return err
			}
			// River's work contexts derive from Start's: detach it from the
			// signal so SIGTERM means the soft Stop below, not cancelled SMTP.
			if err := w.Start(context.WithoutCancel(ctx)); err != nil {
				tr.Close()
				return err
			}
			a.logger.Info("worker started", "transport", tf.describe(),
				"newsletter_workers", cfg.NewsletterWorkers, "alert_workers", cfg.AlertWorkers)
			var failed <-chan struct{}
			if srv != nil {
				failed = srv.Done()
			}
			var serveErr error
			select {
			case <-ctx.Done():
			case <-failed:
				serveErr = fmt.Errorf("metrics: %w", srv.Err())
				a.logger.Error("stopping: the metrics listener failed", "err", serveErr)
			}
			a.logger.Info("stopping: finishing transactions in flight")
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			if err := w.Stop(stopCtx); err != nil {
				return errors.Join(serveErr, fmt.Errorf("stopping worker: %w", err))
			}
			a.logger.Info("worker stopped")
			return serveErr
		},
	}
	f := cmd.Flags()
	tf.register(f)
	f.IntVar(&cfg.NewsletterWorkers, "newsletter-workers", 16, "newsletter batches sent at once (one connection each)")
	f.IntVar(&cfg.AlertWorkers, "alert-workers", 8, "alert batches sent at once")
	f.DurationVar(&cfg.JobTimeout, "job-timeout", 30*time.Second,
		"longest one run of a batch may take (it starts no transaction after half of it, and goes on in a new run)")
	f.DurationVar(&cfg.RescueAfter, "rescue-after", 0,
		"how long a run may last before it is taken for dead and its batch resumed (default job timeout + 15s; must exceed it)")
	f.DurationVar(&cfg.FlushEvery, "flush-every", 50*time.Millisecond,
		"personalized batches write outcomes (and mark the next recipients sending) about this often")
	f.DurationVar(&cfg.JobTimeout, "batch-timeout", 30*time.Second, "old name of --job-timeout")
	f.MarkDeprecated("batch-timeout", "use --job-timeout")
	f.DurationVar(&stopTimeout, "stop-timeout", 2*time.Minute, "how long to wait for transactions in flight on SIGINT/SIGTERM")
	f.StringVar(&throttleFile, "throttle-config", os.Getenv("BLASTER_THROTTLE_CONFIG"),
		"TOML file of rates, connection caps and back-off rules (default: the shipped throttle/default.toml)")
	f.StringVar(&unsubKeyFile, "unsubscribe-key-file", "", "file with the one-click unsubscribe token key (else $BLASTER_UNSUBSCRIBE_KEY)")
	f.StringVar(&bounceKeyFile, bounceKeyFlag, "", bounceKeyUsage)
	f.DurationVar(&cfg.FetchInterval, "poll-interval", 0, "how often to poll for jobs besides LISTEN/NOTIFY (default 1s)")
	f.StringVar(&cfg.SpoolDir, "spool-dir", "",
		"where the worker makes its spool directory (campaign attachments, large messages; removed on exit) (default $TMPDIR or /tmp)")
	f.IntVar(&cfg.SpoolOver, "spool-threshold", message.DefaultSpoolOver,
		"messages larger than this many bytes are built into a spool file and streamed from it, not held in memory")
	f.DurationVar(&cfg.FetchCooldown, "fetch-cooldown", 0, "least time between two fetches of jobs (default 20ms)")
	f.StringVar(&pprofAddr, "pprof-addr", "", "serve Go's pprof profiles (/debug/pprof/, CPU profiles up to 30s) on this address, e.g. 127.0.0.1:6060; never expose it")
	mo.register(f)
	return cmd
}

// metricsOpts are the worker's --metrics-* flags.
type metricsOpts struct {
	addr                  string
	maxDomains, maxRoutes int
}

func (o *metricsOpts) register(f *pflag.FlagSet) {
	f.StringVar(&o.addr, "metrics-addr", os.Getenv("BLASTER_METRICS_ADDR"),
		"serve Prometheus metrics at http://ADDR/metrics and a health check at /healthz (e.g. 127.0.0.1:9464; default off)")
	f.IntVar(&o.maxDomains, "metrics-max-domains", 50,
		`destination domains with a metrics label of their own, besides the throttle config's [domains] and groups; the rest are "other"`)
	f.IntVar(&o.maxRoutes, "metrics-max-routes", 50, `routes (relays, MX hosts) with a metrics label of their own; the rest are "other"`)
}

// serveMetrics serves m's registry at /metrics and the database check at
// /healthz on addr, until the returned server is shut down.
func (a *app) serveMetrics(ctx context.Context, addr string, m *metrics.Metrics, pool *pgxpool.Pool) (*httpServer, error) {
	ln, err := listenHTTP(addr, a.listening)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metricsHandler(m.Registry()))
	mux.HandleFunc("GET /healthz", healthz(pool, a.logger))
	a.logger.Info("serving metrics", "addr", ln.Addr().String())
	return startHTTP(context.WithoutCancel(ctx), ln, mux), nil
}

// workerGCPercent is the worker's GOGC unless the environment sets one. Its
// live heap is small and steady (about 20 MB whatever the campaign size), so
// collecting at 5x that instead of 2x costs about 20 MB of RSS and saves
// about a tenth of the worker's CPU on personalized sending (BENCHMARKS.md,
// "End to end").
const workerGCPercent = 400

func setWorkerGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(workerGCPercent)
	}
}
