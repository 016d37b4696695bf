package crashtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/worker"
)

// Config is one run.
type Config struct {
	// Pool is a migrated, empty database (internal/dbtest).
	Pool *pgxpool.Pool
	// DatabaseURL is Pool's URL, for the worker processes.
	DatabaseURL string
	// Recipients in the campaign, spread over Domains domains.
	Recipients int
	Domains    int
	// Kills is how many times the worker process is SIGKILLed (and
	// restarted), at points of progress drawn from Seed.
	Kills int
	Seed  uint64
	// AtLeastOnce resends recipients whose outcome is unknown.
	AtLeastOnce bool
	// Personalized sends one transaction per recipient; else one per batch.
	Personalized bool
	// Workers is the worker's --newsletter-workers. Default 8.
	Workers int
	// Command returns the command that runs `blaster` with args: the built
	// binary, or a test binary that runs main.
	Command func(args ...string) *exec.Cmd
	// Dir receives the worker logs and the throttle config.
	Dir string
	// Timeout bounds the run. Default 5 minutes.
	Timeout time.Duration
	// Log receives progress lines; nil for none.
	Log io.Writer
}

// maxWindow is the most recipients one batch in flight can have in its
// sending window: a same-for-all transaction of the campaign's max_rcpt
// (50 here); a personalized chunk is at most 32 (worker's maxChunk).
const maxWindow = 50

// Report is the reconciliation of the server's record with the ledger.
type Report struct {
	Recipients     int
	Kills          int
	GreetingFaults int64
	Elapsed        time.Duration
	// Ledger states.
	Sent, Bounced, Unknown int
	// UnknownLostReply are unknown after a lost reply the server injected,
	// UnknownKilled after a worker was killed in their sending window.
	UnknownLostReply, UnknownKilled int
	// MaybeDuplicated are sent recipients the ledger marks ambiguous.
	MaybeDuplicated int
	// Server: distinct recipients accepted, and accepted more than once.
	ServerAccepted, ServerTwice int
	// LostReplies injected by the server (recipient-transactions).
	LostReplies int
	// Violations of the guarantee, the first 20; empty when it held.
	Violations []string
	violations int
}

func (r *Report) violate(format string, args ...any) {
	r.violations++
	if len(r.Violations) < 20 {
		r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
	}
}

// String prints the report as a small table.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "recipients           %d\n", r.Recipients)
	fmt.Fprintf(&b, "worker kills         %d\n", r.Kills)
	fmt.Fprintf(&b, "421 greetings        %d\n", r.GreetingFaults)
	fmt.Fprintf(&b, "lost replies         %d (injected: connection closed after the final \".\")\n", r.LostReplies)
	fmt.Fprintf(&b, "ledger sent          %d\n", r.Sent)
	fmt.Fprintf(&b, "ledger bounced       %d\n", r.Bounced)
	fmt.Fprintf(&b, "ledger unknown       %d (lost reply %d, killed in window %d)\n", r.Unknown, r.UnknownLostReply, r.UnknownKilled)
	fmt.Fprintf(&b, "ledger maybe dup.    %d\n", r.MaybeDuplicated)
	fmt.Fprintf(&b, "server accepted      %d distinct, %d more than once\n", r.ServerAccepted, r.ServerTwice)
	fmt.Fprintf(&b, "elapsed              %s\n", r.Elapsed.Round(time.Millisecond))
	if r.violations == 0 {
		fmt.Fprintf(&b, "reconciliation       OK: no recipient lost, none accepted twice outside the ledger's ambiguous ones\n")
	} else {
		fmt.Fprintf(&b, "reconciliation       %d VIOLATIONS:\n", r.violations)
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "  %s\n", v)
		}
	}
	return b.String()
}

// OK reports whether the guarantee held.
func (r *Report) OK() bool { return r.violations == 0 }

// Run seeds a list, starts a campaign, runs a worker process against a
// fault server, kills and restarts it cfg.Kills times, waits until the
// campaign is done and reconciles.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.Domains <= 0 {
		cfg.Domains = 10
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Minute
	}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	srv, err := Listen("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer srv.Close()

	emails, err := seed(ctx, cfg.Pool, cfg.Recipients, cfg.Domains)
	if err != nil {
		return nil, err
	}
	id, err := startCampaign(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// No back-off rules: the faults are the server's, the test is the
	// ledger's; a suspended route would only make it slower.
	throttleFile := filepath.Join(cfg.Dir, "throttle.toml")
	if err := os.WriteFile(throttleFile, []byte("no_rules = true\n"), 0o600); err != nil {
		return nil, err
	}
	args := []string{"--database-url", cfg.DatabaseURL, "--log-level", "warn", "worker",
		"--relay", "smtp://" + srv.Addr() + "?tls=none", "--helo", "worker.blaster.test",
		"--throttle-config", throttleFile, "--newsletter-workers", fmt.Sprint(cfg.Workers),
		"--job-timeout", "2s", "--rescue-after", "3s", "--poll-interval", "50ms"}

	began := time.Now()
	// A steady worker, never killed, holds River's leadership: River's
	// scheduler (which makes retries due) runs on the leader only, and a
	// killed leader is replaced only when its lease lapses (~15 s). The
	// victim worker is the one killed and restarted.
	steady, err := startWorker(cfg, args, "steady")
	if err != nil {
		return nil, err
	}
	defer steady.stop()
	if err := waitUntil(ctx, func() (bool, error) {
		var n int
		err := cfg.Pool.QueryRow(ctx, "SELECT count(*) FROM river_leader").Scan(&n)
		return n > 0, err
	}); err != nil {
		return nil, fmt.Errorf("waiting for the steady worker to lead: %w", err)
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x6b696c6c))
	points := make([]int64, cfg.Kills)
	for i := range points {
		// Kill points: progress (recipients accepted by the server)
		// between 5% and 90% of the campaign.
		points[i] = int64(float64(cfg.Recipients) * (0.05 + 0.85*rng.Float64()))
	}
	slices.Sort(points)
	var w *process
	for i := 0; ; i++ {
		w, err = startWorker(cfg, args, fmt.Sprintf("victim-%02d", i))
		if err != nil {
			return nil, err
		}
		if i == len(points) {
			break
		}
		if err := waitUntil(ctx, func() (bool, error) { return srv.Total() >= points[i], nil }); err != nil {
			w.kill()
			return nil, fmt.Errorf("waiting for %d recipients accepted before kill %d: %w", points[i], i+1, err)
		}
		// A few milliseconds more, at random, so the kill lands anywhere
		// in a transaction, not just after an acceptance.
		waitCtx(ctx, time.Duration(rng.IntN(20))*time.Millisecond)
		w.kill()
		logf("kill %d at %d accepted (%s)", i+1, srv.Total(), time.Since(began).Round(time.Millisecond))
	}
	err = waitUntil(ctx, func() (bool, error) {
		s, err := campaign.GetStatus(ctx, cfg.Pool, id)
		if err != nil {
			return false, err
		}
		return s.State == campaign.Done, nil
	})
	elapsed := time.Since(began)
	w.stop()
	if err != nil {
		s, _ := campaign.GetStatus(context.WithoutCancel(ctx), cfg.Pool, id)
		return nil, fmt.Errorf("waiting for the campaign to finish: %w (status %+v; worker logs in %s)", err, s, cfg.Dir)
	}
	logf("campaign done (%s)", elapsed.Round(time.Millisecond))
	rep, err := reconcile(ctx, cfg, srv, id, emails)
	if err != nil {
		return nil, err
	}
	rep.Elapsed = elapsed
	return rep, nil
}

func seed(ctx context.Context, pool *pgxpool.Pool, n, domains int) ([]string, error) {
	var listID int64
	if err := pool.QueryRow(ctx, "INSERT INTO lists (name) VALUES ('crash') RETURNING id").Scan(&listID); err != nil {
		return nil, fmt.Errorf("seeding: %w", err)
	}
	emails := make([]string, n)
	rows := make([][]any, n)
	for i := range n {
		emails[i] = fmt.Sprintf("user%07d@d%02d.example.test", i, i%domains)
		rows[i] = []any{emails[i], fmt.Sprintf("User %d", i)}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"contacts"}, []string{"email", "name"}, pgx.CopyFromRows(rows)); err != nil {
		return nil, fmt.Errorf("seeding contacts: %w", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO list_members (list_id, contact_id) SELECT $1, id FROM contacts`, listID); err != nil {
		return nil, fmt.Errorf("seeding list: %w", err)
	}
	return emails, nil
}

func startCampaign(ctx context.Context, cfg Config) (int64, error) {
	n := campaign.New{Name: "crash", List: "crash", From: "News <news@sender.example.test>",
		Subject: "News", Text: "The news.\n",
		Settings: campaign.Settings{AtLeastOnce: cfg.AtLeastOnce, MaxRcpt: maxWindow,
			RetrySchedule: []campaign.Duration{campaign.Duration(time.Second)},
			MaxAge:        campaign.Duration(time.Hour)}}
	if cfg.Personalized {
		n.Subject, n.Text = "News for {{.Name}}", "Dear {{.Name}},\nthe news.\n"
	}
	c, err := campaign.Create(ctx, cfg.Pool, n)
	if err != nil {
		return 0, err
	}
	rc, err := worker.InsertClient(cfg.Pool)
	if err != nil {
		return 0, err
	}
	if _, err := campaign.Start(ctx, cfg.Pool, rc, c.ID); err != nil {
		return 0, err
	}
	return c.ID, nil
}

// process is a running worker process.
type process struct {
	cmd   *exec.Cmd
	log   *os.File
	done  chan error
	ended sync.Once
}

func startWorker(cfg Config, args []string, name string) (*process, error) {
	log, err := os.Create(filepath.Join(cfg.Dir, "worker-"+name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := cfg.Command(args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("starting worker process: %w", err)
	}
	p := &process{cmd: cmd, log: log, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

// kill SIGKILLs the worker and waits until it is gone.
func (p *process) kill() {
	p.ended.Do(func() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		p.log.Close()
	})
}

// stop asks the worker to stop (SIGTERM) and waits; SIGKILL after 20 s.
// It may be called more than once.
func (p *process) stop() {
	p.ended.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.done
		}
		p.log.Close()
	})
}

func waitUntil(ctx context.Context, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if err := waitCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// orphanText is the last_text of a recipient taken over from a dead run
// (worker/ledger.go).
const orphanText = "worker stopped while the transaction may have been in flight; outcome unknown"

func reconcile(ctx context.Context, cfg Config, srv *Server, id int64, emails []string) (*Report, error) {
	rows, err := cfg.Pool.Query(ctx, `SELECT email, state, ambiguous, coalesce(last_text, '') FROM deliveries WHERE campaign_id = $1`, id)
	if err != nil {
		return nil, fmt.Errorf("reading the ledger: %w", err)
	}
	type row struct {
		state     string
		ambiguous int
		text      string
	}
	ledger := map[string]row{}
	for rows.Next() {
		var e string
		var r row
		if err := rows.Scan(&e, &r.state, &r.ambiguous, &r.text); err != nil {
			rows.Close()
			return nil, err
		}
		ledger[e] = r
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	accepted, lost := srv.Accepted(), srv.Lost()
	rep := &Report{Recipients: len(emails), Kills: cfg.Kills, GreetingFaults: srv.GreetingFaults()}
	for _, l := range lost {
		rep.LostReplies += len(l)
	}
	for e, n := range accepted {
		if _, ok := ledger[e]; !ok {
			rep.violate("%s: accepted %d times by the server but not in the ledger", e, n)
		}
	}
	for _, e := range emails {
		r, ok := ledger[e]
		n := accepted[e]
		if n > 0 {
			rep.ServerAccepted++
		}
		if n > 1 {
			rep.ServerTwice++
		}
		if !ok {
			rep.violate("%s: no delivery row", e)
			continue
		}
		switch r.state {
		case campaign.StateSent:
			rep.Sent++
			if r.ambiguous > 0 {
				rep.MaybeDuplicated++
			}
			if n == 0 {
				rep.violate("%s: ledger says sent, the server never accepted it", e)
			}
		case campaign.StateBounced:
			rep.Bounced++
			if n != 0 || Plan(e, 1) != Reject550 {
				rep.violate("%s: ledger says bounced, the server accepted it %d times (planned %s)", e, n, Plan(e, 1))
			}
		case campaign.StateUnknown:
			rep.Unknown++
			if cfg.AtLeastOnce {
				rep.violate("%s: unknown under at-least-once (it should have been sent again)", e)
			}
			switch {
			case r.text == orphanText:
				rep.UnknownKilled++
			case len(lost[e]) > 0:
				rep.UnknownLostReply++
			default:
				rep.violate("%s: unknown, but no reply to it was lost and no worker died with it in flight (%q)", e, r.text)
			}
		default:
			rep.violate("%s: left %s: lost", e, r.state)
		}
		if n > 1 && (!cfg.AtLeastOnce || n-1 > r.ambiguous) {
			rep.violate("%s: accepted %d times, ledger marks %d ambiguous attempts (%s)", e, n, r.ambiguous, r.state)
		}
		if n == 1 && r.state != campaign.StateSent && r.state != campaign.StateUnknown {
			rep.violate("%s: accepted by the server, ledger says %s", e, r.state)
		}
	}
	// A kill leaves at most one sending window per batch in flight.
	if bound := cfg.Kills * cfg.Workers * maxWindow; rep.UnknownKilled > bound {
		rep.violate("%d recipients unknown from kills, more than %d kills x %d batches x %d per window", rep.UnknownKilled, cfg.Kills, cfg.Workers, maxWindow)
	}
	if rep.ServerTwice > 0 && !cfg.AtLeastOnce {
		rep.violate("%d recipients accepted twice under at-most-once", rep.ServerTwice)
	}
	return rep, nil
}

// ErrViolated is returned by Check when the guarantee did not hold.
var ErrViolated = errors.New("delivery guarantee violated")

// Check returns ErrViolated, with the report, when r found violations.
func (r *Report) Check() error {
	if r.OK() {
		return nil
	}
	return fmt.Errorf("%w:\n%s", ErrViolated, r)
}
