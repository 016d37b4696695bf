package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/internal/smtptest"
)

// probeServer is relay.example.test on loopback: STARTTLS with a
// certificate from a test CA (caFile), AUTH required as user/pass. msgs
// holds the bodies it accepted, guarded by mu.
type probeServer struct {
	addr   string
	caFile string

	mu   sync.Mutex
	msgs []string
}

func startProbeServer(t *testing.T, user, pass, listen string) *probeServer {
	t.Helper()
	ca := smtptest.NewCA(t, "relay.example.test")
	ps := &probeServer{caFile: ca.File}
	ps.addr = smtptest.StartServer(t, smtptest.Options{
		Domain: "relay.example.test", Listen: listen, TLS: ca.ServerConfig(), User: user, Pass: pass,
		OnMessage: func(m smtptest.Message) {
			ps.mu.Lock()
			ps.msgs = append(ps.msgs, m.Body)
			ps.mu.Unlock()
		},
	}).Addr
	return ps
}

const probePass = "Tr0ub4dor&3-secret"

func TestProbeSTARTTLSAuthAndSend(t *testing.T) {
	srv := startProbeServer(t, "mailer", probePass, "127.0.0.1:0")
	t.Setenv("BLASTER_RELAY_PASSWORD", probePass)
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"probe", srv.addr, "--starttls", "--user", "mailer",
		"--ca", srv.caFile, "--server-name", "relay.example.test", "--helo", "client.example.test",
		"--send-to", "someone@example.test", "--from", "ops@example.test"}, strings.NewReader(""), &out, &errOut)
	text := out.String()
	if err != nil {
		t.Fatalf("probe: %v\nstderr: %s\nstdout:\n%s", err, errOut.String(), text)
	}
	for _, want := range []string{
		"S: 220 relay.example.test",
		"C: EHLO client.example.test",
		"C: STARTTLS",
		"certificate 0: subject \"CN=relay.example.test\", issuer \"CN=blaster test CA\"",
		"certificate verification: ok for relay.example.test",
		"capabilities: PIPELINING",
		"AUTH PLAIN",
		"TLS: TLS 1.3, cipher TLS_",
		"C: AUTH PLAIN ********",
		"S: 235",
		"auth as mailer: ok",
		"recipient someone@example.test: 250",
		"test message to someone@example.test accepted",
		"C: QUIT",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Credentials never show, neither in clear nor base64.
	plain := base64.StdEncoding.EncodeToString([]byte("\x00mailer\x00" + probePass))
	if strings.Contains(text, probePass) || strings.Contains(text, plain) {
		t.Errorf("output shows the password:\n%s", text)
	}
	// Each line carries the time since the start.
	stamped := regexp.MustCompile(`^ *[0-9]+\.[0-9]ms  `)
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if !stamped.MatchString(line) {
			t.Errorf("line without a time: %q", line)
		}
	}
	srv.mu.Lock()
	n := len(srv.msgs)
	srv.mu.Unlock()
	if n != 1 {
		t.Errorf("server received %d messages, want 1", n)
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}

func TestProbeReportsAnUntrustedCertificate(t *testing.T) {
	srv := startProbeServer(t, "mailer", probePass, "127.0.0.1:0")
	otherCA := smtptest.NewCA(t, "relay.example.test").File

	var out bytes.Buffer
	err := runProbe(context.Background(), &out, probeOptions{target: srv.addr, startTLS: true,
		caFile: otherCA, serverName: "relay.example.test", localName: "client.example.test", timeout: 10 * time.Second})
	if err == nil {
		t.Fatalf("probe of a server with an untrusted certificate succeeded:\n%s", out.String())
	}
	text := out.String()
	for _, want := range []string{"certificate 0: subject \"CN=relay.example.test\"", "certificate verification: FAILED", "FAILED: "} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}

	// With --insecure-skip-verify the failure is still shown, and the
	// probe goes on.
	out.Reset()
	err = runProbe(context.Background(), &out, probeOptions{target: srv.addr, startTLS: true,
		caFile: otherCA, serverName: "relay.example.test", localName: "client.example.test",
		insecureSkipVerify: true, timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("probe with --insecure-skip-verify: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "FAILED for relay.example.test") || !strings.Contains(out.String(), "going on") {
		t.Errorf("output does not report the failed verification:\n%s", out.String())
	}
}

func TestProbeBadPassword(t *testing.T) {
	srv := startProbeServer(t, "mailer", probePass, "127.0.0.1:0")
	pwFile := filepath.Join(t.TempDir(), "pw")
	_ = os.WriteFile(pwFile, []byte("wrong-password\n"), 0o600)
	var out bytes.Buffer
	err := runProbe(context.Background(), &out, probeOptions{target: srv.addr, startTLS: true, user: "mailer",
		passwordFile: pwFile, caFile: srv.caFile, serverName: "relay.example.test",
		localName: "client.example.test", timeout: 10 * time.Second, getenv: func(string) string { return "" }})
	if err == nil {
		t.Fatal("probe with a wrong password succeeded")
	}
	if !strings.Contains(out.String(), "auth as mailer: FAILED") || !strings.Contains(out.String(), "535") {
		t.Errorf("output does not report the AUTH failure:\n%s", out.String())
	}
	if strings.Contains(out.String(), "wrong-password") {
		t.Errorf("output shows the password:\n%s", out.String())
	}
}

func TestProbeMXTriesEachHostInOrder(t *testing.T) {
	srv := startProbeServer(t, "mailer", probePass, "127.0.0.2:0")
	_, port, _ := net.SplitHostPort(srv.addr)
	p, _ := strconv.Atoi(port)
	lookupMX := func(_ context.Context, d string) ([]*net.MX, error) {
		return []*net.MX{{Host: "backup.example.test.", Pref: 20}, {Host: "dead.example.test.", Pref: 10}}, nil
	}
	lookupHost := func(_ context.Context, h string) ([]string, error) {
		switch h {
		case "dead.example.test":
			return []string{"127.0.0.9"}, nil // nothing listens there
		case "backup.example.test":
			return []string{"127.0.0.2"}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: h, IsNotFound: true}
	}
	var out bytes.Buffer
	err := runProbe(context.Background(), &out, probeOptions{mx: "example.test", port: p,
		caFile: srv.caFile, serverName: "relay.example.test", localName: "client.example.test",
		timeout: 10 * time.Second, lookupMX: lookupMX, lookupHost: lookupHost})
	if err != nil {
		t.Fatalf("probe --mx: %v\n%s", err, out.String())
	}
	text := out.String()
	dead := strings.Index(text, "== 127.0.0.9:"+port+" (dead.example.test)")
	backup := strings.Index(text, "== 127.0.0.2:"+port+" (backup.example.test)")
	if dead < 0 || backup < 0 || dead > backup {
		t.Errorf("MX hosts not probed in preference order (dead at %d, backup at %d):\n%s", dead, backup, text)
	}
	if !strings.Contains(text, "S: 220 relay.example.test") || !strings.Contains(text, "certificate verification: ok") {
		t.Errorf("backup MX not probed fully:\n%s", text)
	}
}
