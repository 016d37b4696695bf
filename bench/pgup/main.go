// Command pgup starts a private PostgreSQL cluster the way `blaster demo`
// does (internal/localpg), for bench/run.sh on a machine whose 127.0.0.1:5432
// does not answer. It writes the connection settings as libpq environment
// variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) to -env, mode
// 0600, so the password never appears in an argument list; then it waits
// for SIGINT or SIGTERM and stops the cluster it started.
//
//	go run ./bench/pgup -dir .bench/pg -env .bench/pg.env &
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/blaster-mail/blaster/internal/localpg"
)

func main() {
	dir := flag.String("dir", ".bench/pg", "directory of the private cluster")
	env := flag.String("env", ".bench/pg.env", "file the PG* settings are written to")
	flag.Parse()
	if err := run(*dir, *env); err != nil {
		fmt.Fprintln(os.Stderr, "pgup:", err)
		os.Exit(1)
	}
}

func run(dir, envFile string) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	raw, stop, err := localpg.Private(ctx, dir, logger)
	if err != nil {
		return err
	}
	defer stop()
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("parsing the cluster's URL: %w", err)
	}
	password, _ := u.User.Password()
	lines := []string{
		"PGHOST=" + u.Hostname(),
		"PGPORT=" + u.Port(),
		"PGUSER=" + u.User.Username(),
		"PGPASSWORD=" + shellQuote(password),
		"PGDATABASE=" + strings.TrimPrefix(u.Path, "/"),
		"PGSSLMODE=disable",
	}
	tmp := envFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", envFile, err)
	}
	if err := os.Rename(tmp, envFile); err != nil {
		return fmt.Errorf("writing %s: %w", envFile, err)
	}
	<-ctx.Done()
	os.Remove(envFile)
	return nil
}

// shellQuote quotes s for a POSIX shell's `.` of the env file.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
