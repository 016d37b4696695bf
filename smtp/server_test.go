package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/blaster-mail/blaster/internal/smtptest"
)

// startServer runs the go-smtp test server as mx.example.test with a
// certificate from ca: STARTTLS offered, or with implicit, TLS from the
// first octet (port 465 style). Recipients at reject.example.test are
// refused with 550 5.1.1.
func startServer(t testing.TB, ca *smtptest.CA, o smtptest.Options, implicit bool) *smtptest.Server {
	t.Helper()
	o.TLS, o.ImplicitTLS = ca.ServerConfig(), implicit
	o.RcptErr = func(to string) error {
		if strings.HasSuffix(to, "@reject.example.test") {
			return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	return smtptest.StartServer(t, o)
}

// withLogin makes the server require AUTH as user/secret.
var withLogin = smtptest.Options{User: "user", Pass: "secret"}

func TestGoSMTPStartTLSAuthPipelined(t *testing.T) {
	ca := smtptest.NewCA(t, "mx.example.test")
	for _, mech := range []string{"plain", "login"} {
		t.Run(mech, func(t *testing.T) {
			srv := startServer(t, ca, withLogin, false)
			addr := srv.Addr
			ctx := context.Background()
			var trace strings.Builder
			c, err := Dial(ctx, addr, Config{
				LocalName: "client.example.test", ServerName: "mx.example.test", TLS: TLSRequired,
				TLSConfig: ca.ClientConfig(), Auth: NewAuth(mech, "user", "secret"), Trace: &trace,
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
			msgs := srv.Messages()
			if len(msgs) != 2 {
				t.Fatalf("server got %d messages", len(msgs))
			}
			m := msgs[0]
			if m.From != "news@example.test" || strings.Join(m.Rcpts, ",") != "a@example.test,c@example.test" ||
				m.Opts.Size != 40 || m.Opts.Body != gosmtp.Body8BitMIME {
				t.Errorf("envelope at server = %+v", m)
			}
			if wantBody := "Subject: hi\r\n\r\n.leading dot\r\nline\r\n.\r\nend\r\n"; m.Body != wantBody {
				t.Errorf("body at server = %q, want %q", m.Body, wantBody)
			}
			if msgs[1].From != "" || msgs[1].Body != "two\r\n" {
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
	ca := smtptest.NewCA(t, "mx.example.test")
	srv := startServer(t, ca, withLogin, false)
	addr := srv.Addr
	ctx := context.Background()
	tests := []struct {
		name      string
		cfg       Config
		op        string
		permanent bool
	}{
		{"unknown CA", Config{TLS: TLSRequired, ServerName: "mx.example.test"}, "TLS handshake", true},
		{"wrong name", Config{TLS: TLSRequired, ServerName: "other.example.test", TLSConfig: ca.ClientConfig()}, "TLS handshake", true},
		{"opportunistic still verifies", Config{ServerName: "mx.example.test"}, "TLS handshake", true},
		{"TLS 1.2 floor", Config{TLS: TLSRequired, ServerName: "mx.example.test",
			TLSConfig: &tls.Config{RootCAs: ca.Pool, MaxVersion: tls.VersionTLS11}}, "TLS handshake", false},
		{"bad password", Config{TLS: TLSRequired, ServerName: "mx.example.test", TLSConfig: ca.ClientConfig(),
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
	if srv.Logins() != 0 || len(srv.Messages()) != 0 {
		t.Error("the server saw a login or a message")
	}
}

func TestGoSMTPImplicitTLS(t *testing.T) {
	ca := smtptest.NewCA(t, "mx.example.test")
	srv := startServer(t, ca, withLogin, true)
	addr := srv.Addr
	ctx := context.Background()
	c, err := Dial(ctx, addr, Config{LocalName: "client.example.test", TLS: TLSImplicit, TLSConfig: ca.ClientConfig(),
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
	if m := srv.Messages(); len(m) != 1 || !m[0].Opts.UTF8 || m[0].Rcpts[0] != "jörg@example.test" {
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
	ca := smtptest.NewCA(t, "mx.example.test")
	srv := startServer(t, ca, smtptest.Options{DiscardBodies: true}, false)
	addr := srv.Addr
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
	if m := srv.Messages(); len(m) != 2 || m[1].Size != size {
		t.Errorf("server got %+v, want %d octets", m, size)
	}
}

func TestGoSMTPTLSModes(t *testing.T) {
	ca := smtptest.NewCA(t, "mx.example.test")
	addr := startServer(t, ca, smtptest.Options{}, false).Addr
	for _, tt := range []struct {
		mode    TLSMode
		wantTLS bool
	}{{TLSOpportunistic, true}, {TLSRequired, true}, {TLSNone, false}} {
		t.Run(tt.mode.String(), func(t *testing.T) {
			c, err := Dial(context.Background(), addr, Config{LocalName: "client.example.test", ServerName: "mx.example.test",
				TLS: tt.mode, TLSConfig: ca.ClientConfig()})
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

// TestGoSMTPORcpt: go-smtp's server reads back the ORCPT the client sends,
// the utf-8 type (RFC 6533 §3) as the address it encodes, "+", "=" and
// "\" included.
func TestGoSMTPORcpt(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{}) // offers DSN and SMTPUTF8
	ctx := context.Background()
	c, err := Dial(ctx, srv.Addr, Config{LocalName: "client.example.test", TLS: TLSNone})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rs := []Recipient{
		{Addr: "a@example.test", ORcpt: "a+b=c@example.test"},
		{Addr: "jörg@例え.test", ORcpt: "jörg@例え.test"},
		{Addr: "b@example.test", ORcpt: `jörg+a=b\c@例え.test`},
	}
	if _, err := c.Send(ctx, &Envelope{From: "n@example.test", Rcpts: rs}, strings.NewReader("x")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	m := srv.Messages()
	if len(m) != 1 || len(m[0].RcptOpts) != len(rs) {
		t.Fatalf("server got %+v, want one message to %d recipients", m, len(rs))
	}
	for i, r := range rs {
		want := gosmtp.DSNAddressTypeUTF8
		if i == 0 {
			want = gosmtp.DSNAddressTypeRFC822
		}
		if o := m[0].RcptOpts[i]; o.OriginalRecipientType != want || o.OriginalRecipient != r.ORcpt {
			t.Errorf("RCPT %s: ORCPT %s;%s, want %s;%s", r.Addr, o.OriginalRecipientType, o.OriginalRecipient, want, r.ORcpt)
		}
	}
}
