package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
)

// probeServer is an in-process go-smtp server offering STARTTLS with a
// certificate from a throw-away CA, and AUTH PLAIN.
type probeServer struct {
	addr   string
	caFile string

	mu   sync.Mutex
	msgs []string
}

func startProbeServer(t *testing.T, user, pass, listen string) *probeServer {
	t.Helper()
	tlsCfg, caFile := probeTestCA(t, "relay.example.test")
	s := &probeServer{caFile: caFile}
	srv := gosmtp.NewServer(gosmtp.BackendFunc(func(*gosmtp.Conn) (gosmtp.Session, error) {
		return &probeSession{s: s, user: user, pass: pass}, nil
	}))
	srv.Domain = "relay.example.test"
	srv.TLSConfig = tlsCfg
	srv.ErrorLog = probeLogger{}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return s
}

type probeSession struct {
	s          *probeServer
	user, pass string
	authed     bool
}

func (ps *probeSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (ps *probeSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, u, p string) error {
		if u != ps.user || p != ps.pass {
			return &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		ps.authed = true
		return nil
	}), nil
}
func (ps *probeSession) Reset()        {}
func (ps *probeSession) Logout() error { return nil }
func (ps *probeSession) Mail(string, *gosmtp.MailOptions) error {
	if !ps.authed {
		return &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "auth first"}
	}
	return nil
}
func (ps *probeSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (ps *probeSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	ps.s.mu.Lock()
	ps.s.msgs = append(ps.s.msgs, string(b))
	ps.s.mu.Unlock()
	return err
}

type probeLogger struct{}

func (probeLogger) Printf(string, ...any) {}
func (probeLogger) Println(...any)        {}

func probeTestCA(t *testing.T, name string) (*tls.Config, string) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey, leafKey := key(), key()
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "probe test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey}}}, caFile
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
		"certificate 0: subject \"CN=relay.example.test\", issuer \"CN=probe test CA\"",
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
	otherCA := filepath.Join(t.TempDir(), "other.pem")
	_, otherFile := probeTestCA(t, "relay.example.test")
	b, _ := os.ReadFile(otherFile)
	_ = os.WriteFile(otherCA, b, 0o600)

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
