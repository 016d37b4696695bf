// Package db opens blaster's PostgreSQL pool and applies the schema: River's
// migrations and blaster's own (package migrations), in one transaction under
// one advisory lock, so concurrent `blaster migrate` runs are safe.
package db

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/blaster-mail/blaster/migrations"
)

// Open connects to the database at url (a PostgreSQL URL or key=value DSN; an
// empty url uses libpq's PG* environment defaults) and checks that it answers.
//
// pgx's default pool size is max(4, NumCPU): too small for River's producer,
// its maintenance leader, and the send workers together. maxConns <= 0 picks
// 4 + 2*NumCPU.
func Open(ctx context.Context, url string, maxConns int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parsing database URL: %w", err)
	}
	if maxConns <= 0 {
		maxConns = 4 + 2*runtime.NumCPU()
	}
	cfg.MaxConns = int32(maxConns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to database %s@%s/%s: %w",
			cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

// migrateLockKey is the pg_advisory_lock key under which all migrations run
// ("blaster" in ASCII).
const migrateLockKey = 0x626c6173746572

// Migrate applies River's migrations and then blaster's own under one
// session advisory lock, so concurrent runs wait for each other. River's run
// one transaction each (its 006 adds an enum value, which PostgreSQL will not
// use in the transaction that added it); blaster's run in one transaction. It
// is idempotent: a migrated database is left as it is. It writes one line per
// migration applied to w.
func Migrate(ctx context.Context, pool *pgxpool.Pool, w io.Writer) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquiring connection for migrations: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrateLockKey); err != nil {
		return fmt.Errorf("taking migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrateLockKey)

	migrator, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return fmt.Errorf("creating River migrator: %w", err)
	}
	res, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return fmt.Errorf("applying River migrations: %w", err)
	}
	for _, v := range res.Versions {
		fmt.Fprintf(w, "applied river %03d %s\n", v.Version, v.Name)
	}

	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning migration: %w", err)
	}
	defer tx.Rollback(ctx)
	applied, err := migrateOwn(ctx, tx)
	if err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing migrations: %w", err)
	}
	for _, name := range applied {
		fmt.Fprintf(w, "applied blaster %s\n", name)
	}
	if len(res.Versions) == 0 && len(applied) == 0 {
		fmt.Fprintln(w, "schema is up to date")
	}
	return nil
}

// migration is one file of package migrations.
type migration struct {
	version int
	name    string // file name
}

func ownMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		return nil, fmt.Errorf("reading embedded migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		if path.Ext(name) != ".sql" {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must be NNNN_name.sql", name)
		}
		ms = append(ms, migration{version: v, name: name})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s share version %d", ms[i-1].name, ms[i].name, ms[i].version)
		}
	}
	return ms, nil
}

func migrateOwn(ctx context.Context, tx pgx.Tx) ([]string, error) {
	ms, err := ownMigrations()
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS blaster_migrations (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("creating blaster_migrations: %w", err)
	}
	rows, err := tx.Query(ctx, "SELECT version FROM blaster_migrations")
	if err != nil {
		return nil, fmt.Errorf("reading applied migrations: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return nil, fmt.Errorf("reading applied migrations: %w", err)
	}
	have := make(map[int]bool, len(done))
	for _, v := range done {
		have[v] = true
	}
	var applied []string
	for _, m := range ms {
		if have[m.version] {
			continue
		}
		sql, err := fs.ReadFile(migrations.FS, m.name)
		if err != nil {
			return nil, fmt.Errorf("reading migration %s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, string(sql)); err != nil {
			return nil, fmt.Errorf("applying migration %s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO blaster_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			return nil, fmt.Errorf("recording migration %s: %w", m.name, err)
		}
		applied = append(applied, m.name)
	}
	return applied, nil
}
