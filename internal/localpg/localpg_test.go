package localpg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blaster-mail/blaster/internal/dbtest"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestParsePostmasterPID(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		port int
		ok   bool
	}{
		{"pg15", "4242\n/var/lib/pg/data\n1700000000\n54321\n/tmp\n127.0.0.1\n  5432001    32768\nready   \n", 54321, true},
		{"crlf and spaces", "1\r\n/d\r\n1\r\n 5433 \r\n", 5433, true},
		{"too short", "4242\n/data\n1700000000\n", 0, false},
		{"empty", "", 0, false},
		{"not a number", "1\n/d\n1\nfive\n", 0, false},
		{"zero", "1\n/d\n1\n0\n", 0, false},
		{"too big", "1\n/d\n1\n65536\n", 0, false},
		{"negative", "1\n/d\n1\n-5\n", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, ok := parsePostmasterPID([]byte(tc.in))
			if port != tc.port || ok != tc.ok {
				t.Errorf("parsePostmasterPID(%q) = %d, %v; want %d, %v", tc.in, port, ok, tc.port, tc.ok)
			}
		})
	}
}

func FuzzParsePostmasterPID(f *testing.F) {
	f.Add([]byte("4242\n/var/lib/pg/data\n1700000000\n54321\n/tmp\n127.0.0.1\n"))
	f.Add([]byte("1\n2\n3\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		port, ok := parsePostmasterPID(b)
		if ok != (port > 0 && port <= 65535) {
			t.Errorf("parsePostmasterPID(%q) = %d, %v", b, port, ok)
		}
	})
}

func TestSortNewestFirst(t *testing.T) {
	dirs := []string{"/usr/lib/postgresql/9.6/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/13/bin", "/usr/lib/postgresql/16/bin"}
	sortNewestFirst(dirs)
	want := []string{"/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/13/bin", "/usr/lib/postgresql/9.6/bin"}
	if !slices.Equal(dirs, want) {
		t.Errorf("got %v, want %v", dirs, want)
	}
}

func TestEnsureUsesDatabaseURL(t *testing.T) {
	e := defaultEnsurer(quiet())
	e.getenv = func(k string) string {
		if k == "DATABASE_URL" {
			return "postgres://u@db.example.test/x"
		}
		return ""
	}
	e.sharedAddr = closedAddr(t)
	e.binDirs = func() []string { t.Error("looked for binaries despite DATABASE_URL"); return nil }
	u, stop, err := e.ensure(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if u != "postgres://u@db.example.test/x" {
		t.Errorf("url = %q", u)
	}
	if err := stop(); err != nil {
		t.Error(err)
	}
}

// TestEnsureUsesSharedServer runs against the test server (dbtest's), as
// the demo does against 127.0.0.1:5432, in a database of its own.
func TestEnsureUsesSharedServer(t *testing.T) {
	cfg, err := pgx.ParseConfig(dbtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	rand.Read(b[:])
	e := defaultEnsurer(quiet())
	e.getenv = func(string) string { return "" }
	e.sharedAddr = net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	e.database = "blaster_localpg_" + hex.EncodeToString(b[:])
	e.binDirs = func() []string { t.Error("looked for binaries although a server answers"); return nil }
	ctx := context.Background()
	t.Cleanup(func() {
		admin, err := pgx.Connect(ctx, dbtest.AdminURL())
		if err != nil {
			t.Log(err)
			return
		}
		defer admin.Close(ctx)
		admin.Exec(ctx, "DROP DATABASE IF EXISTS "+e.database+" WITH (FORCE)")
	})

	for run := 1; run <= 2; run++ { // the second run finds the database
		u, stop, err := e.ensure(ctx, t.TempDir())
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			t.Fatalf("run %d: connecting to %s: %v", run, u, err)
		}
		var db string
		conn.QueryRow(ctx, "SELECT current_database()").Scan(&db)
		conn.Close(ctx)
		if db != e.database {
			t.Errorf("run %d: connected to %q, want %q", run, db, e.database)
		}
		if err := stop(); err != nil {
			t.Error(err)
		}
	}
}

func TestEnsureNoBinariesNotRoot(t *testing.T) {
	e := defaultEnsurer(quiet())
	e.getenv = func(string) string { return "" }
	e.sharedAddr = closedAddr(t)
	e.binDirs = func() []string { return nil }
	e.euid = 1000
	e.install = func(context.Context) error { t.Error("installing without being root"); return nil }
	_, _, err := e.ensure(context.Background(), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Errorf("err = %v, want advice to install PostgreSQL or set DATABASE_URL", err)
	}
}

func TestEnsureInstallsAsRoot(t *testing.T) {
	e := defaultEnsurer(quiet())
	e.getenv = func(string) string { return "" }
	e.sharedAddr = closedAddr(t)
	e.binDirs = func() []string { return nil }
	e.euid = 0
	errOffline := errors.New("apt-get: offline")
	installed := false
	e.install = func(context.Context) error { installed = true; return errOffline }
	_, _, err := e.ensure(context.Background(), t.TempDir())
	if !installed {
		t.Error("did not try to install PostgreSQL as root")
	}
	if !errors.Is(err, errOffline) {
		t.Errorf("err = %v, want the install error", err)
	}
}

// TestEnsurePrivateCluster creates a private cluster with the installed
// binaries, stops it, and starts it again from the same directory: the
// data survives, and stop really stops the server.
func TestEnsurePrivateCluster(t *testing.T) {
	if len(installedBinDirs()) == 0 {
		t.Skip("no PostgreSQL binaries installed")
	}
	if testing.Short() {
		t.Skip("initdb is slow: skipped in -short mode")
	}
	// Not t.TempDir: its parents are mode 0700, which the postgres OS user
	// (we may be root) cannot enter.
	base, err := os.MkdirTemp("", "localpg")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	t.Cleanup(func() { os.RemoveAll(base) })
	dir := filepath.Join(base, "pg")

	e := defaultEnsurer(quiet())
	e.getenv = func(string) string { return "" }
	e.sharedAddr = closedAddr(t)
	e.install = func(context.Context) error { t.Error("installing although binaries exist"); return nil }
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	u, stop, err := e.ensure(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatalf("connecting to the private cluster: %v", err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	// A login without the password is refused.
	cfg, _ := pgx.ParseConfig(u)
	cfg.Password = ""
	if c, err := pgx.ConnectConfig(ctx, cfg); err == nil {
		c.Close(ctx)
		t.Error("the private cluster accepted a login without password")
	}
	if st, err := os.Stat(filepath.Join(dir, "password")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("password file: %v, %v; want mode 0600", st, err)
	}

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if c, err := pgx.Connect(ctx, u); err == nil {
		c.Close(ctx)
		t.Fatal("the private cluster still answers after stop")
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid after stop: %v", err)
	}

	u2, stop2, err := e.ensure(ctx, dir)
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	stopped = false
	stop = stop2
	conn, err = pgx.Connect(ctx, u2)
	if err != nil {
		t.Fatalf("second run: connecting: %v", err)
	}
	var v string
	err = conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v)
	conn.Close(ctx)
	if err != nil || v != "still here" {
		t.Errorf("second run: kept = %q, %v", v, err)
	}
	if err := stop2(); err != nil {
		t.Error(err)
	}
	stopped = true
}

// TestEnsurePrivateClusterUnreachableDir is the demo run as root from a
// checkout under /root (mode 0700): the postgres OS user cannot enter the
// directory, so the cluster lives in the fallback base, and a second run
// finds it there again.
func TestEnsurePrivateClusterUnreachableDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root hands the cluster to another OS user")
	}
	if len(installedBinDirs()) == 0 {
		t.Skip("no PostgreSQL binaries installed")
	}
	if testing.Short() {
		t.Skip("initdb is slow: skipped in -short mode")
	}
	home := t.TempDir() // mode 0700, owned by root: like /root
	fallback, err := os.MkdirTemp("", "localpg-fallback")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(fallback, 0o755)
	t.Cleanup(func() { os.RemoveAll(fallback) })

	e := defaultEnsurer(quiet())
	e.getenv = func(string) string { return "" }
	e.sharedAddr = closedAddr(t)
	e.fallbackBase = fallback
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	for run := 1; run <= 2; run++ {
		u, stop, err := e.ensure(ctx, filepath.Join(home, "checkout", ".demo", "pg"))
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		conn, err := pgx.Connect(ctx, u)
		if err == nil {
			conn.Close(ctx)
		}
		if serr := stop(); serr != nil {
			t.Errorf("run %d: stopping: %v", run, serr)
		}
		if err != nil {
			t.Fatalf("run %d: connecting: %v", run, err)
		}
		clusters, _ := filepath.Glob(filepath.Join(fallback, "blaster-demo-pg-*", "data", "PG_VERSION"))
		if len(clusters) != 1 {
			t.Fatalf("run %d: clusters in the fallback base: %v, want one", run, clusters)
		}
	}
}

func TestPickBinDir(t *testing.T) {
	dirs := []string{"/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"}
	for _, tc := range []struct {
		name, pgVersion, want string
	}{
		{"new cluster: newest", "", "/usr/lib/postgresql/16/bin"},
		{"cluster of 15: its own version", "15\n", "/usr/lib/postgresql/15/bin"},
		{"cluster of 13, not installed: newest", "13\n", "/usr/lib/postgresql/16/bin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			if tc.pgVersion != "" {
				os.WriteFile(filepath.Join(data, "PG_VERSION"), []byte(tc.pgVersion), 0o600)
			}
			if got := pickBinDir(dirs, data); got != tc.want {
				t.Errorf("pickBinDir = %s, want %s", got, tc.want)
			}
		})
	}
}
