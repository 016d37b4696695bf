package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/blaster-mail/blaster/db"
)

// app is what every command shares: its streams, its logger and the
// database, opened on first use. Commands take it instead of reaching for
// os.Stdout or globals, so they can be run from tests.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	logger         *slog.Logger

	databaseURL string // --database-url, else $DATABASE_URL
	logLevel    string
	// dbConns is the database pool's size; 0 picks db.Open's default.
	// Commands that run many jobs at once (worker) set it before db().
	dbConns int

	pool *pgxpool.Pool

	// listening, if set, receives the address the worker's metrics
	// listener bound (tests use --metrics-addr 127.0.0.1:0).
	listening func(net.Addr)
}

// run builds the command tree and executes args.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	defer a.close()
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "blaster",
		Short: "A high-volume bulk mailing engine on PostgreSQL and River",
		Long: `blaster imports recipients, builds campaigns and alert blasts, and delivers
them over SMTP as fast as each relay and destination allows, to every
recipient exactly once, keeping a per-recipient ledger in PostgreSQL.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: must be debug, info, warn or error", a.logLevel)
			}
			a.logger = newLogger(a.stderr, lvl)
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.databaseURL, "database-url", os.Getenv("DATABASE_URL"),
		"PostgreSQL URL (default $DATABASE_URL, else libpq's PG* variables)")
	pf.StringVar(&a.logLevel, "log-level", envOr("BLASTER_LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	root.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions(
		[]string{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))

	root.AddCommand(
		newMigrateCmd(a),
		newServeCmd(a),
		newThrottleCmd(a),
		newCampaignCmd(a),
		newWorkerCmd(a),
		newSinkCmd(a),
		newImportCmd(a),
		newSuppressCmd(a),
		newDemoCmd(a),
		newProbeCmd(a),
		newSendCmd(a),
		newQueueCmd(a),
		newBouncesCmd(a),
	)
	return root
}

// db opens the database pool on first use.
func (a *app) db(ctx context.Context) (*pgxpool.Pool, error) {
	if a.pool != nil {
		return a.pool, nil
	}
	pool, err := db.Open(ctx, a.databaseURL, a.dbConns)
	if err != nil {
		return nil, err
	}
	a.pool = pool
	return pool, nil
}

func (a *app) close() {
	if a.pool != nil {
		a.pool.Close()
	}
}

// newLogger logs text on a terminal and JSON otherwise (for collectors).
func newLogger(w io.Writer, lvl slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: lvl}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// exitError carries a specific process exit code (e.g. `send --wait` exits 2
// when some recipient failed).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
