package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/throttle"
	"github.com/blaster-mail/blaster/unsubscribe"
	"github.com/blaster-mail/blaster/worker"
)

func newWorkerCmd(a *app) *cobra.Command {
	var (
		tf           transportFlags
		cfg          worker.Config
		stopTimeout  time.Duration
		unsubKeyFile string
		throttleFile string
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

On SIGINT or SIGTERM the worker stops taking batches, finishes the SMTP
transactions in flight, records their outcomes, QUITs and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, err := a.db(ctx)
			if err != nil {
				return err
			}
			if err := tf.loadFile(cmd.Flags()); err != nil {
				return err
			}
			tr, err := tf.build(a)
			if err != nil {
				return err
			}
			if key, err := unsubscribe.LoadKey(unsubKeyFile, os.Getenv); err == nil {
				cfg.Secrets.UnsubscribeKey = key
			} else if unsubKeyFile != "" {
				return err
			}
			tcfg, err := throttle.LoadConfig(throttleFile)
			if err != nil {
				return err
			}
			tcfg.Pool = pool
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
			<-ctx.Done()
			a.logger.Info("stopping: finishing transactions in flight")
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			if err := w.Stop(stopCtx); err != nil {
				return fmt.Errorf("stopping worker: %w", err)
			}
			a.logger.Info("worker stopped")
			return nil
		},
	}
	f := cmd.Flags()
	tf.register(f)
	f.IntVar(&cfg.NewsletterWorkers, "newsletter-workers", 16, "newsletter batches sent at once (one connection each)")
	f.IntVar(&cfg.AlertWorkers, "alert-workers", 8, "alert batches sent at once")
	f.DurationVar(&cfg.JobTimeout, "batch-timeout", 5*time.Minute, "longest one batch may take")
	f.DurationVar(&stopTimeout, "stop-timeout", 2*time.Minute, "how long to wait for transactions in flight on SIGINT/SIGTERM")
	f.StringVar(&throttleFile, "throttle-config", os.Getenv("BLASTER_THROTTLE_CONFIG"),
		"TOML file of rates, connection caps and back-off rules (default: the shipped throttle/default.toml)")
	f.StringVar(&unsubKeyFile, "unsubscribe-key-file", "", "file with the one-click unsubscribe token key (else $BLASTER_UNSUBSCRIBE_KEY)")
	f.DurationVar(&cfg.FetchInterval, "poll-interval", 0, "how often to poll for jobs besides LISTEN/NOTIFY (default 1s)")
	return cmd
}
