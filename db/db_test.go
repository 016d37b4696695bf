package db_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

// TestMigrate applies every migration to an empty database, then again to
// the migrated one, which must change nothing.
func TestMigrate(t *testing.T) {
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dbtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	const name = "blaster_t_migrate_empty"
	admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })

	cfg := admin.Config()
	pool, err := db.Open(ctx, "postgres://"+cfg.User+"@"+cfg.Host+"/"+name+"?sslmode=disable", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	var out bytes.Buffer
	if err := db.Migrate(ctx, pool, &out); err != nil {
		t.Fatalf("first migrate: %v", err)
	}
	if !strings.Contains(out.String(), "applied river") || !strings.Contains(out.String(), "applied blaster 0001_init.sql") {
		t.Fatalf("first migrate output lacks applied migrations:\n%s", out.String())
	}
	for _, table := range []string{"contacts", "lists", "list_members", "suppressions", "campaigns", "batches", "deliveries", "river_job"} {
		var ok bool
		if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&ok); err != nil || !ok {
			t.Errorf("table %s missing after migrate (err %v)", table, err)
		}
	}

	out.Reset()
	if err := db.Migrate(ctx, pool, &out); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	if got := strings.TrimSpace(out.String()); got != "schema is up to date" {
		t.Fatalf("second migrate applied something:\n%s", got)
	}
}
