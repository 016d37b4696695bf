package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/blaster-mail/blaster/bounce"
	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/returnpath"
)

// TestBouncesCommand: a campaign created with --return-path, a DSN fed on
// stdin, and the report as text and JSON.
func TestBouncesCommand(t *testing.T) {
	t.Setenv(returnpath.KeyEnv, "")
	url := dbtest.New(t)
	dir := t.TempDir()
	key := []byte("0123456789abcdef0123456789abcdef")
	keyFile := filepath.Join(dir, "bounce.key")
	text := filepath.Join(dir, "body.txt")
	if err := os.WriteFile(keyFile, append(key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(text, []byte("Hello all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := runContactCLI(t, url, "email\nann@alpha.example.test\nbob@beta.example.test\n", "import", "--list", "news", "-"); err != nil {
		t.Fatalf("import: %v\n%s", err, stderr)
	}
	create := []string{"campaign", "create", "--name", "n", "--list", "news", "--from", "news@sender.example.test",
		"--subject", "News", "--text", text, "--return-path", "bounces@bounce.example.test"}
	if _, _, err := runContactCLI(t, url, "", create...); err == nil || !strings.Contains(err.Error(), returnpath.KeyEnv) {
		t.Fatalf("create --return-path without a key: %v, want an error naming %s", err, returnpath.KeyEnv)
	}
	if _, _, err := runContactCLI(t, url, "", append(create[:len(create)-2], "--return-path", "bounces@bounce.example.test\r\nBcc: x@example.test",
		"--bounce-key-file", keyFile)...); err == nil {
		t.Fatal("create accepted a return path with a line break")
	}
	stdout, stderr, err := runContactCLI(t, url, "", append(create, "--bounce-key-file", keyFile)...)
	if err != nil {
		t.Fatalf("create: %v\n%s", err, stderr)
	}
	id, err := strconv.ParseInt(strings.TrimSpace(stdout), 10, 64)
	if err != nil {
		t.Fatalf("create printed %q", stdout)
	}
	if _, stderr, err := runContactCLI(t, url, "", "campaign", "start", stdout[:len(stdout)-1]); err != nil {
		t.Fatalf("start: %v\n%s", err, stderr)
	}
	// Both accepted by the relay (the worker's part is tested in package
	// bounce); then ann's mailbox turns out not to exist.
	pool, err := db.Open(t.Context(), url, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(t.Context(), "UPDATE deliveries SET state = 'sent', last_code = 250 WHERE campaign_id = $1", id); err != nil {
		t.Fatal(err)
	}
	signer, _ := returnpath.NewSigner(key)
	rp, _ := signer.Address("bounces@bounce.example.test", id, 0)
	sample, err := os.ReadFile(filepath.Join("..", "..", "bounce", "testdata", "postfix.eml"))
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.ReplaceAll(strings.ReplaceAll(string(sample), "bounces+1-2-aaaaaaaaaaaaaaaa@bounce.example.test", rp),
		"nobody@alpha.example.test", "ann@alpha.example.test")
	for range 2 { // the second time, a duplicate
		if _, stderr, err := runContactCLI(t, url, msg, "bounces", "--bounce-key-file", keyFile); err != nil {
			t.Fatalf("bounces: %v\n%s", err, stderr)
		}
	}
	stdout, _, err = runContactCLI(t, url, msg, "bounces", "--json", "--bounce-key-file", keyFile)
	var sum bounce.Summary
	if err != nil || json.Unmarshal([]byte(stdout), &sum) != nil || sum != (bounce.Summary{Messages: 1, Duplicates: 1}) {
		t.Fatalf("bounces --json of a message read before: %v %q", err, stdout)
	}

	stdout, _, err = runContactCLI(t, url, "", "campaign", "report", "--json", strconv.FormatInt(id, 10))
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("report --json: %v\n%s", err, stdout)
	}
	for k, want := range map[string]any{"sent": 1.0, "bounced_hard": 1.0, "bounced_async": 1.0, "bounced_soft": 0.0,
		"bounce_rate": 0.5, "suppressions_added": 1.0, "unmatched_bounces": 0.0} {
		if rep[k] != want {
			t.Errorf("report %s = %v, want %v\n%s", k, rep[k], want, stdout)
		}
	}
	reasons, _ := rep["top_reasons"].([]any)
	if len(reasons) != 1 || reasons[0].(map[string]any)["status"] != "5.1.1" || reasons[0].(map[string]any)["count"] != 1.0 {
		t.Errorf("top_reasons = %v", rep["top_reasons"])
	}
	stdout, _, err = runContactCLI(t, url, "", "campaign", "report", strconv.FormatInt(id, 10))
	if err != nil || !strings.Contains(stdout, "bounce rate          50.00%") || !strings.Contains(stdout, "5.1.1") {
		t.Errorf("report: %v\n%s", err, stdout)
	}
	stdout, _, _ = runContactCLI(t, url, "", "suppress", "list")
	if !strings.Contains(stdout, "ann@alpha.example.test,,bounced,5.1.1 550 5.1.1") {
		t.Errorf("suppress list:\n%s", stdout)
	}
}

// writeCertPair writes ca's server certificate chain and key as PEM files
// and returns their names and the key file's content.
func writeCertPair(t *testing.T, ca *smtptest.CA) (certFile, keyFile string, keyPEM []byte) {
	t.Helper()
	dir := t.TempDir()
	var chain []byte
	for _, der := range ca.Cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ca.Cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, keyPEM
}

// TestBouncesTLSFlags: --tls-cert and --tls-key go together and with
// --listen, are checked before the database or the signing key is needed,
// and a pair that does not load is named by its files, its key never
// quoted.
func TestBouncesTLSFlags(t *testing.T) {
	certFile, keyFile, keyPEM := writeCertPair(t, smtptest.NewCA(t, "mx.bounce.example.test"))
	_, otherKey, otherPEM := writeCertPair(t, smtptest.NewCA(t, "mx.bounce.example.test"))
	// Nothing listens there: reaching the database would fail differently.
	const url = "postgres://blaster@127.0.0.1:1/none?connect_timeout=1"
	listen := []string{"bounces", "--listen", "127.0.0.1:0"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(listen, "--tls-cert", certFile), "--tls-cert and --tls-key go together"},
		{append(listen, "--tls-key", keyFile), "--tls-cert and --tls-key go together"},
		{[]string{"bounces", "--tls-cert", certFile, "--tls-key", keyFile}, "without --listen"},
		{append(listen, "--tls-cert", certFile, "--tls-key", filepath.Join(t.TempDir(), "missing.pem")), "loading --tls-cert " + certFile},
		{append(listen, "--tls-cert", keyFile, "--tls-key", certFile), "loading --tls-cert " + keyFile},
		{append(listen, "--tls-cert", certFile, "--tls-key", otherKey), "does not match"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), append([]string{"--database-url", url}, tc.args...), strings.NewReader(""), &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("blaster %s: %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
			continue
		}
		for _, k := range [][]byte{keyPEM, otherPEM} {
			line := strings.Split(string(k), "\n")[1] // of the key's base64
			if strings.Contains(err.Error(), line) || strings.Contains(stderr.String(), line) {
				t.Errorf("blaster %s: a key's content is in the error or the log", strings.Join(tc.args, " "))
			}
		}
	}

	// A good pair: the certificate loaded, TLS 1.2 at least.
	tc, err := listenTLSConfig("127.0.0.1:0", certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.Certificates) != 1 || tc.Certificates[0].Leaf == nil || tc.Certificates[0].Leaf.Subject.CommonName != "mx.bounce.example.test" ||
		tc.MinVersion != tls.VersionTLS12 {
		t.Errorf("TLS config from a good pair: %d certificates, MinVersion %s", len(tc.Certificates), tls.VersionName(tc.MinVersion))
	}
	if tc, err := listenTLSConfig("127.0.0.1:0", "", ""); tc != nil || err != nil {
		t.Errorf("no TLS flags: %v, %v; want no TLS and no error", tc, err)
	}
}
