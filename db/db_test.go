package db_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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

// TestListMembersIntegrity checks the statement-level design that replaced
// list_members' foreign keys (migration 0004): members must name an existing
// list and contact, and deleting or truncating either deletes the members.
func TestListMembersIntegrity(t *testing.T) {
	ctx := context.Background()
	pool := dbtest.Pool(t)
	list := insertID(t, pool, `INSERT INTO lists (name) VALUES ('a') RETURNING id`)
	other := insertID(t, pool, `INSERT INTO lists (name) VALUES ('b') RETURNING id`)
	ann := insertID(t, pool, `INSERT INTO contacts (email) VALUES ('ann@example.test') RETURNING id`)
	bob := insertID(t, pool, `INSERT INTO contacts (email) VALUES ('bob@example.test') RETURNING id`)
	members := func() int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM list_members`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if _, err := pool.Exec(ctx, `INSERT INTO list_members (list_id, contact_id) VALUES ($1, $2), ($1, $3), ($4, $2), ($4, $3)`,
		list, ann, bob, other); err != nil {
		t.Fatalf("adding members: %v", err)
	}

	for _, c := range []struct {
		sql  string
		args []any
		want string
	}{
		{`INSERT INTO list_members (list_id, contact_id) VALUES ($1, $2)`, []any{list, bob + 1000}, "contact"},
		{`INSERT INTO list_members (list_id, contact_id) VALUES ($1, $2)`, []any{other + 1000, ann}, "list"},
		{`UPDATE list_members SET contact_id = $1 WHERE contact_id = $2`, []any{bob + 1000, ann}, "contact"},
		{`UPDATE contacts SET id = DEFAULT WHERE id = $1`, []any{ann}, "cannot change"},
	} {
		refused(t, pool, c.want, c.sql, c.args...)
	}
	if n := members(); n != 4 {
		t.Fatalf("%d members after the refused changes, want 4", n)
	}

	if _, err := pool.Exec(ctx, `DELETE FROM contacts WHERE id = $1`, ann); err != nil {
		t.Fatal(err)
	}
	if n := members(); n != 2 {
		t.Errorf("%d members after deleting a contact of two lists, want 2", n)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM lists WHERE id = $1`, other); err != nil {
		t.Fatal(err)
	}
	var left int64
	if err := pool.QueryRow(ctx, `SELECT contact_id FROM list_members WHERE list_id = $1`, list).Scan(&left); err != nil || left != bob {
		t.Errorf("after deleting a list: member %d (%v), want only bob (%d) on the other list", left, err, bob)
	}
	if n := members(); n != 1 {
		t.Errorf("%d members after deleting a list, want 1", n)
	}
	if _, err := pool.Exec(ctx, `TRUNCATE contacts CASCADE`); err != nil {
		t.Fatal(err)
	}
	if n := members(); n != 0 {
		t.Errorf("%d members after truncating contacts, want 0", n)
	}
}

// TestListMembersDeleteWaitsForAdders checks the lock that stands in for the
// foreign key's row lock: a contact deleted while another transaction is
// adding it to a list waits for that transaction, then deletes the new
// member too, so no member outlives its contact.
func TestListMembersDeleteWaitsForAdders(t *testing.T) {
	ctx := context.Background()
	pool := dbtest.Pool(t)
	list := insertID(t, pool, `INSERT INTO lists (name) VALUES ('a') RETURNING id`)
	ann := insertID(t, pool, `INSERT INTO contacts (email) VALUES ('ann@example.test') RETURNING id`)
	adder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer adder.Rollback(ctx)
	if _, err := adder.Exec(ctx, `INSERT INTO list_members (list_id, contact_id) VALUES ($1, $2)`, list, ann); err != nil {
		t.Fatal(err)
	}

	deleted := make(chan error, 1)
	var deleterPID uint32
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	deleterPID = conn.Conn().PgConn().PID()
	go func() {
		_, err := conn.Exec(ctx, `DELETE FROM contacts WHERE id = $1`, ann)
		deleted <- err
	}()
	// The delete must wait on a lock while the adder is open.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting bool
		if err := pool.QueryRow(ctx, `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, deleterPID).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case err := <-deleted:
			t.Fatalf("delete finished (%v) while a transaction was adding the contact to a list", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the delete never waited for the transaction adding a member")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := adder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-deleted; err != nil {
		t.Fatalf("delete: %v", err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM list_members WHERE contact_id = $1`, ann).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d members left for the deleted contact, want 0", n)
	}
}

// TestDeliveriesIntegrity checks the statement-level design that replaced
// deliveries' foreign keys (migration 0007): a delivery must name an
// existing campaign and contact, its key never changes, deleting a campaign
// deletes its deliveries, and a contact with deliveries cannot be deleted.
func TestDeliveriesIntegrity(t *testing.T) {
	ctx := context.Background()
	pool := dbtest.Pool(t)
	camp := insertID(t, pool, insertCampaign)
	ann := insertID(t, pool, `INSERT INTO contacts (email) VALUES ('ann@example.test') RETURNING id`)
	bob := insertID(t, pool, `INSERT INTO contacts (email) VALUES ('bob@example.test') RETURNING id`)
	if _, err := pool.Exec(ctx, `INSERT INTO deliveries (campaign_id, contact_id, email, state)
		VALUES ($1, $2, 'ann@example.test', 'queued')`, camp, ann); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM deliveries`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, c := range []struct {
		sql  string
		args []any
		want string
	}{
		{`INSERT INTO deliveries (campaign_id, contact_id, email, state) VALUES ($1, $2, 'x@example.test', 'queued')`,
			[]any{camp, bob + 1000}, "contact"},
		{`INSERT INTO deliveries (campaign_id, contact_id, email, state) VALUES ($1, $2, 'bob@example.test', 'queued')`,
			[]any{camp + 1000, bob}, "campaign"},
		{`UPDATE deliveries SET contact_id = $1 WHERE contact_id = $2`, []any{bob, ann}, "cannot change"},
		{`UPDATE campaigns SET id = DEFAULT WHERE id = $1`, []any{camp}, "cannot change"},
		{`DELETE FROM contacts WHERE id = $1`, []any{ann}, "has deliveries"},
		{`TRUNCATE contacts CASCADE`, nil, "has deliveries"},
	} {
		refused(t, pool, c.want, c.sql, c.args...)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d deliveries after the refused changes, want 1", n)
	}
	// A contact without deliveries may go; one with them may go once its
	// campaign (and so its deliveries) is gone.
	if _, err := pool.Exec(ctx, `DELETE FROM contacts WHERE id = $1`, bob); err != nil {
		t.Fatalf("deleting a contact without deliveries: %v", err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM campaigns WHERE id = $1`, camp); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Errorf("%d deliveries after deleting their campaign, want 0", n)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM contacts WHERE id = $1`, ann); err != nil {
		t.Errorf("deleting a contact whose campaign is gone: %v", err)
	}

	// TRUNCATE of campaigns empties deliveries, alone or together with it.
	for _, stmt := range []string{`TRUNCATE campaigns CASCADE`, `TRUNCATE deliveries, batches, campaigns CASCADE`} {
		camp = insertID(t, pool, insertCampaign)
		ann = insertID(t, pool, `INSERT INTO contacts (email) VALUES ('cy@example.test') RETURNING id`)
		if _, err := pool.Exec(ctx, `INSERT INTO deliveries (campaign_id, contact_id, email, state)
			VALUES ($1, $2, 'cy@example.test', 'queued')`, camp, ann); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
		if n := count(); n != 0 {
			t.Errorf("%d deliveries after %s, want 0", n, stmt)
		}
		if _, err := pool.Exec(ctx, `DELETE FROM contacts`); err != nil {
			t.Fatal(err)
		}
	}
}

// TestContactDeleteAndFanOut checks the lock that stands in for deliveries'
// foreign key on contacts (migration 0007): a contact deleted while a
// transaction is inserting deliveries for it waits for that transaction and
// then fails (the ledger keeps the contact), while an open transaction that
// only updates deliveries, as every worker does, never holds a delete up.
func TestContactDeleteAndFanOut(t *testing.T) {
	ctx := context.Background()
	pool := dbtest.Pool(t)
	camp := insertID(t, pool, insertCampaign)
	ann := insertID(t, pool, `INSERT INTO contacts (email) VALUES ('ann@example.test') RETURNING id`)
	bob := insertID(t, pool, `INSERT INTO contacts (email) VALUES ('bob@example.test') RETURNING id`)
	// deleteContact deletes id on a connection of its own and reports
	// whether it had to wait on a lock before it finished.
	deleteContact := func(id int64, release func()) (waited bool, err error) {
		t.Helper()
		conn, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		pid := conn.Conn().PgConn().PID()
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, `DELETE FROM contacts WHERE id = $1`, id)
			done <- err
		}()
		deadline := time.Now().Add(10 * time.Second)
		for {
			select {
			case err := <-done:
				return waited, err
			default:
			}
			if !waited {
				if err := pool.QueryRow(ctx, `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&waited); err != nil {
					t.Fatal(err)
				}
				if waited {
					release()
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("the delete neither finished nor waited")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// A fan-out in flight for ann: the delete waits for it, then fails.
	fanOut, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer fanOut.Rollback(ctx)
	if _, err := fanOut.Exec(ctx, `INSERT INTO deliveries (campaign_id, contact_id, email, state)
		VALUES ($1, $2, 'ann@example.test', 'queued')`, camp, ann); err != nil {
		t.Fatal(err)
	}
	waited, err := deleteContact(ann, func() {
		if err := fanOut.Commit(ctx); err != nil {
			t.Error(err)
		}
	})
	if !waited {
		t.Error("deleting a contact did not wait for a transaction inserting its deliveries")
	}
	if err == nil || !strings.Contains(err.Error(), "has deliveries") {
		t.Errorf("deleting a contact a fan-out just gave deliveries: %v, want a refusal", err)
	}

	// A worker updating ann's delivery: deleting bob (no deliveries) does
	// not wait for it.
	worker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Rollback(ctx)
	if _, err := worker.Exec(ctx, `UPDATE deliveries SET state = 'sending' WHERE campaign_id = $1`, camp); err != nil {
		t.Fatal(err)
	}
	waited, err = deleteContact(bob, func() { worker.Rollback(ctx) })
	if waited || err != nil {
		t.Errorf("deleting a contact without deliveries while a worker writes deliveries: waited %v, error %v; want no wait, no error", waited, err)
	}
}

// insertCampaign is the least campaign row there is.
const insertCampaign = `INSERT INTO campaigns (name, from_addr, subject, personalized)
	VALUES ('c', 'news@example.test', 's', false) RETURNING id`

// insertID runs an INSERT ... RETURNING id and returns the id.
func insertID(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var id int64
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&id); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return id
}

// refused runs sql and checks that the database refuses it with an error
// that mentions want.
func refused(t *testing.T, pool *pgxpool.Pool, want, sql string, args ...any) {
	t.Helper()
	_, err := pool.Exec(context.Background(), sql, args...)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s %v: error %v, want one about %q", sql, args, err, want)
	}
}
