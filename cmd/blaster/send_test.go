package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/sink"
	"github.com/blaster-mail/blaster/transport"
	"github.com/blaster-mail/blaster/worker"
)

// sendTestWorker runs a worker in this process, delivering through the
// relay transport to the plaintext SMTP server at addr, as 'blaster
// worker --relay smtp://ADDR?tls=none' would.
func sendTestWorker(t *testing.T, url, addr string) {
	t.Helper()
	ctx := context.Background()
	pool, err := db.Open(ctx, url, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := transport.ParseRelayURL("smtp://" + addr + "?tls=none")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := transport.NewRelay([]transport.RelayConfig{cfg}, transport.RelayOptions{LocalName: "worker.blaster.test"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Pool: pool, Transport: tr, FetchInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := w.Stop(ctx); err != nil {
			t.Errorf("stopping worker: %v", err)
		}
		pool.Close()
	})
}

func runSendCLI(t *testing.T, url, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args = append([]string{"--database-url", url, "--log-level", "warn", "send",
		"--from", "Ops <ops@sender.example.test>", "--subject", "Disk full", "--poll-interval", "20ms"}, args...)
	err := run(ctx, args, strings.NewReader(stdin), &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

// TestSendWait sends an alert to two --to addresses through the in-process
// sink and waits for the outcome.
func TestSendWait(t *testing.T) {
	url := dbtest.New(t)
	srv := sink.New(sink.Config{Record: true})
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() }) // after the worker stops and QUITs
	sendTestWorker(t, url, srv.Addr())

	stdout, stderr, err := runSendCLI(t, url, "", "--text", "The disk is full.\n",
		"--to", "ann@alpha.example.test", "--to", "Bob@Beta.Example.Test", "--to", "ANN@alpha.example.test", "--wait")
	if err != nil {
		t.Fatalf("send: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	for _, want := range []string{
		"2 recipients (list alert-",
		"ann@alpha.example.test  sent",
		"Bob@beta.example.test   sent",
		"2 of 2 recipients sent",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	got := srv.Received()
	if len(got) != 2 || got["ann@alpha.example.test"] != 1 || got["Bob@beta.example.test"] != 1 {
		t.Fatalf("server received %v, want ann and Bob once each", got)
	}

	// The campaign is an alert; its list is the fresh alert-* list.
	pool, err := db.Open(context.Background(), url, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var kind, list string
	if err := pool.QueryRow(context.Background(), `
		SELECT c.kind, l.name FROM campaigns c JOIN lists l ON l.id = c.list_id`).Scan(&kind, &list); err != nil {
		t.Fatal(err)
	}
	if kind != "alert" || !strings.HasPrefix(list, "alert-") {
		t.Fatalf("campaign kind %q list %q, want an alert on an alert-* list", kind, list)
	}
}

// rejectingBackend is a go-smtp server that refuses RCPT TO for local
// parts starting with "nobody" with 550 5.1.1 and accepts the rest.
type rejectingBackend struct {
	mu       sync.Mutex
	accepted []string
}

func (b *rejectingBackend) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return &rejectingSession{b: b}, nil
}

type rejectingSession struct {
	b     *rejectingBackend
	rcpts []string
}

func (s *rejectingSession) Mail(string, *gosmtp.MailOptions) error { return nil }

func (s *rejectingSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	if strings.HasPrefix(to, "nobody") {
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *rejectingSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	s.b.mu.Lock()
	s.b.accepted = append(s.b.accepted, s.rcpts...)
	s.b.mu.Unlock()
	return nil
}

func (s *rejectingSession) Reset()        { s.rcpts = nil }
func (s *rejectingSession) Logout() error { return nil }

// TestSendWaitFailure reads recipients from stdin into a named list; one
// is refused by the server, one is suppressed: send exits with status 2
// and prints each outcome with its reply.
func TestSendWaitFailure(t *testing.T) {
	url := dbtest.New(t)
	be := &rejectingBackend{}
	sendTestWorker(t, url, startSMTPServer(t, be))

	if _, _, err := runContactCLI(t, url, "", "suppress", "add", "gone@alpha.example.test"); err != nil {
		t.Fatalf("suppress add: %v", err)
	}
	stdin := "# on call\nann@alpha.example.test\n\n  nobody@beta.example.test  \ngone@alpha.example.test\n"
	stdout, stderr, err := runSendCLI(t, url, stdin, "--text", "Disk full.", "--list", "oncall", "--file", "-", "--wait")
	var ee *exitError
	if !errors.As(err, &ee) || exitCode(err) != 2 {
		t.Fatalf("send = %v, want an exit status 2\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	if want := "campaign 1: 2 of 3 recipients not sent"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	for _, want := range []string{
		"list oncall",
		"ann@alpha.example.test    sent        250",
		"nobody@beta.example.test  bounced     550   5.1.1     no such user here",
		"gone@alpha.example.test   suppressed  -",
		"1 of 3 recipients sent",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if len(be.accepted) != 1 || be.accepted[0] != "ann@alpha.example.test" {
		t.Errorf("server accepted %v, want ann only", be.accepted)
	}
}

// TestSendBadAddresses: every invalid address is reported with its
// position and nothing is written.
func TestSendBadAddresses(t *testing.T) {
	url := dbtest.New(t)
	path := filepath.Join(t.TempDir(), "rcpts.txt")
	if err := os.WriteFile(path, []byte("ok@alpha.example.test\n\nno-at-sign\nAnn <ann@alpha.example.test>\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := runSendCLI(t, url, "", "--text", "x", "--to", "a@alpha.example.test", "--to", "b@", "--file", path)
	if err == nil || err.Error() != "3 invalid recipient addresses: nothing sent" {
		t.Fatalf("send = %v, want 3 invalid addresses\nstdout:\n%s", err, stdout)
	}
	for _, want := range []string{
		`--to #2: invalid address "b@"`,
		path + `:3: invalid address "no-at-sign": missing @`,
		path + `:4: invalid address "Ann <ann@alpha.example.test>": display names`,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	pool, err := db.Open(context.Background(), url, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM campaigns) + (SELECT count(*) FROM contacts)`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d campaigns and contacts written, want none", n)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--to", "a@alpha.example.test"}, "no body"},
		{[]string{"--text", "x"}, "no recipients"},
		{[]string{"--text", "x", "--list", "missing"}, `list "missing" does not exist`},
	} {
		_, _, err := runSendCLI(t, url, "", tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("send %v = %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}

func TestReadAddresses(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		bad  []string
	}{
		{"", nil, nil},
		{"a@b.example.test\n", []string{"a@b.example.test"}, nil},
		{"\uFEFFa@B.Example.Test\r\n# comment\n\n   \nc@d.example.test", []string{"a@b.example.test", "c@d.example.test"}, nil},
		{"a@b.example.test\nx\n#y\nq@[192.0.2.1]\n", []string{"a@b.example.test"}, []string{"f:2: ", "f:4: "}},
	}
	for _, tt := range tests {
		got, bad, err := readAddresses(strings.NewReader(tt.in), "f")
		if err != nil {
			t.Fatalf("readAddresses(%q): %v", tt.in, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("readAddresses(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if len(bad) != len(tt.bad) {
			t.Errorf("readAddresses(%q) bad = %v, want %d", tt.in, bad, len(tt.bad))
			continue
		}
		for i, e := range bad {
			if !strings.HasPrefix(e.Error(), tt.bad[i]) {
				t.Errorf("readAddresses(%q) bad[%d] = %v, want prefix %q", tt.in, i, e, tt.bad[i])
			}
		}
	}
}

// FuzzReadAddresses: any input gives addresses that parse again to
// themselves, or errors naming a line of the input.
func FuzzReadAddresses(f *testing.F) {
	f.Add("a@b.example.test\n# c\n\nbad\n")
	f.Add("\uFEFF\"q u\"@b.example.test\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		got, bad, err := readAddresses(strings.NewReader(in), "f")
		if err != nil {
			return // a line longer than the scanner's buffer
		}
		lines := strings.Count(in, "\n") + 1
		for _, a := range got {
			again, _, err := readAddresses(strings.NewReader(a), "f")
			if err != nil || len(again) != 1 || again[0] != a {
				t.Fatalf("address %q does not read back as itself: %q, %v", a, again, err)
			}
		}
		for _, e := range bad {
			var line int
			if _, err := fmt.Sscanf(e.Error(), "f:%d:", &line); err != nil || line < 1 || line > lines {
				t.Fatalf("error %q names no line of the %d-line input", e, lines)
			}
		}
	})
}
