// Package dbtest gives each test a database of its own on the real
// PostgreSQL server, created from a migrated template so that it takes
// milliseconds, not a full migration run.
//
// The server is BLASTER_TEST_DATABASE_URL if set, else
// postgres://postgres@127.0.0.1:5432/test. Tests never mock Postgres.
package dbtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/migrations"
)

// AdminURL is the URL of the server's maintenance database.
func AdminURL() string {
	if u := os.Getenv("BLASTER_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// New creates a fresh, migrated database for t, dropped when t ends, and
// returns its URL.
func New(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("dbtest: connecting to %s: %v (is PostgreSQL running? see .ci/run)", AdminURL(), err)
	}
	defer admin.Close(ctx)

	tmpl, err := template(ctx, admin)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	var b [6]byte
	rand.Read(b[:])
	name := "blaster_t_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+tmpl); err != nil {
		t.Fatalf("dbtest: creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		admin, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Logf("dbtest: dropping %s: %v", name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("dbtest: dropping %s: %v", name, err)
		}
	})
	cfg, err := pgx.ParseConfig(AdminURL())
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
}

// Pool is New plus an open pool, closed when t ends.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	url := New(t)
	pool, err := db.Open(context.Background(), url, 0)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// template returns the name of a migrated template database for the current
// migrations, creating it once (under an advisory lock, for parallel test
// binaries). Its name carries a hash of the migration files, so a changed
// schema gets a new template.
func template(ctx context.Context, admin *pgx.Conn) (string, error) {
	h := sha256.New()
	fs.WalkDir(migrations.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := fs.ReadFile(migrations.FS, path)
			h.Write([]byte(path))
			h.Write(b)
		}
		return nil
	})
	name := "blaster_tmpl_" + hex.EncodeToString(h.Sum(nil))[:16]

	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(7261)"); err != nil {
		return "", fmt.Errorf("locking template creation: %w", err)
	}
	defer admin.Exec(context.Background(), "SELECT pg_advisory_unlock(7261)")

	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", fmt.Errorf("looking for template: %w", err)
	}
	if exists {
		return name, nil
	}
	building := name + "_new"
	admin.Exec(ctx, "DROP DATABASE IF EXISTS "+building+" WITH (FORCE)")
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+building); err != nil {
		return "", fmt.Errorf("creating template: %w", err)
	}
	cfg := admin.Config()
	url := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, building)
	pool, err := db.Open(ctx, url, 2)
	if err != nil {
		return "", err
	}
	err = db.Migrate(ctx, pool, io.Discard)
	pool.Close()
	if err != nil {
		return "", fmt.Errorf("migrating template: %w", err)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+building+" RENAME TO "+name); err != nil {
		return "", fmt.Errorf("renaming template: %w", err)
	}
	return name, nil
}
