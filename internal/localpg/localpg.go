// Package localpg finds or starts a PostgreSQL server for `blaster demo`, so
// that the demo needs nothing set up beforehand:
//
//  1. $DATABASE_URL, when set, is used as it is.
//  2. Else a server answering at 127.0.0.1:5432 without a password (as user
//     postgres, then as the current OS user) is used, in a database of the
//     demo's own, blaster_demo, created if missing.
//  3. Else a private cluster is started from the installed PostgreSQL
//     binaries (initdb, pg_ctl) in a directory of the caller's choosing, on
//     a free loopback port, with its unix socket in that directory. When no
//     binaries are installed and the process runs as root, the Debian
//     package postgresql is installed first. PostgreSQL refuses to run as
//     root, so as root the directory is given to the postgres OS user (or
//     nobody) and initdb and pg_ctl run through runuser(1).
//
// The private cluster is reused by later runs (its data directory stays)
// and stopped by the stop function Ensure returns. It accepts only password
// (SCRAM) logins; the generated password is kept in the directory, mode 0600.
package localpg

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Database is the name of the demo's database, on a shared server as in a
// private cluster.
const Database = "blaster_demo"

// superuser is the private cluster's superuser role (initdb -U).
const superuser = "blaster"

// Ensure returns the URL of a PostgreSQL database for the demo, found or
// started as the package comment describes, and a function that stops what
// Ensure started (a no-op when it started nothing). dir holds a private
// cluster (e.g. ".demo/pg"); it is created when needed. logger says which
// way was taken.
func Ensure(ctx context.Context, dir string, logger *slog.Logger) (url string, stop func() error, err error) {
	return defaultEnsurer(logger).ensure(ctx, dir)
}

// Private is Ensure's third way alone: it starts (or reuses) the private
// cluster in dir, whatever DATABASE_URL says or 127.0.0.1:5432 answers.
func Private(ctx context.Context, dir string, logger *slog.Logger) (url string, stop func() error, err error) {
	return defaultEnsurer(logger).private(ctx, dir)
}

// ensurer is Ensure with its surroundings injectable, for tests.
type ensurer struct {
	logger *slog.Logger
	// getenv reads the environment (DATABASE_URL).
	getenv func(string) string
	// sharedAddr is the address of the shared server to try, 127.0.0.1:5432.
	sharedAddr string
	// database is the database to use or create: Database.
	database string
	// binDirs lists directories that may hold initdb and pg_ctl, best first.
	binDirs func() []string
	// euid is the effective user id; 0 means root.
	euid int
	// install installs PostgreSQL's binaries (root only).
	install func(ctx context.Context) error
	// fallbackBase holds the private cluster, as root, when the postgres
	// OS user cannot reach the directory asked for: /var/tmp.
	fallbackBase string
}

func defaultEnsurer(logger *slog.Logger) *ensurer {
	if logger == nil {
		logger = slog.Default()
	}
	return &ensurer{
		logger:     logger,
		getenv:     os.Getenv,
		sharedAddr: "127.0.0.1:5432",
		database:   Database,
		binDirs:    installedBinDirs,
		euid:       os.Geteuid(),
		install:    aptInstall,

		fallbackBase: "/var/tmp",
	}
}

func (e *ensurer) ensure(ctx context.Context, dir string) (string, func() error, error) {
	noop := func() error { return nil }
	if u := e.getenv("DATABASE_URL"); u != "" {
		e.logger.Info("using the database of DATABASE_URL")
		return u, noop, nil
	}
	if u, ok := e.shared(ctx); ok {
		return u, noop, nil
	}
	return e.private(ctx, dir)
}

// shared tries the server at e.sharedAddr without a password, as user
// postgres and then as the current OS user, and returns the URL of
// e.database there, creating it if missing.
func (e *ensurer) shared(ctx context.Context) (string, bool) {
	users := []string{"postgres"}
	if u, err := user.Current(); err == nil && u.Username != "postgres" {
		users = append(users, u.Username)
	}
	for _, name := range users {
		// sslmode=disable: loopback only, and a passwordless login sends no
		// secret to protect.
		admin := fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable&connect_timeout=3", url.PathEscape(name), e.sharedAddr)
		if err := createDatabase(ctx, admin, e.database); err != nil {
			e.logger.Debug("shared PostgreSQL not usable", "addr", e.sharedAddr, "user", name, "err", err)
			continue
		}
		e.logger.Info("using the PostgreSQL server that answers", "addr", e.sharedAddr, "user", name, "database", e.database)
		return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", url.PathEscape(name), e.sharedAddr, e.database), true
	}
	return "", false
}

// createDatabase connects to adminURL and creates database name unless it
// exists.
func createDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("looking for database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: created meanwhile
		return nil
	}
	if err != nil {
		return fmt.Errorf("creating database %s: %w", name, err)
	}
	return nil
}

// private starts (or reuses) the cluster in dir.
func (e *ensurer) private(ctx context.Context, dir string) (string, func() error, error) {
	noop := func() error { return nil }
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", nil, fmt.Errorf("private PostgreSQL directory: %w", err)
	}
	if strings.ContainsAny(dir, "'\n") {
		return "", nil, fmt.Errorf("private PostgreSQL directory %q: a quote or newline in the path is not supported", dir)
	}
	// Installed first: the package also creates the postgres OS user.
	bins, err := e.findBinaries(ctx)
	if err != nil {
		return "", nil, err
	}
	run, err := e.runner(dir)
	if err != nil {
		return "", nil, err
	}
	dir = run.dir // perhaps moved where the postgres OS user can reach it
	data := filepath.Join(dir, "data")
	bin := pickBinDir(bins, data)
	password, err := e.password(dir, run)
	if err != nil {
		return "", nil, err
	}

	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		e.logger.Info("creating a private PostgreSQL cluster", "dir", data, "bin", bin)
		// Like the auth of a packaged server, but with passwords for every
		// connection: any local user could otherwise reach the demo's data.
		err := run.cmd(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", superuser,
			"--pwfile="+filepath.Join(dir, "password"), "--auth=scram-sha-256",
			"--encoding=UTF8", "--no-locale")
		if err != nil {
			return "", nil, fmt.Errorf("initdb in %s: %w", data, err)
		}
	} else if err != nil {
		return "", nil, fmt.Errorf("private PostgreSQL: %w", err)
	}

	pgctl := filepath.Join(bin, "pg_ctl")
	stop := func() error {
		e.logger.Info("stopping the private PostgreSQL cluster", "dir", data)
		// context.Background: stopping must happen even after ctx ended
		// (the usual case: the demo was interrupted).
		if err := run.cmd(context.Background(), pgctl, "-D", data, "-m", "fast", "-w", "stop"); err != nil {
			return fmt.Errorf("stopping PostgreSQL in %s: %w", data, err)
		}
		return nil
	}

	port, running := runningPort(data)
	if running && run.cmd(ctx, pgctl, "-D", data, "status") == nil {
		// A cluster left running (by another demo run): use it, leave it.
		e.logger.Info("using the private PostgreSQL cluster that is running", "dir", data, "port", port)
		stop = noop
	} else {
		port, err = keptPort(dir)
		if err != nil {
			return "", nil, err
		}
		sockets := dir
		if len(filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(port))) > maxSocketPath {
			e.logger.Info("directory path too long for a unix socket: TCP only", "dir", dir)
			sockets = ""
		}
		opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -k '%s'", port, sockets)
		e.logger.Info("starting the private PostgreSQL cluster", "dir", data, "port", port)
		err := run.cmd(ctx, pgctl, "-D", data, "-l", filepath.Join(dir, "postgres.log"), "-w", "-t", "120", "-o", opts, "start")
		if err != nil {
			return "", nil, fmt.Errorf("starting PostgreSQL in %s (see %s): %w", data, filepath.Join(dir, "postgres.log"), err)
		}
	}

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	user := url.UserPassword(superuser, password)
	admin := (&url.URL{Scheme: "postgres", User: user, Host: addr, Path: "/postgres", RawQuery: "sslmode=disable"}).String()
	if err := createDatabase(ctx, admin, e.database); err != nil {
		return "", nil, errors.Join(fmt.Errorf("private PostgreSQL at %s: %w", addr, err), stop())
	}
	u := (&url.URL{Scheme: "postgres", User: user, Host: addr, Path: "/" + e.database, RawQuery: "sslmode=disable"}).String()
	return u, stop, nil
}

// maxSocketPath is the longest unix socket path: sizeof(sun_path) - 1 on
// Linux (unix(7)).
const maxSocketPath = 107

// findBinaries returns the directories holding initdb and pg_ctl, best
// first. As root with none installed, it installs them.
func (e *ensurer) findBinaries(ctx context.Context) ([]string, error) {
	dirs := e.binDirs()
	if len(dirs) > 0 {
		return dirs, nil
	}
	if e.euid != 0 {
		return nil, errors.New("no PostgreSQL server here: install one (apt-get install postgresql) or set DATABASE_URL")
	}
	e.logger.Info("PostgreSQL is not installed: installing the Debian package postgresql")
	if err := e.install(ctx); err != nil {
		return nil, err
	}
	if dirs = e.binDirs(); len(dirs) == 0 {
		return nil, errors.New("installed postgresql, but found no initdb under /usr/lib/postgresql/*/bin")
	}
	return dirs, nil
}

// pickBinDir returns the binaries of the data directory's major version if
// they are among dirs (a cluster must be run by its own version), else the
// first of dirs.
func pickBinDir(dirs []string, data string) string {
	if v, err := os.ReadFile(filepath.Join(data, "PG_VERSION")); err == nil {
		want := strings.TrimSpace(string(v))
		for _, d := range dirs {
			if filepath.Base(filepath.Dir(d)) == want {
				return d
			}
		}
	}
	return dirs[0]
}

// installedBinDirs returns /usr/lib/postgresql/*/bin directories holding
// initdb and pg_ctl, newest major version first, then the directory of an
// initdb on $PATH.
func installedBinDirs() []string {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	var dirs []string
	for _, m := range matches {
		d := filepath.Dir(m)
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			dirs = append(dirs, d)
		}
	}
	sortNewestFirst(dirs)
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	return dirs
}

// sortNewestFirst orders /usr/lib/postgresql/VERSION/bin paths by VERSION,
// numerically, highest first.
func sortNewestFirst(dirs []string) {
	version := func(d string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		return v
	}
	sort.SliceStable(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
}

// aptInstall installs Debian's postgresql package, running apt-get update
// first when the package is unknown to apt's lists.
func aptInstall(ctx context.Context) error {
	install := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "postgresql")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install postgresql: %w\n%s", err, lastLines(out, 10))
		}
		return nil
	}
	if install() == nil {
		return nil
	}
	update := exec.CommandContext(ctx, "apt-get", "update")
	if out, err := update.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %w\n%s", err, lastLines(out, 10))
	}
	return install()
}

// runner runs the PostgreSQL programs: as the current user, or as root
// through runuser as the postgres OS user (else nobody), to whom dir then
// belongs.
type runner struct {
	dir      string
	asUser   string // "" runs as the current user
	uid, gid int
}

func (e *ensurer) runner(dir string) (*runner, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	r := &runner{dir: dir}
	if e.euid != 0 {
		return r, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		if u, err = user.Lookup("nobody"); err != nil {
			return nil, errors.New("running as root, and neither a postgres nor a nobody OS user exists to run PostgreSQL as")
		}
	}
	r.asUser = u.Username
	r.uid, _ = strconv.Atoi(u.Uid)
	r.gid, _ = strconv.Atoi(u.Gid)
	if err := r.chown(dir); err != nil {
		return nil, err
	}
	if r.reaches(dir) {
		return r, nil
	}
	// A checkout under /root (mode 0700) is the usual case: the server
	// cannot live there, so it lives in a directory of its own named after
	// dir, found again by the next run.
	sum := sha256.Sum256([]byte(dir))
	alt := filepath.Join(e.fallbackBase, "blaster-demo-pg-"+hex.EncodeToString(sum[:4]))
	e.logger.Info("the PostgreSQL OS user cannot reach the demo directory: keeping the cluster elsewhere",
		"user", r.asUser, "dir", dir, "cluster_dir", alt)
	if err := os.MkdirAll(alt, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", alt, err)
	}
	if err := r.chown(alt); err != nil {
		return nil, err
	}
	if !r.reaches(alt) {
		return nil, fmt.Errorf("OS user %s can reach neither %s nor %s: make a parent directory searchable (chmod o+x) or set DATABASE_URL",
			r.asUser, dir, alt)
	}
	r.dir = alt
	return r, nil
}

// reaches reports whether the runner's user can enter and write to dir.
func (r *runner) reaches(dir string) bool {
	c := exec.Command("runuser", "-u", r.asUser, "--", "test", "-w", dir, "-a", "-x", dir)
	c.Dir = "/"
	return c.Run() == nil
}

// chown gives path and everything under it to the runner's user.
func (r *runner) chown(path string) error {
	if r.asUser == "" {
		return nil
	}
	return filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, r.uid, r.gid); err != nil {
			return fmt.Errorf("giving %s to OS user %s: %w", p, r.asUser, err)
		}
		return nil
	})
}

// cmd runs program with args, in r.dir, as r's user; its output goes into
// the error when it fails.
func (r *runner) cmd(ctx context.Context, program string, args ...string) error {
	if r.asUser != "" {
		args = append([]string{"-u", r.asUser, "--", program}, args...)
		program = "runuser"
	}
	c := exec.CommandContext(ctx, program, args...)
	c.Dir = r.dir
	c.WaitDelay = 5 * time.Second
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", filepath.Base(program), err, lastLines(out, 10))
	}
	return nil
}

// password returns the private cluster's superuser password, kept in
// dir/password (mode 0600, readable by the runner's user for initdb's
// --pwfile), generating it on first use.
func (e *ensurer) password(dir string, r *runner) (string, error) {
	path := filepath.Join(dir, "password")
	b, err := os.ReadFile(path)
	if err == nil {
		if p := strings.TrimSpace(string(b)); p != "" {
			return p, nil
		}
		return "", fmt.Errorf("%s is empty: delete %s to start over", path, dir)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading the private cluster's password: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "PG_VERSION")); err == nil {
		return "", fmt.Errorf("%s is missing but the cluster exists: delete %s to start over", path, dir)
	}
	var raw [18]byte
	rand.Read(raw[:])
	p := hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(p+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing the private cluster's password: %w", err)
	}
	if err := r.chown(path); err != nil {
		return "", err
	}
	return p, nil
}

// runningPort reads the port of a server from data/postmaster.pid; ok is
// false when there is no such file or it names no port.
func runningPort(data string) (port int, ok bool) {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	return parsePostmasterPID(b)
}

// parsePostmasterPID returns the port in the contents of a postmaster.pid
// file: its fourth line (PostgreSQL's src/include/utils/pidfile.h,
// LOCK_FILE_LINE_PORT).
func parsePostmasterPID(b []byte) (port int, ok bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		if line == 4 {
			p, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
			if err != nil || p <= 0 || p > 65535 {
				return 0, false
			}
			return p, true
		}
	}
	return 0, false
}

// keptPort returns the port the cluster in dir had last time, kept in
// dir/port, when it is free, so that a restarted cluster answers at the
// URL handed out before (workers reconnect to it); else a free port, which
// it keeps for next time.
func keptPort(dir string) (int, error) {
	path := filepath.Join(dir, "port")
	if b, err := os.ReadFile(path); err == nil {
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p > 0 && p <= 65535 {
			if ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p))); err == nil {
				ln.Close()
				return p, nil
			}
		}
	}
	p, err := freePort()
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(p)+"\n"), 0o644); err != nil {
		return 0, fmt.Errorf("keeping the private cluster's port: %w", err)
	}
	return p, nil
}

// freePort returns a TCP port free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// lastLines returns the last n lines of out, for error messages.
func lastLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
