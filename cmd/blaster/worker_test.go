package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

// workerCLI is a `blaster worker` running in the background as the
// command line would run it, its log (stderr) captured.
type workerCLI struct {
	logs        *syncBuffer
	metricsAddr string // host:port of --metrics-addr, when given
	stop        func() error
}

// startWorkerCLI runs `blaster worker ARGS` against url; the test's end
// stops it as SIGTERM would. --metrics-addr 127.0.0.1:0 binds a free port,
// reported in metricsAddr.
func startWorkerCLI(t *testing.T, url string, args ...string) *workerCLI {
	t.Helper()
	w := &workerCLI{logs: &syncBuffer{}}
	addrc := make(chan net.Addr, 1)
	a := &app{stdin: strings.NewReader(""), stdout: io.Discard, stderr: w.logs, listening: func(ad net.Addr) { addrc <- ad }}
	root := newRootCmd(a)
	root.SetArgs(append([]string{"--database-url", url, "worker", "--poll-interval", "20ms"}, args...))
	root.SetOut(io.Discard)
	root.SetErr(w.logs)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		defer a.close()
		errc <- root.ExecuteContext(ctx)
	}()
	var once bool
	var stopErr error
	w.stop = func() error {
		if !once {
			once = true
			cancel()
			stopErr = <-errc
		}
		return stopErr
	}
	t.Cleanup(func() {
		if err := w.stop(); err != nil {
			t.Errorf("worker: %v\n%s", err, w.logs)
		}
	})
	for _, arg := range args {
		if arg == "--metrics-addr" {
			select {
			case ad := <-addrc:
				w.metricsAddr = ad.String()
			case err := <-errc:
				t.Fatalf("worker stopped before listening: %v\n%s", err, w.logs)
			}
		}
	}
	return w
}

// startSMTPServer runs a go-smtp server for be on 127.0.0.1:0 until the
// test ends (after the workers it started have stopped and QUIT).
func startSMTPServer(t *testing.T, be gosmtp.Backend) string {
	t.Helper()
	srv := gosmtp.NewServer(be)
	srv.Domain = "smtp.example.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// seedAddresses puts the addresses on list name and starts a same-for-all
// campaign to it, returning the campaign's id.
func seedAddresses(t *testing.T, pool *pgxpool.Pool, name, text string, emails []string) int64 {
	t.Helper()
	ctx := context.Background()
	_, err := pool.Exec(ctx, `
		WITH l AS (INSERT INTO lists (name) VALUES ($1) RETURNING id),
		     c AS (INSERT INTO contacts (email) SELECT unnest($2::text[]) RETURNING id)
		INSERT INTO list_members (list_id, contact_id) SELECT l.id, c.id FROM l, c`, name, emails)
	if err != nil {
		t.Fatal(err)
	}
	c, err := campaign.Create(ctx, pool, campaign.New{Name: name, List: name,
		From: "News <news@sender.example.test>", Subject: "News", Text: text})
	if err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// waitCampaign polls the ledger until no recipient of campaign id is
// queued or sending.
func waitCampaign(t *testing.T, pool *pgxpool.Pool, id int64) *campaign.Status {
	t.Helper()
	var st *campaign.Status
	waitFor(t, fmt.Sprintf("campaign %d to be delivered", id), func() bool {
		var err error
		if st, err = campaign.GetStatus(context.Background(), pool, id); err != nil {
			t.Fatal(err)
		}
		return st.State == campaign.Done
	})
	return st
}

// scrape reads the metrics endpoint at addr.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

// sum adds the values of family name's series whose labels include want.
func sum(mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	var total float64
	mf := mfs[name]
	if mf == nil {
		return 0
	}
series:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

// TestWorkerMetrics delivers a small campaign through `blaster worker
// --metrics-addr` to an in-process go-smtp server that refuses some
// recipients, then scrapes /metrics: the counters equal what was sent.
func TestWorkerMetrics(t *testing.T) {
	url := dbtest.New(t)
	pool := openTestPool(t, url)
	addr := startSMTPServer(t, &rejectingBackend{})

	// 30 recipients at a.example.test; 15 at b.example.test and 5 that the
	// server refuses (550 5.1.1): one batch and one transaction per domain.
	var emails []string
	for i := range 30 {
		emails = append(emails, fmt.Sprintf("user%d@a.example.test", i))
	}
	for i := range 15 {
		emails = append(emails, fmt.Sprintf("user%d@b.example.test", i))
	}
	for i := range 5 {
		emails = append(emails, fmt.Sprintf("nobody%d@b.example.test", i))
	}
	id := seedAddresses(t, pool, "news", "Hello all.\n", emails)
	throttleFile := filepath.Join(t.TempDir(), "throttle.toml")
	if err := os.WriteFile(throttleFile, []byte("[route]\nrate = 1000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	relay := "smtp://" + addr + "?tls=none"
	w := startWorkerCLI(t, url, "--relay", relay, "--throttle-config", throttleFile, "--metrics-addr", "127.0.0.1:0")
	cli(t, url, "campaign", "start", fmt.Sprint(id))
	st := waitCampaign(t, pool, id)
	if st.Sent != 45 || st.Bounced != 5 {
		t.Fatalf("status %+v, want 45 sent and 5 bounced", st)
	}

	// Outcomes are counted just after their commit: poll until they are.
	var mfs map[string]*dto.MetricFamily
	waitFor(t, "the recipients to be counted", func() bool {
		mfs = scrape(t, w.metricsAddr)
		return sum(mfs, "blaster_recipients_total", nil) == 50 &&
			sum(mfs, "blaster_batch_seconds", map[string]string{"result": "completed"}) == 2
	})
	route := "smtp://" + addr + "?tls=none"
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"blaster_recipients_total", map[string]string{"route": route, "domain": "a.example.test", "outcome": "sent"}, 30},
		{"blaster_recipients_total", map[string]string{"domain": "b.example.test", "outcome": "sent"}, 15},
		{"blaster_recipients_total", map[string]string{"domain": "b.example.test", "outcome": "bounced"}, 5},
		{"blaster_messages_total", map[string]string{"outcome": "sent"}, 2},
		{"blaster_messages_total", nil, 2},
		{"blaster_smtp_replies_total", map[string]string{"stage": "rcpt", "code": "250"}, 45},
		{"blaster_smtp_replies_total", map[string]string{"stage": "rcpt", "code": "550", "enhanced": "5.1"}, 5},
		{"blaster_smtp_replies_total", map[string]string{"stage": "data", "code": "250"}, 2},
		{"blaster_smtp_transaction_seconds", map[string]string{"route": route}, 2},
		{"blaster_batch_seconds", map[string]string{"queue": "newsletter", "result": "completed"}, 2},
		{"blaster_sessions_failed_total", nil, 0},
		{"blaster_queue_jobs", map[string]string{"queue": "newsletter", "state": "completed"}, 2},
		{"blaster_pool_connections_created_total", map[string]string{"route": route}, sum(mfs, "blaster_pool_connections", map[string]string{"route": route, "state": "open"})},
		{"blaster_throttle_rate", map[string]string{"scope": "route:" + route}, 1000},
		{"blaster_throttle_suspended", map[string]string{"scope": "route:" + route}, 0},
	} {
		if got := sum(mfs, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := sum(mfs, "blaster_pool_connections", map[string]string{"route": route, "state": "open"}); got < 1 {
		t.Errorf("blaster_pool_connections{state=open} = %v, want the pooled connections", got)
	}

	resp, err := http.Get("http://" + w.metricsAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		t.Errorf("GET /healthz: %s %q", resp.Status, body)
	}
}

// rateLimitingBackend is a go-smtp server that answers every RCPT with
// Gmail's rate-limit deferral, 450 4.7.28, which the shipped back-off
// rules ("gmail-rate") answer with a suspension.
type rateLimitingBackend struct{}

func (rateLimitingBackend) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return rateLimitingSession{}, nil
}

type rateLimitingSession struct{}

func (rateLimitingSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (rateLimitingSession) Rcpt(string, *gosmtp.RcptOptions) error {
	return &gosmtp.SMTPError{Code: 450, EnhancedCode: gosmtp.EnhancedCode{4, 7, 28}, Message: "rate limited, try again later"}
}
func (rateLimitingSession) Data(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err }
func (rateLimitingSession) Reset()                 {}
func (rateLimitingSession) Logout() error          { return nil }

// TestWorkerMetricsSuspension: a relay that rate-limits gets the route
// suspended; the metrics show the back-off, the suspension and the next
// batch snoozed.
func TestWorkerMetricsSuspension(t *testing.T) {
	url := dbtest.New(t)
	pool := openTestPool(t, url)
	addr := startSMTPServer(t, rateLimitingBackend{})

	id := seedAddresses(t, pool, "news", "Hello all.\n",
		[]string{"ann@a.example.test", "amy@a.example.test", "bob@b.example.test", "ben@b.example.test"})
	route := "smtp://" + addr + "?tls=none"
	// One batch at a time: the first is deferred and suspends the route,
	// the second finds it suspended.
	w := startWorkerCLI(t, url, "--relay", route, "--newsletter-workers", "1", "--metrics-addr", "127.0.0.1:0")
	cli(t, url, "campaign", "start", fmt.Sprint(id))

	var mfs map[string]*dto.MetricFamily
	waitFor(t, "a batch to be snoozed", func() bool {
		mfs = scrape(t, w.metricsAddr)
		return sum(mfs, "blaster_batch_seconds", map[string]string{"result": "snoozed"}) >= 1 &&
			sum(mfs, "blaster_recipients_total", nil) == 2
	})
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"blaster_recipients_total", map[string]string{"outcome": "deferred"}, 2},
		{"blaster_messages_total", map[string]string{"outcome": "refused"}, 1},
		{"blaster_smtp_replies_total", map[string]string{"stage": "rcpt", "code": "450", "enhanced": "4.7"}, 2},
		{"blaster_throttle_backoffs_total", map[string]string{"action": "suspend", "rule": "gmail-rate"}, 1},
		{"blaster_throttle_suspended", map[string]string{"scope": "route:" + route}, 1},
		{"blaster_throttle_suspended_scopes", map[string]string{"kind": "route"}, 1},
		{"blaster_throttle_suspended_scopes", map[string]string{"kind": "domain"}, 0},
		{"blaster_batch_seconds", map[string]string{"queue": "newsletter", "result": "completed"}, 1},
	} {
		if got := sum(mfs, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := sum(mfs, "blaster_throttle_snoozes_total", map[string]string{"route": route}); got < 1 {
		t.Errorf("blaster_throttle_snoozes_total = %v, want at least 1", got)
	}
	// The throttle logs through the worker's logger (JSON, its level).
	if !strings.Contains(w.logs.String(), `"msg":"throttle: backing off"`) {
		t.Errorf("the worker's log lacks the throttle's back-off:\n%s", w.logs)
	}
}

// TestWorkerMetricsAddrInUse: a worker whose metrics address cannot be
// bound says so and exits non-zero.
func TestWorkerMetricsAddrInUse(t *testing.T) {
	url := dbtest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	err = run(context.Background(), []string{"--database-url", url, "worker", "--pickup", t.TempDir(),
		"--metrics-addr", addr}, strings.NewReader(""), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "listening on "+addr) {
		t.Fatalf("worker with a taken --metrics-addr: %v, want a listening error", err)
	}
}

// TestWorkerLogsNoSecrets runs a delivery with AUTH over STARTTLS at debug
// level, then one with a wrong password, and checks the log: JSON lines,
// delivery lines naming campaign, batch, route and domain, and neither
// password (plain or as AUTH PLAIN's base64) nor the body anywhere.
func TestWorkerLogsNoSecrets(t *testing.T) {
	const password = "s3cret-Pa55word-nobody-may-log"
	const bodyMarker = "Body-marker-7f3a9c: the text of the newsletter"
	url := dbtest.New(t)
	pool := openTestPool(t, url)
	ps := startProbeServer(t, "mailer", password, "127.0.0.1:0")
	passFile := filepath.Join(t.TempDir(), "relay.pass")
	if err := os.WriteFile(passFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := seedAddresses(t, pool, "news", bodyMarker+"\n", []string{"ann@a.example.test", "bob@b.example.test"})
	relay := "smtp://mailer@" + ps.addr + "?ca=" + ps.caFile + "&server_name=relay.example.test"
	w := startWorkerCLI(t, url, "--log-level", "debug", "--relay", relay, "--relay-password-file", passFile)
	cli(t, url, "campaign", "start", fmt.Sprint(id))
	if st := waitCampaign(t, pool, id); st.Sent != 2 {
		t.Fatalf("status %+v, want 2 sent (the server requires AUTH)", st)
	}
	waitFor(t, "the outcomes to be logged", func() bool { return strings.Count(w.logs.String(), `"outcomes recorded"`) == 2 })
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
	ps.mu.Lock()
	got := strings.Join(ps.msgs, "")
	ps.mu.Unlock()
	if !strings.Contains(got, bodyMarker) {
		t.Fatalf("the server did not receive the body; the test proves nothing")
	}

	// A wrong password: AUTH fails, the batch is deferred and the failure
	// logged, with neither password in it.
	const wrong = "Wr0ng-pa55word-also-secret"
	if err := os.WriteFile(passFile, []byte(wrong+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	id2 := seedAddresses(t, pool, "more", bodyMarker+"\n", []string{"cy@c.example.test"})
	w2 := startWorkerCLI(t, url, "--log-level", "debug", "--relay", relay, "--relay-password-file", passFile)
	cli(t, url, "campaign", "start", fmt.Sprint(id2))
	waitFor(t, "the AUTH failure to be logged", func() bool { return strings.Contains(w2.logs.String(), `"no session"`) })
	if err := w2.stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(w2.logs.String(), "535") {
		t.Errorf("the AUTH failure's log lacks the server's 535:\n%s", w2.logs)
	}

	logs := w.logs.String() + w2.logs.String()
	for _, secret := range []string{password, wrong, bodyMarker, "Body-marker",
		base64.StdEncoding.EncodeToString([]byte("\x00mailer\x00" + password)),
		base64.StdEncoding.EncodeToString([]byte("\x00mailer\x00" + wrong))} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains %q:\n%s", secret, logs)
		}
	}
	domains := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		v := decode[map[string]any](t, line) // JSON: stderr is not a terminal
		if v["msg"] != "outcomes recorded" && v["msg"] != "no session" {
			continue
		}
		for _, k := range []string{"campaign", "batch", "route", "domain"} {
			if _, ok := v[k]; !ok {
				t.Errorf("delivery log line lacks %q: %s", k, line)
			}
		}
		domains[fmt.Sprint(v["domain"])] = true
		if r := fmt.Sprint(v["route"]); !strings.HasPrefix(r, "smtp://mailer@"+ps.addr+"?") {
			t.Errorf("route %q, want the relay's URL (without the password)", r)
		}
	}
	if !domains["a.example.test"] || !domains["b.example.test"] || !domains["c.example.test"] {
		t.Errorf("delivery lines for domains %v, want a, b and c.example.test", domains)
	}
}
