package transport_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/blaster-mail/blaster/internal/fakeclock"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/transport"
)

func TestParseRelayURL(t *testing.T) {
	tests := []struct {
		in      string
		want    transport.RelayConfig
		wantErr string // substring of the error; "" means success
	}{
		{in: "smtp://relay.example.test",
			want: transport.RelayConfig{Scheme: "smtp", Host: "relay.example.test", Port: 587, TLS: smtp.TLSOpportunistic}},
		{in: "smtp://mailer@relay.example.test",
			want: transport.RelayConfig{Scheme: "smtp", Host: "relay.example.test", Port: 587, TLS: smtp.TLSRequired, User: "mailer"}},
		{in: "smtps://mailer@relay.example.test",
			want: transport.RelayConfig{Scheme: "smtps", Host: "relay.example.test", Port: 465, TLS: smtp.TLSImplicit, User: "mailer"}},
		{in: "SMTP://relay.example.test:2525/",
			want: transport.RelayConfig{Scheme: "smtp", Host: "relay.example.test", Port: 2525, TLS: smtp.TLSOpportunistic}},
		{in: "smtp://[::1]:25?tls=none",
			want: transport.RelayConfig{Scheme: "smtp", Host: "::1", Port: 25, TLS: smtp.TLSNone}},
		{in: "smtp://relay.example.test?tls=required&ca=/etc/ca.pem&server_name=mx.example.test&max_conns=8&max_messages=-1",
			want: transport.RelayConfig{Scheme: "smtp", Host: "relay.example.test", Port: 587, TLS: smtp.TLSRequired,
				CAFile: "/etc/ca.pem", ServerName: "mx.example.test", MaxConns: 8, MaxMessages: -1}},
		{in: "smtp://u%40example.test@relay.example.test?auth=CRAM-MD5&password_file=/run/secret",
			want: transport.RelayConfig{Scheme: "smtp", Host: "relay.example.test", Port: 587, TLS: smtp.TLSRequired,
				User: "u@example.test", Auth: "cram-md5", PasswordFile: "/run/secret"}},
		{in: "smtp://u@relay.example.test?tls=none&insecure_auth=true",
			want: transport.RelayConfig{Scheme: "smtp", Host: "relay.example.test", Port: 587, TLS: smtp.TLSNone,
				User: "u", InsecureAuth: true}},
		{in: "smtp://u@relay.example.test?tls=opportunistic&auth=xoauth2",
			want: transport.RelayConfig{Scheme: "smtp", Host: "relay.example.test", Port: 587, TLS: smtp.TLSOpportunistic,
				User: "u", Auth: "xoauth2"}},

		{in: "smtp://u:hunter2secret@relay.example.test", wantErr: "BLASTER_RELAY_PASSWORD"},
		{in: "smtp://u:@relay.example.test", wantErr: "password_file"},
		{in: "http://relay.example.test", wantErr: `scheme "http"`},
		{in: "smtp:relay.example.test", wantErr: "no path"},
		{in: "smtp://relay.example.test/path", wantErr: "no path"},
		{in: "smtp://", wantErr: "no host"},
		{in: "smtp://relay.example.test:0", wantErr: "port"},
		{in: "smtp://relay.example.test:70000", wantErr: "port"},
		{in: "smtp://relay.example.test?tls=maybe", wantErr: "tls="},
		{in: "smtps://relay.example.test?tls=none", wantErr: "smtps is always implicit TLS"},
		{in: "smtp://u@relay.example.test?auth=digest-md5", wantErr: "auth="},
		{in: "smtp://relay.example.test?auth=plain", wantErr: "without a user"},
		{in: "smtp://relay.example.test?max_conns=0", wantErr: "max_conns"},
		{in: "smtp://relay.example.test?max_messages=0", wantErr: "max_messages"},
		{in: "smtp://relay.example.test?insecure_auth=perhaps", wantErr: "insecure_auth"},
		{in: "smtp://relay.example.test?tls=none&tls=required", wantErr: "given 2 times"},
		{in: "smtp://relay.example.test?max_con=3", wantErr: `unknown option "max_con"`},
		{in: "smtp://u@relay.example.test?tls=none", wantErr: "insecure_auth=true"},
		{in: "smtp://@relay.example.test", wantErr: "empty user"},
		{in: "smtp://bad_host!.example.test", wantErr: "host"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := transport.ParseRelayURL(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseRelayURL(%q) = %+v, want an error containing %q", tt.in, got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2secret") {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRelayURL(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseRelayURL(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
			// The redacted form parses back to the same relay.
			again, err := transport.ParseRelayURL(got.Redacted())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("Redacted %q parses to %+v, %v", got.Redacted(), again, err)
			}
		})
	}
}

func TestRelayPasswordSources(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == transport.PasswordEnv {
				return v
			}
			return ""
		}
	}
	c, _ := transport.ParseRelayURL("smtp://u@relay.example.test")
	if err := c.LoadPassword(env("")); err == nil || !strings.Contains(err.Error(), transport.PasswordEnv) {
		t.Errorf("no password anywhere: err = %v, want one naming %s", err, transport.PasswordEnv)
	}
	if err := c.LoadPassword(env("s3cret-env")); err != nil || c.Password != "s3cret-env" {
		t.Errorf("from env: password %q, err %v", c.Password, err)
	}
	if strings.Contains(c.Redacted(), "s3cret") {
		t.Errorf("Redacted %q shows the password", c.Redacted())
	}
	// Printed or logged by mistake, the config shows no password either.
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("relay", "relay", c, "ptr", &c)
	for _, s := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprint(&c), logged.String()} {
		if strings.Contains(s, "s3cret") {
			t.Errorf("printed config shows the password: %s", s)
		}
	}

	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("s3cret-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ = transport.ParseRelayURL("smtp://u@relay.example.test?password_file=" + file)
	if err := c.LoadPassword(env("s3cret-env")); err != nil || c.Password != "s3cret-file" {
		t.Errorf("from file: password %q, err %v (the file wins over the environment)", c.Password, err)
	}
	c, _ = transport.ParseRelayURL("smtp://u@relay.example.test?password_file=" + file + ".missing")
	if err := c.LoadPassword(env("")); err == nil {
		t.Error("a missing password_file was accepted")
	}
}

func FuzzParseRelayURL(f *testing.F) {
	for _, s := range []string{
		"smtp://relay.example.test", "smtps://u@relay.example.test:465?auth=plain",
		"smtp://[::1]:25?tls=none", "smtp://u:p@h", "smtp://h?max_conns=3&ca=%2Fa%20b",
		"smtp://u%40x@h?server_name=n&insecure_auth=1&tls=none", "smtp://h:99999", "%",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := transport.ParseRelayURL(s)
		if err != nil {
			return
		}
		if c.Host == "" || c.Port < 1 || c.Port > 65535 || c.Password != "" {
			t.Fatalf("ParseRelayURL(%q) = %+v: invalid result", s, c)
		}
		again, err := transport.ParseRelayURL(c.Redacted())
		if err != nil {
			t.Fatalf("Redacted %q of %q does not parse: %v", c.Redacted(), s, err)
		}
		if !reflect.DeepEqual(again, c) {
			t.Fatalf("Redacted %q of %q parses to %+v, want %+v", c.Redacted(), s, again, c)
		}
	})
}

// relayURL names a plain-text relay on a loopback address.
func relayURL(addr string) transport.RelayConfig {
	c, err := transport.ParseRelayURL("smtp://" + addr + "?tls=none")
	if err != nil {
		panic(err)
	}
	return c
}

func sendOne(t *testing.T, tr transport.Transport, rcpt string) (transport.Session, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := tr.Session(ctx, "example.test")
	if err != nil {
		return nil, err
	}
	env := &smtp.Envelope{From: "news@example.test", Rcpts: []smtp.Recipient{{Addr: rcpt}}}
	res, err := s.Send(ctx, env, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	if err == nil && (res == nil || !res.Data.Positive()) {
		err = fmt.Errorf("send to %s: result %+v", rcpt, res)
	}
	s.Release(err)
	return s, err
}

func TestRelayFailsOverFromClosedPortAndComesBack(t *testing.T) {
	down := smtptest.ClosedAddr(t)
	second := smtptest.StartServer(t, smtptest.Options{})
	clk := fakeclock.New()
	r, err := transport.NewRelay([]transport.RelayConfig{relayURL(down), relayURL(second.Addr)},
		transport.RelayOptions{LocalName: "client.example.test", NowFunc: clk.Now, RetryAfter: time.Minute})
	if err != nil {
		t.Fatalf("NewRelay: %v", err)
	}
	defer r.Close()
	firstName, secondName := relayURL(down).Redacted(), relayURL(second.Addr).Redacted()
	if got := r.Route("example.test"); got != firstName {
		t.Errorf("Route before any failure = %q, want the first relay %q", got, firstName)
	}

	if _, err := sendOne(t, r, "a@example.test"); err != nil {
		t.Fatalf("send with the first relay down: %v", err)
	}
	if n := len(second.Messages()); n != 1 {
		t.Fatalf("second relay got %d messages, want 1", n)
	}
	if got := r.Route("example.test"); got != secondName {
		t.Errorf("Route with the first relay down = %q, want %q", got, secondName)
	}

	// The first relay comes back; after RetryAfter it is used again.
	first := smtptest.StartServer(t, smtptest.Options{Listen: down})
	if _, err := sendOne(t, r, "b@example.test"); err != nil {
		t.Fatalf("send: %v", err)
	}
	if n := len(first.Messages()); n != 0 {
		t.Errorf("first relay used %d times before RetryAfter passed", n)
	}
	clk.Advance(2 * time.Minute)
	if got := r.Route("example.test"); got != firstName {
		t.Errorf("Route after RetryAfter = %q, want the first relay again", got)
	}
	if _, err := sendOne(t, r, "c@example.test"); err != nil {
		t.Fatalf("send: %v", err)
	}
	if n := len(first.Messages()); n != 1 {
		t.Errorf("first relay got %d messages after it came back, want 1", n)
	}
}

func TestRelayFailsOverOn421(t *testing.T) {
	busy := smtptest.StartServer(t, smtptest.Options{GreetErr: &gosmtp.SMTPError{
		Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 3, 2}, Message: "too busy, try later"}})
	good := smtptest.StartServer(t, smtptest.Options{})
	r, err := transport.NewRelay([]transport.RelayConfig{relayURL(busy.Addr), relayURL(good.Addr)},
		transport.RelayOptions{LocalName: "client.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := range 3 {
		if _, err := sendOne(t, r, fmt.Sprintf("r%d@example.test", i)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if n := len(good.Messages()); n != 3 {
		t.Errorf("second relay got %d messages, want 3", n)
	}
	if n := busy.Connections(); n != 1 {
		t.Errorf("the relay answering 421 was dialed %d times, want 1 (then passed over)", n)
	}
}

func TestRelay421DuringTransactionMarksItDown(t *testing.T) {
	first := smtptest.StartServer(t, smtptest.Options{MailErr: &gosmtp.SMTPError{
		Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 4, 5}, Message: "shutting down"}})
	second := smtptest.StartServer(t, smtptest.Options{})
	r, err := transport.NewRelay([]transport.RelayConfig{relayURL(first.Addr), relayURL(second.Addr)},
		transport.RelayOptions{LocalName: "client.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := sendOne(t, r, "a@example.test"); err == nil {
		t.Fatal("send through a relay answering 421 to MAIL succeeded")
	}
	if _, err := sendOne(t, r, "b@example.test"); err != nil {
		t.Fatalf("send after the 421: %v", err)
	}
	if n := len(second.Messages()); n != 1 {
		t.Errorf("second relay got %d messages, want 1", n)
	}
}

func TestRelayAllDown(t *testing.T) {
	r, err := transport.NewRelay([]transport.RelayConfig{relayURL(smtptest.ClosedAddr(t)), relayURL(smtptest.ClosedAddr(t))},
		transport.RelayOptions{LocalName: "client.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := sendOne(t, r, "a@example.test"); err == nil || !strings.Contains(err.Error(), "every relay failed") {
		t.Errorf("err = %v, want every relay failed", err)
	}
}

func TestRelaySTARTTLSAndAuth(t *testing.T) {
	ca := smtptest.NewCA(t, "relay.example.test")
	srv := smtptest.StartServer(t, smtptest.Options{TLS: ca.ServerConfig(), User: "mailer", Pass: "correct horse"})
	c, err := transport.ParseRelayURL(fmt.Sprintf("smtp://mailer@%s?ca=%s&server_name=relay.example.test&auth=plain",
		srv.Addr, ca.File))
	if err != nil {
		t.Fatal(err)
	}
	getenv := func(k string) string {
		if k == transport.PasswordEnv {
			return "correct horse"
		}
		return ""
	}
	r, err := transport.NewRelay([]transport.RelayConfig{c}, transport.RelayOptions{LocalName: "client.example.test", Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := sendOne(t, r, "a@example.test"); err != nil {
		t.Fatalf("send: %v", err)
	}
	got := srv.Messages()
	if len(got) != 1 || !got[0].TLS || got[0].User != "mailer" {
		t.Fatalf("server received %+v, want one message over TLS from user mailer", got)
	}
	if strings.Contains(r.Route("example.test"), "correct") {
		t.Errorf("Route %q shows the password", r.Route("example.test"))
	}

	// Without the test CA the certificate is refused: TLS is verified by
	// default.
	c.CAFile = ""
	r2, err := transport.NewRelay([]transport.RelayConfig{c}, transport.RelayOptions{LocalName: "client.example.test", Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, err := sendOne(t, r2, "b@example.test"); err == nil {
		t.Error("send to a relay with an unknown CA succeeded")
	}
}

func TestRelayReusesAndRetiresConnections(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	c, err := transport.ParseRelayURL("smtp://" + srv.Addr + "?tls=none&max_conns=1&max_messages=2")
	if err != nil {
		t.Fatal(err)
	}
	r, err := transport.NewRelay([]transport.RelayConfig{c}, transport.RelayOptions{LocalName: "client.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := range 5 {
		if _, err := sendOne(t, r, fmt.Sprintf("r%d@example.test", i)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if n := len(srv.Messages()); n != 5 {
		t.Errorf("relay got %d messages, want 5", n)
	}
	// 2 messages per connection: 3 connections for 5 messages.
	if n := srv.Connections(); n != 3 {
		t.Errorf("relay saw %d connections, want 3", n)
	}
	st := r.Stats()[c.Redacted()]
	if st.Created != 3 || st.Retired != 2 || st.Open != 1 {
		t.Errorf("pool stats = %+v, want Created 3, Retired 2, Open 1", st)
	}
}
