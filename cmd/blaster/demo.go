package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/contact"
	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/localpg"
	"github.com/blaster-mail/blaster/transport"
	"github.com/blaster-mail/blaster/worker"
)

// demoList is the list the demo's sample contacts join.
const demoList = "demo"

// demoOptions are `blaster demo`'s settings.
type demoOptions struct {
	// dir holds the sample CSV and, when needed, the private PostgreSQL
	// cluster (dir/pg). Default ".demo".
	dir string
	// contacts is the size of the generated sample. Default 10,000.
	contacts int
	// workers is how many batches are sent at once, each on its own SMTP
	// connection to the sink. Default 16.
	workers int
	// privatePG starts a private PostgreSQL cluster in dir/pg even when
	// another server is at hand. Default false.
	privatePG bool
	// timeout bounds the wait for the campaign to finish. Default 10 minutes.
	timeout time.Duration
	// sinkCommand builds the command that runs `blaster sink` on addr.
	// Default: this executable. Tests substitute their own binary.
	sinkCommand func(addr string) (*exec.Cmd, error)
}

func newDemoCmd(a *app) *cobra.Command {
	o := demoOptions{sinkCommand: selfSinkCommand}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Send a personalized campaign to 10,000 sample contacts through a local sink",
		Long: `Run blaster end to end on this machine with nothing set up beforehand.

The database is $DATABASE_URL (or --database-url) if given; else the
PostgreSQL server at 127.0.0.1:5432 if it lets user postgres (or you) in
without a password, in a database blaster_demo; else a private cluster in
DIR/pg started from the installed PostgreSQL binaries (as root, the Debian
package postgresql is installed when missing, and the server runs as the
postgres OS user), stopped again at the end. --private-postgres goes
straight to the private cluster.

The demo migrates the schema, starts ` + "`blaster sink`" + ` on a free loopback port,
generates DIR/contacts.csv (sample contacts at example.* and *.test
addresses), imports it into list "demo", creates and starts a personalized
campaign, sends it with an in-process worker through the sink, shows
progress every second and prints the final status. Running it again creates
a new campaign on the same list. It exits non-zero unless every recipient
was sent.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), a, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", ".demo", "directory for the sample CSV and a private PostgreSQL cluster")
	f.IntVar(&o.contacts, "contacts", 10_000, "number of sample contacts")
	f.IntVar(&o.workers, "workers", 16, "batches sent at once (one SMTP connection each)")
	f.BoolVar(&o.privatePG, "private-postgres", false, "always use a private PostgreSQL cluster in DIR/pg")
	f.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up when the campaign has not finished after this long")
	return cmd
}

// runDemo is `blaster demo`. Everything it starts (database, sink, worker)
// is stopped before it returns, also when ctx ends (SIGINT).
func runDemo(ctx context.Context, a *app, o demoOptions) (err error) {
	if o.contacts <= 0 || o.workers <= 0 {
		return errors.New("demo: --contacts and --workers must be at least 1")
	}
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return fmt.Errorf("demo: creating %s: %w", o.dir, err)
	}
	cleanup := context.WithoutCancel(ctx)

	// 1. The database.
	url := a.databaseURL
	if url == "" || o.privatePG {
		ensure := localpg.Ensure
		if o.privatePG {
			ensure = localpg.Private
		}
		var stopPG func() error
		url, stopPG, err = ensure(ctx, filepath.Join(o.dir, "pg"), a.logger)
		if err != nil {
			return fmt.Errorf("demo: finding a PostgreSQL: %w", err)
		}
		defer func() { err = errors.Join(err, stopPG()) }()
	}
	// River's producer and leader take a few connections; each send job
	// holds one while it records outcomes.
	pool, err := db.Open(ctx, url, o.workers+8)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer pool.Close()
	if err := db.Migrate(ctx, pool, a.stdout); err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	// 2. The sink, a child process like the one an operator would run.
	sink, err := startSink(ctx, a, o.sinkCommand)
	if err != nil {
		return err
	}
	sinkSummary, sinkStopped, summaryShown := "", false, false
	stopSink := func() error {
		if sinkStopped {
			return nil
		}
		sinkStopped = true
		var err error
		sinkSummary, err = sink.stop()
		return err
	}
	showSinkSummary := func() {
		if sinkSummary != "" && !summaryShown {
			fmt.Fprintln(a.stdout, sinkSummary)
			summaryShown = true
		}
	}
	defer func() {
		err = errors.Join(err, stopSink())
		showSinkSummary()
	}()
	fmt.Fprintf(a.stdout, "sink listening on %s\n", sink.addr)

	// 3. Sample contacts, imported (again: a rerun changes nothing).
	csvPath := filepath.Join(o.dir, "contacts.csv")
	if err := writeSampleCSV(csvPath, o.contacts); err != nil {
		return err
	}
	f, err := os.Open(csvPath)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	sum, err := contact.Import(ctx, pool, f, contact.ImportOptions{List: demoList, Source: csvPath})
	f.Close()
	if err != nil {
		return fmt.Errorf("demo: importing %s: %w", csvPath, err)
	}
	fmt.Fprintf(a.stdout, "imported %s into list %q: %d new, %d updated, %d unchanged, %d rejected\n",
		csvPath, demoList, sum.Inserted, sum.Updated, sum.Unchanged, sum.Rejected+sum.Duplicates)

	// 4. The worker, sending through the sink. tls=none: the sink offers
	// no STARTTLS, and the connection never leaves loopback.
	relay, err := transport.ParseRelayURL(fmt.Sprintf("smtp://%s?tls=none&max_conns=%d", sink.addr, o.workers))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	tr, err := transport.NewRelay([]transport.RelayConfig{relay}, transport.RelayOptions{LocalName: "demo.blaster.test"})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	w, err := worker.New(worker.Config{Pool: pool, Transport: tr, Logger: a.logger, NewsletterWorkers: o.workers})
	if err != nil {
		tr.Close()
		return fmt.Errorf("demo: %w", err)
	}
	// Not ctx: River cancels the jobs in flight when its start context
	// ends. On SIGINT, stopWorker lets them finish their transactions.
	if err := w.Start(cleanup); err != nil {
		tr.Close()
		return fmt.Errorf("demo: %w", err)
	}
	workerStopped := false
	stopWorker := func() error {
		if workerStopped {
			return nil
		}
		workerStopped = true
		stopCtx, cancel := context.WithTimeout(cleanup, time.Minute)
		defer cancel()
		if err := w.Stop(stopCtx); err != nil {
			return fmt.Errorf("demo: stopping the worker: %w", err)
		}
		return nil
	}
	defer func() { err = errors.Join(err, stopWorker()) }()

	// 5. A personalized campaign, started.
	c, err := campaign.Create(ctx, pool, campaign.New{
		Name:    "demo " + time.Now().Format(time.DateTime),
		List:    demoList,
		From:    "Blaster Demo <demo@example.test>",
		Subject: "Hello {{.Name}}",
		Text:    demoText,
		HTML:    demoHTML,
	})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	res, err := campaign.Start(ctx, pool, w.Client(), c.ID)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(a.stdout, "started campaign %d %q: %d recipients in %d batches\n", c.ID, c.Name, res.Recipients, res.Batches)

	// 6. Progress until done; then the worker stops (finishing what is in
	// flight, also on SIGINT) before the final status is read, so that it
	// is the ledger's last word.
	followErr := followCampaign(ctx, a.stdout, pool, c.ID, o.timeout)
	stopErr := errors.Join(stopWorker(), stopSink())
	s, err := campaign.GetStatus(cleanup, pool, c.ID)
	if err != nil {
		return errors.Join(followErr, stopErr, fmt.Errorf("demo: %w", err))
	}
	fmt.Fprintln(a.stdout)
	writeStatus(a.stdout, s)
	if s.StartedAt != nil && s.FinishedAt != nil {
		if d := s.FinishedAt.Sub(*s.StartedAt); d > 0 {
			fmt.Fprintf(a.stdout, "%-12s%.0f messages/s\n", "rate", float64(s.Sent)/d.Seconds())
		}
	}
	showSinkSummary()
	if followErr != nil || stopErr != nil {
		if s.State == campaign.Running {
			fmt.Fprintf(a.stdout, "campaign %d stays running: any worker on this database (the next demo run, too) finishes it\n", c.ID)
		}
		return errors.Join(followErr, stopErr)
	}
	if s.State != campaign.Done || s.Sent != s.Total {
		return fmt.Errorf("demo: campaign %d ended %s with %d of %d recipients sent", c.ID, s.State, s.Sent, s.Total)
	}
	// The sink's own count, an independent check of the ledger.
	if n, ok := sinkRecipients(sinkSummary); !ok || n < s.Sent {
		return fmt.Errorf("demo: the ledger says %d sent, but the sink reports %q", s.Sent, sinkSummary)
	}
	return nil
}

// followCampaign prints a progress line every second until campaign id is
// done or cancelled; it returns an error when ctx ends or timeout passes
// first.
func followCampaign(ctx context.Context, w io.Writer, q campaign.Querier, id int64, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastSent, lastAt := 0, time.Now()
	for {
		s, err := campaign.GetStatus(ctx, q, id)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		now := time.Now()
		rate := float64(s.Sent-lastSent) / now.Sub(lastAt).Seconds()
		lastSent, lastAt = s.Sent, now
		fmt.Fprintf(w, "%s  sent %d/%d  %.0f/s  deferred %d  bounced %d\n",
			now.Format(time.TimeOnly), s.Sent, s.Total, rate, s.Deferred, s.Bounced)
		if s.State == campaign.Done || s.State == campaign.Cancelled {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: interrupted with campaign %d at %d of %d sent: %w", id, s.Sent, s.Total, ctx.Err())
		case <-deadline.C:
			return fmt.Errorf("demo: campaign %d not done after %s (%d of %d sent)", id, timeout, s.Sent, s.Total)
		case <-tick.C:
		}
	}
}

const demoText = `Hello {{.Name}},

this is blaster's demo newsletter, written for you in {{.Attrs.city}}.
It reached you through a local sink, so nobody else will read it.

-- 
The blaster demo
`

const demoHTML = `<!DOCTYPE html>
<html><body>
<p>Hello {{.Name}},</p>
<p>this is blaster's demo newsletter, written for you in <b>{{.Attrs.city}}</b>.
It reached you through a local sink, so nobody else will read it.</p>
<p>&mdash; The blaster demo</p>
</body></html>
`

// writeSampleCSV writes n sample contacts to path (email, name, city). The
// sample depends on n only, so a rerun imports the same contacts. Addresses
// are at reserved names only (RFC 2606: .test, example.com/.net/.org).
func writeSampleCSV(path string, n int) error {
	first := []string{"Ada", "Alan", "Barbara", "Claude", "Dennis", "Donald", "Edsger", "Frances", "Grace", "Hedy",
		"Ivan", "John", "Ken", "Leslie", "Margaret", "Niklaus", "Radia", "Rob", "Sophie", "Tim"}
	last := []string{"Allen", "Backus", "Cerf", "Dijkstra", "Hamilton", "Hopper", "Kahn", "Knuth", "Lamarr", "Lamport",
		"Liskov", "Lovelace", "McCarthy", "Perlman", "Pike", "Ritchie", "Shannon", "Thompson", "Turing", "Wirth"}
	cities := []string{"Amsterdam", "Berlin", "Buenos Aires", "Cairo", "Lagos", "Lisbon", "Montréal", "Mumbai",
		"Osaka", "Oslo", "São Paulo", "Zürich"}
	domains := []string{"example.com", "example.net", "example.org", "example.test", "mail.example.test", "news.test"}

	rng := rand.New(rand.NewPCG(2, 42)) // fixed seed: the same sample every run
	var buf bytes.Buffer
	cw := csv.NewWriter(&buf)
	cw.Write([]string{"email", "name", "city"})
	for i := range n {
		fn, ln := first[rng.IntN(len(first))], last[rng.IntN(len(last))]
		email := fmt.Sprintf("%s.%s.%d@%s", strings.ToLower(fn), strings.ToLower(ln), i+1, domains[rng.IntN(len(domains))])
		cw.Write([]string{email, fn + " " + ln, cities[rng.IntN(len(cities))]})
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("demo: writing sample contacts: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("demo: writing sample contacts: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("demo: writing sample contacts: %w", err)
	}
	return nil
}

// selfSinkCommand runs `blaster sink` from this very executable.
func selfSinkCommand(addr string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("demo: finding the blaster executable: %w", err)
	}
	return exec.Command(exe, "sink", "--addr", addr, "--log-level", "warn"), nil
}

// sinkProcess is a running `blaster sink` child.
type sinkProcess struct {
	addr   string
	cmd    *exec.Cmd
	stdout *bytes.Buffer // read only after exited is closed
	exited chan struct{}
	err    error // cmd.Wait's, set before exited is closed
}

// startSink starts the sink on a free loopback port and waits until it
// accepts connections. The port is picked by listening on port 0 and
// closing; if another process takes it meanwhile, the sink exits and the
// next try picks another.
func startSink(ctx context.Context, a *app, command func(addr string) (*exec.Cmd, error)) (*sinkProcess, error) {
	var lastErr error
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("demo: finding a free port for the sink: %w", err)
		}
		addr := ln.Addr().String()
		ln.Close()

		cmd, err := command(addr)
		if err != nil {
			return nil, err
		}
		sp := &sinkProcess{addr: addr, cmd: cmd, stdout: &bytes.Buffer{}, exited: make(chan struct{})}
		cmd.Stdout = sp.stdout
		cmd.Stderr = a.stderr
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("demo: starting the sink: %w", err)
		}
		go func() {
			sp.err = cmd.Wait()
			close(sp.exited)
		}()
		if err := sp.waitReady(ctx); err != nil {
			sp.stop()
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		return sp, nil
	}
	return nil, fmt.Errorf("demo: starting the sink: %w", lastErr)
}

// waitReady polls the sink's port until it accepts a connection, the sink
// exits, ctx ends or 30 seconds pass.
func (sp *sinkProcess) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", sp.addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-sp.exited:
			return fmt.Errorf("sink on %s exited: %v", sp.addr, sp.err)
		case <-ctx.Done():
			return fmt.Errorf("sink on %s not answering: %w", sp.addr, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends the sink SIGTERM, waits for it, and returns its summary line
// ("sink: N connections, N messages, N recipients, N bytes").
func (sp *sinkProcess) stop() (summary string, err error) {
	if err := sp.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return "", fmt.Errorf("demo: stopping the sink: %w", err)
	}
	select {
	case <-sp.exited:
	case <-time.After(30 * time.Second):
		sp.cmd.Process.Kill()
		<-sp.exited
	}
	sc := bufio.NewScanner(bytes.NewReader(sp.stdout.Bytes()))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "sink:") {
			summary = sc.Text()
		}
	}
	// A sink stopped by our SIGTERM, or by the terminal's SIGINT reaching
	// the whole process group, exits 0; anything else is worth reporting.
	if sp.err != nil {
		return summary, fmt.Errorf("demo: sink on %s: %w", sp.addr, sp.err)
	}
	return summary, nil
}

// sinkRecipients reads the recipient count from the sink's summary line.
func sinkRecipients(summary string) (int, bool) {
	fields := strings.Fields(summary)
	for i := 1; i < len(fields); i++ {
		if strings.TrimRight(fields[i], ",") == "recipients" {
			n, err := strconv.Atoi(fields[i-1])
			return n, err == nil
		}
	}
	return 0, false
}
