// Package worker runs blaster's River workers: send_batch jobs from the
// alert and newsletter queues, delivered through a transport.Transport.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/message"
	"github.com/blaster-mail/blaster/transport"
)

// Config configures a worker process.
type Config struct {
	// Pool is the database; required. Size it for River (a few
	// connections) plus one per concurrent send job.
	Pool *pgxpool.Pool
	// Transport delivers the mail; required. Stop closes it.
	Transport transport.Transport
	// Throttle paces sends; nil sends as fast as the transport takes it.
	Throttle Throttle
	// Logger; default slog.Default().
	Logger *slog.Logger
	// NewsletterWorkers is how many newsletter batches run at once in this
	// process (each holds one SMTP connection). Default 16.
	NewsletterWorkers int
	// AlertWorkers is how many alert batches run at once. Default 8.
	AlertWorkers int
	// JobTimeout bounds one run of a batch; River cancels a run that takes
	// longer. A run starts no transaction after BatchBudget and snoozes
	// for the rest, so only a hanging transaction reaches the timeout.
	// Default 30 seconds.
	JobTimeout time.Duration
	// BatchBudget is how long a run of a batch starts new transactions;
	// the recipients left are put back and the job snoozed for 0 to go on
	// in a new run. Default JobTimeout / 2; at most JobTimeout.
	BatchBudget time.Duration
	// RescueAfter is how long a run may last before it is taken for dead
	// (its worker was killed): the sweep then takes over its sending rows
	// and enqueues its batch again, and River's rescuer retries its job.
	// It must exceed JobTimeout. Default JobTimeout + 15 seconds (45 s): a
	// killed worker's batches go on within RescueAfter plus the sweep
	// interval (RescueAfter / 4, at most 10 s), under a minute.
	RescueAfter time.Duration
	// FlushEvery is how long a chunk of personalized transactions aims to
	// last: its recipients are marked sending together, and their outcomes
	// written with the marking of the next chunk, one round trip per chunk.
	// A killed worker leaves at most one chunk unknown per batch in flight.
	// Default 50 ms.
	FlushEvery time.Duration
	// DBRetry is how long a batch in flight waits for a lost database (a
	// PostgreSQL restart) to record its outcomes, retrying. Default 1 minute.
	DBRetry time.Duration
	// PauseRecheck is how soon a batch of a paused campaign is tried
	// again. Default 1 second.
	PauseRecheck time.Duration
	// FetchInterval is how often an idle worker polls for jobs on top of
	// LISTEN/NOTIFY. Default River's (1s); tests may lower it.
	FetchInterval time.Duration
	// FetchCooldown is the least time between two fetches of jobs. River's
	// default (100 ms) caps a process at NewsletterWorkers batches per
	// 100 ms: 160 batches/s, 16,000 recipients/s of a same-for-all
	// campaign whose batches take a few milliseconds each. Default 20 ms
	// (80,000 recipients/s, more than one PostgreSQL records); lower costs
	// more while a campaign is paused, as its batches are fetched and
	// snoozed again as fast as the cooldown lets them. At most
	// FetchInterval.
	FetchCooldown time.Duration
	// NowFunc is the clock; default time.Now.
	NowFunc func() time.Time
	// Secrets build messages: the one-click unsubscribe key.
	Secrets campaign.Secrets
	// Metrics, when set, is told every batch's recorded outcomes, and
	// wraps every job when it is a River worker middleware. Nil: none.
	Metrics Metrics
	// SpoolDir is where New makes the worker's spool directory (removed by
	// Stop): campaigns' attachments copied from the database, and messages
	// larger than SpoolOver, which transactions stream from there. New
	// also removes the spool directories there of workers that died
	// without removing theirs (spooldir.go). Default os.TempDir().
	SpoolDir string
	// SpoolOver is the size in bytes past which a message is built into a
	// spool file instead of memory. Default message.DefaultSpoolOver (1 MiB).
	SpoolOver int
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.NewsletterWorkers <= 0 {
		c.NewsletterWorkers = 16
	}
	if c.AlertWorkers <= 0 {
		c.AlertWorkers = 8
	}
	if c.JobTimeout <= 0 {
		c.JobTimeout = 30 * time.Second
	}
	if c.BatchBudget <= 0 || c.BatchBudget > c.JobTimeout {
		c.BatchBudget = c.JobTimeout / 2
	}
	if c.RescueAfter <= 0 {
		c.RescueAfter = c.JobTimeout + 15*time.Second
	}
	if c.FlushEvery <= 0 {
		c.FlushEvery = 50 * time.Millisecond
	}
	if c.DBRetry <= 0 {
		c.DBRetry = time.Minute
	}
	if c.FetchCooldown <= 0 {
		c.FetchCooldown = defaultFetchCooldown
	}
	if c.FetchInterval > 0 && c.FetchCooldown > c.FetchInterval {
		c.FetchCooldown = c.FetchInterval
	}
	if c.PauseRecheck <= 0 {
		c.PauseRecheck = time.Second
	}
	if c.NowFunc == nil {
		c.NowFunc = time.Now
	}
	if c.SpoolOver <= 0 {
		c.SpoolOver = message.DefaultSpoolOver
	}
	return c
}

func (c Config) validate() error {
	if c.Pool == nil {
		return errors.New("worker: Config.Pool is required")
	}
	if c.Transport == nil {
		return errors.New("worker: Config.Transport is required")
	}
	if c.RescueAfter <= c.JobTimeout {
		return fmt.Errorf("worker: RescueAfter (%s) must exceed JobTimeout (%s): a run still alive would be taken for dead",
			c.RescueAfter, c.JobTimeout)
	}
	return nil
}

// Worker is one worker process's River client and send workers.
type Worker struct {
	cfg    Config
	client *river.Client[pgx.Tx]
	send   *sendWorker

	stopSweep context.CancelFunc
	swept     chan struct{} // closed when the sweeper has returned
}

// defaultFetchCooldown is Config.FetchCooldown's default.
const defaultFetchCooldown = 20 * time.Millisecond

// PoolSize is how many database connections a worker process with cfg's
// job concurrency wants: one per send job (each claims and records through
// the pool) plus four for River (its LISTEN connection, the producer's
// fetches, the leader's maintenance) and the throttle's leases.
func PoolSize(cfg Config) int {
	cfg = cfg.WithDefaults()
	return cfg.NewsletterWorkers + cfg.AlertWorkers + 4
}

// sweepInterval is how often a worker takes over the sending rows of dead
// runs and closes campaigns left running by a worker that died after
// recording their last batch: a quarter of RescueAfter, at most 10 s.
func (c Config) sweepInterval() time.Duration {
	return min(10*time.Second, c.RescueAfter/4)
}

// New builds a worker; Start runs it.
func New(cfg Config) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	spool, err := makeSpool(cfg.SpoolDir, cfg.Logger)
	if err != nil {
		return nil, err
	}
	workers := river.NewWorkers()
	sw := &sendWorker{
		pool:      cfg.Pool,
		transport: cfg.Transport,
		throttle:  cfg.Throttle,
		logger:    cfg.Logger,
		now:       cfg.NowFunc,
		timeout:   cfg.JobTimeout,
		budget:    cfg.BatchBudget,
		flush:     cfg.FlushEvery,
		dbRetry:   cfg.DBRetry,
		pauseWait: cfg.PauseRecheck,
		secrets:   cfg.Secrets,
		metrics:   cfg.Metrics,
		campaigns: map[int64]*compiled{},
		spool:     spool,
		spoolOver: cfg.SpoolOver,
	}
	river.AddWorker(workers, sw)
	rcfg := &river.Config{
		Queues: map[string]river.QueueConfig{
			campaign.QueueAlert:      {MaxWorkers: cfg.AlertWorkers},
			campaign.QueueNewsletter: {MaxWorkers: cfg.NewsletterWorkers},
		},
		Workers:              workers,
		JobTimeout:           cfg.JobTimeout,
		RescueStuckJobsAfter: cfg.RescueAfter,
		Logger:               cfg.Logger.With("component", "river"),
	}
	if mw, ok := cfg.Metrics.(rivertype.WorkerMiddleware); ok {
		rcfg.Middleware = []rivertype.Middleware{mw}
	}
	rcfg.FetchCooldown = cfg.FetchCooldown
	if cfg.FetchInterval > 0 {
		rcfg.FetchPollInterval = cfg.FetchInterval
	}
	client, err := river.NewClient(riverpgxv5.New(cfg.Pool), rcfg)
	if err != nil {
		spool.remove()
		return nil, fmt.Errorf("creating River client: %w", err)
	}
	return &Worker{cfg: cfg, client: client, send: sw}, nil
}

// Start begins working jobs; it returns at once.
func (w *Worker) Start(ctx context.Context) error {
	if err := w.client.Start(ctx); err != nil {
		return fmt.Errorf("starting River client: %w", err)
	}
	sweepCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.stopSweep, w.swept = cancel, make(chan struct{})
	go w.sweep(sweepCtx)
	return nil
}

func (w *Worker) sweep(ctx context.Context) {
	defer close(w.swept)
	t := time.NewTicker(w.cfg.sweepInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := recoverOrphans(ctx, w.cfg.Pool, w.client, w.cfg.RescueAfter); err != nil && ctx.Err() == nil {
				w.cfg.Logger.Warn("recovering deliveries of dead runs", "err", err)
			} else if n > 0 {
				w.cfg.Logger.Info("took over deliveries of dead runs", "recipients", n)
			}
			if n, err := campaign.FinishAllDone(ctx, w.cfg.Pool); err != nil && ctx.Err() == nil {
				w.cfg.Logger.Warn("sweeping finished campaigns", "err", err)
			} else if n > 0 {
				w.cfg.Logger.Info("closed finished campaigns", "count", n)
			}
			if err := w.send.forgetFinished(ctx); err != nil && ctx.Err() == nil {
				w.cfg.Logger.Warn("dropping finished campaigns' spool files", "err", err)
			}
		}
	}
}

// Stop stops fetching jobs, lets the batches in flight finish their SMTP
// transactions and record their outcomes, then closes the transport (QUIT
// on every connection). If ctx ends first, running jobs are cancelled:
// their unfinished recipients stay in the ledger to be resumed.
func (w *Worker) Stop(ctx context.Context) error {
	if w.stopSweep != nil {
		w.stopSweep()
		<-w.swept
	}
	err := w.client.Stop(ctx)
	if err != nil {
		err = errors.Join(err, w.client.StopAndCancel(context.WithoutCancel(ctx)))
	}
	return errors.Join(err, w.cfg.Transport.Close(), w.send.closeSpool())
}

// Client is the River client, for inserting jobs from the same process.
func (w *Worker) Client() *river.Client[pgx.Tx] { return w.client }

// InsertClient returns a River client that only inserts jobs (no queues),
// for commands such as `campaign start`.
func InsertClient(pool *pgxpool.Pool) (*river.Client[pgx.Tx], error) {
	c, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		return nil, fmt.Errorf("creating River client: %w", err)
	}
	return c, nil
}
