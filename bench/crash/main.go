// Command crash runs internal/crashtest at scale: a campaign to a
// fault-injecting SMTP server while a `blaster worker` process is SIGKILLed
// and restarted at random points, then prints the reconciliation of the
// server's record with the ledger. bench/crash.sh builds blaster and runs
// it; see BENCHMARKS.md.
//
// It creates a database of its own on the server of -admin-url and drops
// it at the end (-keep keeps it).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/crashtest"
)

func main() {
	var cfg crashtest.Config
	adminURL := flag.String("admin-url", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL server (a maintenance database) to create the run's database on")
	blaster := flag.String("blaster", "./blaster", "the blaster binary the worker processes run")
	keep := flag.Bool("keep", false, "keep the run's database and worker logs")
	flag.IntVar(&cfg.Recipients, "n", 200000, "recipients")
	flag.IntVar(&cfg.Kills, "kills", 20, "SIGKILLs of the worker process")
	flag.Uint64Var(&cfg.Seed, "seed", 1, "seed of the kill points")
	flag.IntVar(&cfg.Domains, "domains", 50, "destination domains")
	flag.IntVar(&cfg.Workers, "workers", 8, "newsletter batches per worker process")
	flag.BoolVar(&cfg.AtLeastOnce, "at-least-once", false, "resend recipients whose outcome is unknown")
	flag.BoolVar(&cfg.Personalized, "personalized", true, "one transaction per recipient (else one per batch)")
	flag.DurationVar(&cfg.Timeout, "timeout", 30*time.Minute, "give up after")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, *adminURL, *blaster, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "crash:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg crashtest.Config, adminURL, blaster string, keep bool) error {
	if _, err := os.Stat(blaster); err != nil {
		return fmt.Errorf("blaster binary: %w (build it: go build -o blaster ./cmd/blaster)", err)
	}
	var b [4]byte
	rand.Read(b[:])
	name := "blaster_crash_" + hex.EncodeToString(b[:])
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", adminURL, err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return fmt.Errorf("creating database %s: %w", name, err)
	}
	if !keep {
		defer admin.Exec(context.WithoutCancel(ctx), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return err
	}
	u.Path = "/" + name
	cfg.DatabaseURL = u.String()
	pool, err := db.Open(ctx, cfg.DatabaseURL, 0)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := db.Migrate(ctx, pool, io.Discard); err != nil {
		return err
	}
	cfg.Pool = pool
	if cfg.Dir, err = os.MkdirTemp("", "blaster-crash-"); err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(cfg.Dir)
	}
	cfg.Command = func(args ...string) *exec.Cmd { return exec.Command(blaster, args...) }
	cfg.Log = os.Stdout
	fmt.Printf("crash: %d recipients, %d kills, seed %d, personalized=%v at-least-once=%v, database %s, logs %s\n",
		cfg.Recipients, cfg.Kills, cfg.Seed, cfg.Personalized, cfg.AtLeastOnce, name, cfg.Dir)
	rep, err := crashtest.Run(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Print(rep)
	if !rep.OK() {
		return errors.New("delivery guarantee violated")
	}
	return nil
}
