package smtp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
)

// testCA is a certificate authority made for one test run, and a server
// certificate it signed for mx.example.test and 127.0.0.1.
type testCA struct {
	pool   *x509.CertPool
	server tls.Certificate
}

func newTestCA(t testing.TB) *testCA {
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
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "mx.example.test"},
		DNSNames:     []string{"mx.example.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &testCA{pool: pool, server: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

// received is one message the go-smtp backend took.
type received struct {
	from  string
	opts  gosmtp.MailOptions
	rcpts []string
	body  string // empty when the backend counts only
	size  int64
}

// backend is an in-process go-smtp server's backend that records
// messages, rejects recipients at reject.example.test, and checks
// user/secret for PLAIN and LOGIN.
type backend struct {
	mu        sync.Mutex
	msgs      []received
	keepBody  bool
	authed    int
	requireAu bool
}

func (b *backend) NewSession(*gosmtp.Conn) (gosmtp.Session, error) { return &session{b: b}, nil }

func (b *backend) messages() []received {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]received(nil), b.msgs...)
}

type session struct {
	b      *backend
	authed bool
	cur    received
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (s *session) check(user, pass string) error {
	if user != "user" || pass != "secret" {
		return gosmtp.ErrAuthFailed
	}
	s.authed = true
	s.b.mu.Lock()
	s.b.authed++
	s.b.mu.Unlock()
	return nil
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return s.check(user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: s.check}, nil
	}
	return nil, gosmtp.ErrAuthUnknownMechanism
}

func (s *session) Mail(from string, opts *gosmtp.MailOptions) error {
	if s.b.requireAu && !s.authed {
		return gosmtp.ErrAuthRequired
	}
	s.cur = received{from: from}
	if opts != nil {
		s.cur.opts = *opts
	}
	return nil
}

func (s *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	if strings.HasSuffix(to, "@reject.example.test") {
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	s.cur.rcpts = append(s.cur.rcpts, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	if s.b.keepBody {
		body, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		s.cur.body, s.cur.size = string(body), int64(len(body))
	} else {
		n, err := io.Copy(io.Discard, r)
		if err != nil {
			return err
		}
		s.cur.size = n
	}
	s.b.mu.Lock()
	s.b.msgs = append(s.b.msgs, s.cur)
	s.b.mu.Unlock()
	return nil
}

func (s *session) Reset()        { s.cur = received{} }
func (s *session) Logout() error { return nil }

// loginServer is the server side of LOGIN, which go-sasl lacks.
type loginServer struct {
	check func(user, pass string) error
	user  *string
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch {
	case l.user == nil && resp == nil:
		return []byte("Username:"), false, nil
	case l.user == nil:
		u := string(resp)
		l.user = &u
		return []byte("Password:"), false, nil
	}
	return nil, true, l.check(*l.user, string(resp))
}

// startServer runs a go-smtp server on 127.0.0.1:0. implicit wraps the
// listener in TLS (port 465 style); otherwise STARTTLS is offered.
func startServer(t testing.TB, ca *testCA, b *backend, implicit bool) string {
	t.Helper()
	srv := gosmtp.NewServer(b)
	srv.Domain = "mx.example.test"
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 200
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{ca.server}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if implicit {
		l = tls.NewListener(l, srv.TLSConfig)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return l.Addr().String()
}

func tlsConfig(ca *testCA) *tls.Config { return &tls.Config{RootCAs: ca.pool} }

func TestGoSMTPStartTLSAuthPipelined(t *testing.T) {
	ca := newTestCA(t)
	for _, mech := range []string{"plain", "login"} {
		t.Run(mech, func(t *testing.T) {
			b := &backend{keepBody: true, requireAu: true}
			addr := startServer(t, ca, b, false)
			ctx := context.Background()
			var trace strings.Builder
			c, err := Dial(ctx, addr, Config{
				LocalName: "client.example.test", ServerName: "mx.example.test", TLS: TLSRequired,
				TLSConfig: tlsConfig(ca), Auth: NewAuth(mech, "user", "secret"), Trace: &trace,
			})
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			st, ok := c.TLSState()
			if !ok || st.Version < tls.VersionTLS12 || !st.HandshakeComplete {
				t.Fatalf("TLS state %v %+v", ok, st)
			}
			if !c.Caps().Pipelining || c.Caps().StartTLS {
				t.Errorf("caps after STARTTLS = %+v", c.Caps())
			}
			env := &Envelope{From: "news@example.test", Size: 40, EightBit: true,
				Rcpts: rcpts("a@example.test", "x@reject.example.test", "c@example.test")}
			body := "Subject: hi\n\n.leading dot\nline\r\n.\nend"
			res, err := c.Send(ctx, env, strings.NewReader(body))
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			want := []Outcome{Sent, Bounce, Sent}
			for i, w := range want {
				if o, _ := res.Outcome(i, err); o != w {
					t.Errorf("recipient %d: %v, want %v", i, o, w)
				}
			}
			// A second transaction on the same connection, after RSET.
			if err := c.Reset(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Send(ctx, &Envelope{From: "", Rcpts: rcpts("d@example.test")}, strings.NewReader("two")); err != nil {
				t.Fatalf("second Send: %v", err)
			}
			if err := c.Quit(ctx); err != nil {
				t.Fatalf("Quit: %v", err)
			}
			msgs := b.messages()
			if len(msgs) != 2 {
				t.Fatalf("server got %d messages", len(msgs))
			}
			m := msgs[0]
			if m.from != "news@example.test" || strings.Join(m.rcpts, ",") != "a@example.test,c@example.test" ||
				m.opts.Size != 40 || m.opts.Body != gosmtp.Body8BitMIME {
				t.Errorf("envelope at server = %+v", m)
			}
			if wantBody := "Subject: hi\r\n\r\n.leading dot\r\nline\r\n.\r\nend\r\n"; m.body != wantBody {
				t.Errorf("body at server = %q, want %q", m.body, wantBody)
			}
			if msgs[1].from != "" || msgs[1].body != "two\r\n" {
				t.Errorf("second message = %+v", msgs[1])
			}
			if strings.Contains(trace.String(), "c2VjcmV0") || strings.Contains(trace.String(), "AHVzZXIAc2VjcmV0") {
				t.Errorf("trace leaks the password:\n%s", trace.String())
			}
			if !strings.Contains(trace.String(), "TLS TLS 1.3") {
				t.Errorf("trace lacks the TLS line:\n%s", trace.String())
			}
		})
	}
}

func TestGoSMTPTLSFailures(t *testing.T) {
	ca := newTestCA(t)
	b := &backend{requireAu: true}
	addr := startServer(t, ca, b, false)
	ctx := context.Background()
	tests := []struct {
		name      string
		cfg       Config
		op        string
		permanent bool
	}{
		{"unknown CA", Config{TLS: TLSRequired, ServerName: "mx.example.test"}, "TLS handshake", true},
		{"wrong name", Config{TLS: TLSRequired, ServerName: "other.example.test", TLSConfig: tlsConfig(ca)}, "TLS handshake", true},
		{"opportunistic still verifies", Config{ServerName: "mx.example.test"}, "TLS handshake", true},
		{"TLS 1.2 floor", Config{TLS: TLSRequired, ServerName: "mx.example.test",
			TLSConfig: &tls.Config{RootCAs: ca.pool, MaxVersion: tls.VersionTLS11}}, "TLS handshake", false},
		{"bad password", Config{TLS: TLSRequired, ServerName: "mx.example.test", TLSConfig: tlsConfig(ca),
			Auth: NewAuth("plain", "user", "wrong")}, "AUTH PLAIN", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.LocalName = "client.example.test"
			_, err := Dial(ctx, addr, tt.cfg)
			var re *RouteError
			if !errors.As(err, &re) || re.Op != tt.op || re.Permanent != tt.permanent {
				t.Fatalf("err = %#v (%v), want RouteError op %q permanent %v", re, err, tt.op, tt.permanent)
			}
			if !strings.Contains(err.Error(), addr) {
				t.Errorf("error %q does not name the server", err)
			}
		})
	}
	if b.authed != 0 || len(b.messages()) != 0 {
		t.Error("the server saw a login or a message")
	}
}

func TestGoSMTPImplicitTLS(t *testing.T) {
	ca := newTestCA(t)
	b := &backend{keepBody: true}
	addr := startServer(t, ca, b, true)
	ctx := context.Background()
	c, err := Dial(ctx, addr, Config{LocalName: "client.example.test", TLS: TLSImplicit, TLSConfig: tlsConfig(ca),
		Auth: NewAuth("", "user", "secret")})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if _, ok := c.TLSState(); !ok {
		t.Fatal("no TLS")
	}
	if _, err := c.Send(ctx, &Envelope{From: "n@example.test", Rcpts: rcpts("jörg@example.test")}, strings.NewReader("hi")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if m := b.messages(); len(m) != 1 || !m[0].opts.UTF8 || m[0].rcpts[0] != "jörg@example.test" {
		t.Errorf("messages = %+v", m)
	}
}

// lineSource generates size octets of message lines on the fly, so the
// test itself holds none of the body.
type lineSource struct {
	left int64
	line []byte
	off  int
}

func newLineSource(size int64) *lineSource {
	return &lineSource{left: size, line: []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n")}
}

func (s *lineSource) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && s.left > 0 {
		c := copy(p[n:], s.line[s.off:])
		if int64(c) > s.left {
			c = int(s.left)
		}
		n += c
		s.left -= int64(c)
		s.off = (s.off + c) % len(s.line)
	}
	return n, nil
}

// TestGoSMTPStreams20MB sends a 20 MB body and checks the client did not
// allocate anywhere near the body's size: it streams.
func TestGoSMTPStreams20MB(t *testing.T) {
	ca := newTestCA(t)
	b := &backend{}
	addr := startServer(t, ca, b, false)
	ctx := context.Background()
	c, err := Dial(ctx, addr, Config{LocalName: "client.example.test", TLS: TLSNone})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 81 * 259000 // 20 MB of whole 81-octet lines
	env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}
	// Warm up: the first Send allocates the copy buffer.
	if _, err := c.Send(ctx, env, strings.NewReader("warm up")); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if _, err := c.Send(ctx, env, newLineSource(size)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	runtime.ReadMemStats(&after)
	// The server runs in this process too and allocates as it reads; the
	// bound is a quarter of the body, which any buffering of it would break.
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KB while sending %d MB (client and in-process server)", alloc>>10, size>>20)
	if alloc > size/4 {
		t.Errorf("allocated %d bytes sending a %d byte body: not streaming", alloc, size)
	}
	if m := b.messages(); len(m) != 2 || m[1].size != size {
		t.Errorf("server got %+v, want %d octets", m, size)
	}
}

func TestGoSMTPTLSModes(t *testing.T) {
	ca := newTestCA(t)
	addr := startServer(t, ca, &backend{}, false)
	for _, tt := range []struct {
		mode    TLSMode
		wantTLS bool
	}{{TLSOpportunistic, true}, {TLSRequired, true}, {TLSNone, false}} {
		t.Run(tt.mode.String(), func(t *testing.T) {
			c, err := Dial(context.Background(), addr, Config{LocalName: "client.example.test", ServerName: "mx.example.test",
				TLS: tt.mode, TLSConfig: tlsConfig(ca)})
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			if _, ok := c.TLSState(); ok != tt.wantTLS {
				t.Errorf("TLS = %v, want %v", ok, tt.wantTLS)
			}
			if _, err := c.Send(context.Background(), &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}, strings.NewReader("x")); err != nil {
				t.Errorf("Send: %v", err)
			}
		})
	}
}
