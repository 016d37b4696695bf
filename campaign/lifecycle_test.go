package campaign_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/contact"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/sink"
	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/transport"
	"github.com/blaster-mail/blaster/worker"
)

var testDomains = []string{"alpha.example.test", "beta.example.test", "gamma.example.test"}

// seedList inserts n contacts spread over testDomains into list name
// (the pattern of worker/worker_test.go).
func seedList(t *testing.T, pool *pgxpool.Pool, name string, n int) []string {
	t.Helper()
	ctx := context.Background()
	var listID int64
	if err := pool.QueryRow(ctx, "INSERT INTO lists (name) VALUES ($1) RETURNING id", name).Scan(&listID); err != nil {
		t.Fatal(err)
	}
	emails := make([]string, n)
	rows := make([][]any, n)
	for i := range n {
		emails[i] = fmt.Sprintf("user%05d@%s", i, testDomains[i%len(testDomains)])
		rows[i] = []any{emails[i], fmt.Sprintf("User %d", i)}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"contacts"}, []string{"email", "name"}, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO list_members (list_id, contact_id) SELECT $1, id FROM contacts WHERE email = ANY($2)`, listID, emails); err != nil {
		t.Fatal(err)
	}
	return emails
}

// startCampaign creates and starts a one-transaction-per-batch campaign
// of maxRcpt recipients per batch.
func startCampaign(t *testing.T, pool *pgxpool.Pool, list string, maxRcpt int) int64 {
	t.Helper()
	ctx := context.Background()
	c, err := campaign.Create(ctx, pool, campaign.New{Name: "test " + list, List: list,
		From: "News <news@sender.example.test>", Subject: "News", Text: "The news.\n",
		Settings: campaign.Settings{MaxRcpt: maxRcpt}})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := campaign.Start(ctx, pool, rc, c.ID); err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// newSink is an in-process recording SMTP server, closed at the end.
func newSink(t *testing.T) *sink.Sink {
	t.Helper()
	srv := sink.New(sink.Config{Record: true})
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// relayTransport is the relay transport to a plaintext test server.
func relayTransport(t *testing.T, addr string) transport.Transport {
	t.Helper()
	cfg, err := transport.ParseRelayURL("smtp://" + addr + "?tls=none")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := transport.NewRelay([]transport.RelayConfig{cfg}, transport.RelayOptions{LocalName: "worker.blaster.test"})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// runWorker starts a worker with two newsletter slots on tr, stopped when
// the test ends.
func runWorker(t *testing.T, pool *pgxpool.Pool, tr transport.Transport) {
	t.Helper()
	w, err := worker.New(worker.Config{
		Pool: pool, Transport: tr, FetchInterval: 20 * time.Millisecond, PauseRecheck: 20 * time.Millisecond,
		NewsletterWorkers: 2, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := w.Stop(ctx); err != nil {
			t.Errorf("stopping worker: %v", err)
		}
	})
}

// gate is a transport whose every SMTP transaction waits for a token, so a
// test decides exactly how many transactions happen before it acts.
type gate struct {
	transport.Transport
	tokens  chan struct{}
	waiting atomic.Int32
}

func newGate(tr transport.Transport) *gate {
	return &gate{Transport: tr, tokens: make(chan struct{}, 100000)}
}

func (g *gate) allow(n int) {
	for range n {
		g.tokens <- struct{}{}
	}
}

func (g *gate) Session(ctx context.Context, domain string) (transport.Session, error) {
	s, err := g.Transport.Session(ctx, domain)
	if err != nil {
		return nil, err
	}
	return &gatedSession{Session: s, g: g}, nil
}

type gatedSession struct {
	transport.Session
	g *gate
}

func (s *gatedSession) Send(ctx context.Context, env *smtp.Envelope, body io.Reader) (*smtp.Result, error) {
	s.g.waiting.Add(1)
	defer s.g.waiting.Add(-1)
	select {
	case <-s.g.tokens:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Session.Send(ctx, env, body)
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// blocked waits until every token given was spent and a transaction waits
// for the next: the campaign is mid-run.
func (g *gate) blocked(t *testing.T) {
	t.Helper()
	waitFor(t, "a transaction waits at the gate", func() bool { return len(g.tokens) == 0 && g.waiting.Load() > 0 })
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// idle waits until no send job is running: the batches in flight at a
// pause or cancel have finished and recorded their outcomes.
func idle(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	waitFor(t, "no send job runs", func() bool {
		return count(t, pool, `SELECT count(*) FROM river_job WHERE kind = 'send_batch' AND state = 'running'`) == 0
	})
}

// allLookedAtSince waits until every unfinished send job has been fetched
// by the worker after time since: each saw the campaign's current state.
func allLookedAtSince(t *testing.T, pool *pgxpool.Pool, since time.Time) {
	t.Helper()
	waitFor(t, "every pending send job was tried again", func() bool {
		return count(t, pool, `
			SELECT count(*) FROM river_job WHERE kind = 'send_batch'
			  AND state NOT IN ('completed', 'cancelled', 'discarded')
			  AND (attempted_at IS NULL OR attempted_at <= $1 OR state = 'running')`, since) == 0
	})
}

func dbNow(t *testing.T, pool *pgxpool.Pool) time.Time {
	t.Helper()
	var now time.Time
	if err := pool.QueryRow(context.Background(), "SELECT now()").Scan(&now); err != nil {
		t.Fatal(err)
	}
	return now
}

func waitDone(t *testing.T, pool *pgxpool.Pool, id int64) *campaign.Status {
	t.Helper()
	var s *campaign.Status
	deadline := time.Now().Add(time.Minute)
	for {
		var err error
		if s, err = campaign.GetStatus(context.Background(), pool, id); err != nil {
			t.Fatal(err)
		}
		if s.State == campaign.Done {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("campaign %d not done by the deadline: %+v", id, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exactlyOnce checks that every address got exactly want[addr] messages
// (1 when absent) and that nobody else got any.
func exactlyOnce(t *testing.T, got map[string]int, emails []string, want map[string]int) {
	t.Helper()
	for _, e := range emails {
		w, ok := want[e]
		if !ok {
			w = 1
		}
		if got[e] != w {
			t.Errorf("%s received %d times, want %d", e, got[e], w)
		}
	}
	if len(got) != len(emails) {
		t.Errorf("server saw %d distinct recipients, want %d", len(got), len(emails))
	}
}

// TestPauseStopsNewTransactions: after a pause, the transactions in flight
// finish, and then the server's count stays put while every pending batch
// is looked at (and snoozed) by the worker twice over; resume finishes the
// campaign with every recipient sent exactly once.
func TestPauseStopsNewTransactions(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	emails := seedList(t, pool, "news", 200)
	srv := newSink(t)
	g := newGate(relayTransport(t, srv.Addr()))
	runWorker(t, pool, g)
	id := startCampaign(t, pool, "news", 5) // 40+ batches, one transaction each

	g.allow(5)
	g.blocked(t)
	if err := campaign.Pause(ctx, pool, id); err != nil {
		t.Fatal(err)
	}
	pausedAt := dbNow(t, pool)
	g.allow(100000) // no gate from here on: only the pause holds the worker back
	idle(t, pool)
	allLookedAtSince(t, pool, pausedAt)
	n := srv.Stats().Messages
	if n < 5 || n > 5+2 {
		t.Fatalf("%d transactions before the pause took hold, want 5 plus at most the 2 in flight", n)
	}
	if sent := count(t, pool, `SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'sent'`, id); int64(sent) != srv.Stats().Recipients {
		t.Fatalf("ledger says %d sent, server received %d", sent, srv.Stats().Recipients)
	}
	again := dbNow(t, pool)
	allLookedAtSince(t, pool, again)
	if m := srv.Stats().Messages; m != n {
		t.Fatalf("paused campaign sent %d more transactions", m-n)
	}
	if s, _ := campaign.GetStatus(ctx, pool, id); s.State != campaign.Paused {
		t.Fatalf("campaign is %s, want paused", s.State)
	}

	if err := campaign.Resume(ctx, pool, id); err != nil {
		t.Fatal(err)
	}
	st := waitDone(t, pool, id)
	if st.Sent != 200 || st.Pending() != 0 {
		t.Fatalf("status after resume = %+v, want 200 sent", st)
	}
	exactlyOnce(t, srv.Received(), emails, nil)
}

// TestPauseResumeManyTimes pauses and resumes a running campaign 100
// times, each time mid-run, and finds every recipient sent exactly once.
func TestPauseResumeManyTimes(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	emails := seedList(t, pool, "news", 990)
	srv := newSink(t)
	g := newGate(relayTransport(t, srv.Addr()))
	runWorker(t, pool, g)
	id := startCampaign(t, pool, "news", 2) // 495 batches: 4 transactions a round

	for i := range 100 {
		g.allow(2)
		g.blocked(t)
		if err := campaign.Pause(ctx, pool, id); err != nil {
			t.Fatalf("pause %d: %v", i+1, err)
		}
		g.allow(2) // let the batches in flight finish
		if i%10 == 9 {
			// Every tenth round stays paused until nothing runs; the
			// others resume at once, racing the runs that saw the pause.
			idle(t, pool)
		}
		if err := campaign.Resume(ctx, pool, id); err != nil {
			t.Fatalf("resume %d: %v", i+1, err)
		}
	}
	g.allow(100000)
	st := waitDone(t, pool, id)
	if st.Sent != 990 || st.Pending() != 0 {
		t.Fatalf("status = %+v, want 990 sent", st)
	}
	exactlyOnce(t, srv.Received(), emails, nil)
	if m := srv.Stats().Messages; m != 495 {
		t.Errorf("server saw %d transactions, want 495 (one per batch)", m)
	}
}

// TestCancel: recipients never attempted become cancelled and are never
// sent; those in flight finish as sent.
func TestCancel(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	seedList(t, pool, "news", 100)
	srv := newSink(t)
	g := newGate(relayTransport(t, srv.Addr()))
	runWorker(t, pool, g)
	id := startCampaign(t, pool, "news", 10)

	g.allow(3)
	g.blocked(t)
	res, err := campaign.Cancel(ctx, pool, id)
	if err != nil {
		t.Fatal(err)
	}
	g.allow(100000)
	waitFor(t, "every send job is finished", func() bool {
		return count(t, pool, `SELECT count(*) FROM river_job WHERE kind = 'send_batch'
			AND state NOT IN ('completed', 'cancelled', 'discarded')`) == 0
	})
	st, err := campaign.GetStatus(ctx, pool, id)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != campaign.Cancelled || st.Pending() != 0 {
		t.Fatalf("status = %+v, want cancelled with nothing pending", st)
	}
	if st.Sent+st.Cancelled != 100 || st.Cancelled != res.Cancelled || st.Sent < 30 || st.Sent > 50 {
		t.Fatalf("status = %+v, cancel result %+v: want 3 to 5 batches of 10 sent, the rest cancelled", st, res)
	}
	got := srv.Received()
	if int64(st.Sent) != srv.Stats().Recipients || len(got) != st.Sent {
		t.Fatalf("ledger says %d sent, server received %d (%d distinct)", st.Sent, srv.Stats().Recipients, len(got))
	}
	rows, err := pool.Query(ctx, `SELECT email FROM deliveries WHERE campaign_id = $1 AND state = 'cancelled'`, id)
	if err != nil {
		t.Fatal(err)
	}
	cancelled, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range cancelled {
		if got[e] != 0 {
			t.Errorf("%s is cancelled but the server received it", e)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM batches WHERE campaign_id = $1 AND NOT done`, id); n != 0 {
		t.Errorf("%d batches still open after cancel", n)
	}
}

// TestRetryOnlyChosenStates marks some recipients of a finished campaign
// deferred, bounced, unknown and expired, retries chosen states, and finds
// exactly those recipients received a second time.
func TestRetryOnlyChosenStates(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	emails := seedList(t, pool, "news", 90)
	srv := newSink(t)
	runWorker(t, pool, relayTransport(t, srv.Addr()))
	id := startCampaign(t, pool, "news", 10)
	waitDone(t, pool, id)
	exactlyOnce(t, srv.Received(), emails, nil)

	set := func(state string, es []string) {
		t.Helper()
		if _, err := pool.Exec(ctx, `UPDATE deliveries SET state = $3 WHERE campaign_id = $1 AND email = ANY($2)`, id, es, state); err != nil {
			t.Fatal(err)
		}
	}
	deferred, bounced, unknown, expired := emails[0:7], emails[10:15], emails[20:23], emails[40:44]
	set("deferred", deferred)
	set("bounced", bounced)
	set("unknown", unknown)
	set("expired", expired)
	// A bounced recipient suppressed since is not sent again.
	if err := contact.Suppress(ctx, pool, "", bounced[0], "bounced", "5.1.1", id); err != nil {
		t.Fatal(err)
	}

	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}
	res, err := campaign.Retry(ctx, pool, rc, id, []string{"deferred", "bounced"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Recipients != 7+4 || res.Skipped != 1 {
		t.Fatalf("retry = %+v, want 11 recipients, 1 skipped", res)
	}
	st := waitDone(t, pool, id)
	want := map[string]int{}
	for _, e := range slices.Concat(deferred, bounced[1:]) {
		want[e] = 2
	}
	exactlyOnce(t, srv.Received(), emails, want)
	if st.Bounced != 1 || st.Unknown != 3 || st.Expired != 4 || st.Sent != 90-8 {
		t.Fatalf("status = %+v, want 1 bounced (suppressed), 3 unknown, 4 expired, the rest sent", st)
	}

	// The default states: deferred, expired, unknown.
	res, err = campaign.Retry(ctx, pool, rc, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Recipients != 7 || res.Skipped != 0 {
		t.Fatalf("default retry = %+v, want the 3 unknown and 4 expired", res)
	}
	waitDone(t, pool, id)
	for _, e := range slices.Concat(unknown, expired) {
		want[e] = 2
	}
	exactlyOnce(t, srv.Received(), emails, want)

	// Nothing left in those states: nothing enqueued, the campaign stays done.
	res, err = campaign.Retry(ctx, pool, rc, id, []string{"deferred"})
	if err != nil || res.Recipients != 0 || res.Batches != 0 {
		t.Fatalf("empty retry = %+v, %v; want nothing done", res, err)
	}
	if s, _ := campaign.GetStatus(ctx, pool, id); s.State != campaign.Done {
		t.Fatalf("campaign is %s after an empty retry, want done", s.State)
	}
}

// TestTransitions: every operation refuses states it does not apply to,
// with an error naming the campaign and its state.
func TestTransitions(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	seedList(t, pool, "news", 3)
	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}
	newIn := func(state campaign.State) int64 {
		c, err := campaign.Create(ctx, pool, campaign.New{Name: string(state), List: "news", From: "a@sender.example.test", Subject: "s", Text: "t"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `UPDATE campaigns SET state = $2 WHERE id = $1`, c.ID, state); err != nil {
			t.Fatal(err)
		}
		return c.ID
	}
	ops := map[string]func(id int64) error{
		"pause":  func(id int64) error { return campaign.Pause(ctx, pool, id) },
		"resume": func(id int64) error { return campaign.Resume(ctx, pool, id) },
		"cancel": func(id int64) error { _, err := campaign.Cancel(ctx, pool, id); return err },
		"retry":  func(id int64) error { _, err := campaign.Retry(ctx, pool, rc, id, nil); return err },
	}
	tests := []struct {
		op    string
		state campaign.State
		ok    bool
	}{
		{"pause", campaign.Draft, false},
		{"pause", campaign.Running, true},
		{"pause", campaign.Paused, false},
		{"pause", campaign.Done, false},
		{"resume", campaign.Running, false},
		{"resume", campaign.Paused, true},
		{"resume", campaign.Done, false},
		{"resume", campaign.Cancelled, false},
		{"cancel", campaign.Draft, true},
		{"cancel", campaign.Running, true},
		{"cancel", campaign.Paused, true},
		{"cancel", campaign.Done, false},
		{"cancel", campaign.Cancelled, false},
		{"retry", campaign.Draft, false},
		{"retry", campaign.Running, true},
		{"retry", campaign.Paused, true},
		{"retry", campaign.Done, true},
		{"retry", campaign.Cancelled, false},
	}
	for _, tt := range tests {
		t.Run(tt.op+"/"+string(tt.state), func(t *testing.T) {
			id := newIn(tt.state)
			err := ops[tt.op](id)
			if tt.ok {
				if err != nil {
					t.Fatalf("%s of a %s campaign: %v", tt.op, tt.state, err)
				}
				return
			}
			if !errors.Is(err, campaign.ErrTransition) {
				t.Fatalf("%s of a %s campaign = %v, want ErrTransition", tt.op, tt.state, err)
			}
			want := fmt.Sprintf("cannot %s campaign %d: it is %s", tt.op, id, tt.state)
			if got := err.Error(); len(got) < len(want) || got[:len(want)] != want {
				t.Fatalf("error %q, want it to start with %q", got, want)
			}
		})
	}
	for op, f := range ops {
		if err := f(999999); !errors.Is(err, campaign.ErrNotFound) {
			t.Errorf("%s of a missing campaign = %v, want ErrNotFound", op, err)
		}
	}
}

func TestParseStates(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"", campaign.DefaultRetryStates, ""},
		{"deferred", []string{"deferred"}, ""},
		{" Bounced , deferred,bounced", []string{"bounced", "deferred"}, ""},
		{"deferred,expired,unknown,bounced", []string{"deferred", "expired", "unknown", "bounced"}, ""},
		{"deferred,sent", nil, `state 2 "sent": must be one of deferred, expired, unknown, bounced`},
		{"deferred,,expired", nil, `state 2 "": must be one of`},
	}
	for _, tt := range tests {
		got, err := campaign.ParseStates(tt.in)
		if tt.wantErr != "" {
			if err == nil || len(err.Error()) < len(tt.wantErr) || err.Error()[:len(tt.wantErr)] != tt.wantErr {
				t.Errorf("ParseStates(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseStates(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// TestRetrySmtpSink checks retry against Postfix's smtp-sink, an
// independent SMTP implementation: its own dump of every transaction's
// recipients shows the retried recipients twice and everyone else once.
func TestRetrySmtpSink(t *testing.T) {
	ss := smtptest.StartSmtpSink(t)
	pool := dbtest.Pool(t)
	ctx := context.Background()
	emails := seedList(t, pool, "news", 30)
	runWorker(t, pool, relayTransport(t, ss.Addr))
	id := startCampaign(t, pool, "news", 10)
	waitDone(t, pool, id)

	retried := []string{emails[1], emails[2], emails[17]}
	if _, err := pool.Exec(ctx, `UPDATE deliveries SET state = 'bounced' WHERE campaign_id = $1 AND email = ANY($2)`, id, retried); err != nil {
		t.Fatal(err)
	}
	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := campaign.Retry(ctx, pool, rc, id, []string{"bounced"}); err != nil || res.Recipients != 3 {
		t.Fatalf("retry = %+v, %v; want 3 recipients", res, err)
	}
	waitDone(t, pool, id)
	want := map[string]int{}
	for _, e := range retried {
		want[e] = 2
	}
	exactlyOnce(t, ss.Recipients(t), emails, want)
}
