package transport_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
)

// testServer is an in-process go-smtp server on 127.0.0.1 that records
// what it received.
type testServer struct {
	addr string
	host string
	port int

	// set before the first connection
	mailErr  error // returned by MAIL
	greetErr error // returned by NewSession (the reply to EHLO)

	mu       sync.Mutex
	accepted int
	messages []received
}

type received struct {
	from  string
	rcpts []string
	body  string
	tls   bool
	user  string
}

type serverOpts struct {
	tls      *tls.Config // offers STARTTLS when set
	user     string      // requires AUTH PLAIN with user/pass when set
	pass     string
	greetErr error
	mailErr  error
	addr     string // listen address; default 127.0.0.1:0
}

func startServer(t *testing.T, o serverOpts) *testServer {
	t.Helper()
	s := &testServer{greetErr: o.greetErr, mailErr: o.mailErr}
	be := gosmtp.BackendFunc(func(c *gosmtp.Conn) (gosmtp.Session, error) {
		if s.greetErr != nil {
			return nil, s.greetErr
		}
		_, isTLS := c.TLSConnectionState()
		return &testSession{s: s, o: o, tls: isTLS}, nil
	})
	srv := gosmtp.NewServer(be)
	srv.Domain = "server.example.test"
	srv.ErrorLog = discardLogger{}
	srv.TLSConfig = o.tls
	srv.EnableDSN = true
	addr := o.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	s.addr = ln.Addr().String()
	h, p, _ := net.SplitHostPort(s.addr)
	s.host = h
	s.port, _ = strconv.Atoi(p)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(&acceptCounter{Listener: ln, s: s})
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return s
}

func (s *testServer) received() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.messages...)
}

func (s *testServer) connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

type acceptCounter struct {
	net.Listener
	s *testServer
}

func (l *acceptCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.accepted++
		l.s.mu.Unlock()
	}
	return c, err
}

type testSession struct {
	s     *testServer
	o     serverOpts
	tls   bool
	user  string
	from  string
	rcpts []string
}

func (ts *testSession) AuthMechanisms() []string {
	if ts.o.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ts *testSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if user != ts.o.user || pass != ts.o.pass {
			return &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		ts.user = user
		return nil
	}), nil
}

func (ts *testSession) Reset()        { ts.from, ts.rcpts = "", nil }
func (ts *testSession) Logout() error { return nil }

func (ts *testSession) Mail(from string, _ *gosmtp.MailOptions) error {
	if ts.o.user != "" && ts.user == "" {
		return &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	}
	if ts.s.mailErr != nil {
		return ts.s.mailErr
	}
	ts.from = from
	return nil
}

func (ts *testSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	ts.rcpts = append(ts.rcpts, to)
	return nil
}

func (ts *testSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ts.s.mu.Lock()
	ts.s.messages = append(ts.s.messages, received{from: ts.from, rcpts: ts.rcpts, body: string(b), tls: ts.tls, user: ts.user})
	ts.s.mu.Unlock()
	return nil
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// testCA is a throw-away certificate authority and one server certificate
// for 127.0.0.1 and a few .test names.
type testCA struct {
	pool   *x509.CertPool
	caFile string // PEM file of the CA certificate
	server *tls.Config
}

func newTestCA(t *testing.T, names ...string) *testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "blaster test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)

	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "server.example.test"},
		DNSNames:     names,
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &testCA{
		pool:   pool,
		caFile: caFile,
		server: &tls.Config{Certificates: []tls.Certificate{{
			Certificate: [][]byte{leafDER, caDER},
			PrivateKey:  leafKey,
		}}},
	}
}

// clientConfig trusts the test CA.
func (ca *testCA) clientConfig() *tls.Config {
	return &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}
}

// clock is a settable clock for NowFunc.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
