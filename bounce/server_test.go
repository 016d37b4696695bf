package bounce_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/bounce"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/smtp"
)

// The receiver's name in the tests: the MX host of the return-path domain,
// which a sending MTA verifies the certificate against.
const mxHost = "mx.bounce.example.test"

// startServer starts a receiver with cfg on 127.0.0.1:0, closed at the
// end of the test.
func startServer(t *testing.T, cfg bounce.ServerConfig) *bounce.Server {
	t.Helper()
	cfg.Timeout = 10 * time.Second
	srv, err := bounce.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	return srv
}

// TestServerSTARTTLS: with a TLSConfig the receiver offers STARTTLS; an MTA
// that requires TLS and verifies the certificate against the test CA
// upgrades, sends a hard bounce over it, and the bounce is recorded. A
// client that trusts another CA fails the handshake.
func TestServerSTARTTLS(t *testing.T) {
	id, contactID, p := oneRecipient(t)
	ctx := context.Background()
	ca := smtptest.NewCA(t, mxHost)
	srv := startServer(t, bounce.ServerConfig{Processor: p, Domain: mxHost, TLSConfig: ca.ServerConfig()})

	c, err := smtp.Dial(ctx, srv.Addr(), smtp.Config{LocalName: "relay.sender.example.test", ServerName: mxHost,
		TLS: smtp.TLSRequired, TLSConfig: ca.ClientConfig()})
	if err != nil {
		t.Fatalf("dialing the receiver with TLS required: %v", err)
	}
	defer c.Close()
	st, ok := c.TLSState()
	if !ok {
		t.Fatal("the connection is not TLS after STARTTLS")
	}
	if !st.HandshakeComplete || len(st.VerifiedChains) == 0 || st.Version < tls.VersionTLS12 {
		t.Fatalf("TLS state: handshake complete %v, %d verified chains, version %s; want complete, verified, TLS 1.2 or later",
			st.HandshakeComplete, len(st.VerifiedChains), tls.VersionName(st.Version))
	}

	rp, _ := p.Signer.Address(base, id, contactID)
	msg := dsn(t, "postfix.eml", rp, "user00@alpha.example.test", "tls1@relay.example.test")
	res, err := c.Send(ctx, &smtp.Envelope{Rcpts: []smtp.Recipient{{Addr: rp}}}, bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("sending the DSN over TLS: %v", err)
	}
	if res.Data == nil || res.Data.Code != 250 {
		t.Fatalf("reply to the DSN's data: %v, want 250", res.Data)
	}
	if err := c.Quit(ctx); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	if want := (bounce.Summary{Messages: 1, Hard: 1}); srv.Summary() != want {
		t.Errorf("summary %+v, want %+v", srv.Summary(), want)
	}
	var state, enhanced string
	if err := p.Pool.QueryRow(ctx, "SELECT state, last_enhanced FROM deliveries WHERE campaign_id = $1 AND contact_id = $2",
		id, contactID).Scan(&state, &enhanced); err != nil {
		t.Fatal(err)
	}
	if state != "bounced" || enhanced != "5.1.1" {
		t.Errorf("delivery after the bounce over TLS: %s %s, want bounced 5.1.1", state, enhanced)
	}

	// The client verifies: a certificate from a CA it does not trust fails
	// the handshake, and nothing is sent in clear instead.
	other := smtptest.NewCA(t, mxHost)
	_, err = smtp.Dial(ctx, srv.Addr(), smtp.Config{LocalName: "relay.sender.example.test", ServerName: mxHost,
		TLS: smtp.TLSRequired, TLSConfig: other.ClientConfig()})
	var re *smtp.RouteError
	if !errors.As(err, &re) || re.Op != "TLS handshake" {
		t.Errorf("dialing with another CA: %v, want a TLS handshake error", err)
	}

	// A config without a certificate would fail every STARTTLS it offered.
	if _, err := bounce.NewServer(bounce.ServerConfig{Processor: p, TLSConfig: &tls.Config{}}); err == nil ||
		!strings.Contains(err.Error(), "certificate") {
		t.Errorf("NewServer with a TLSConfig without a certificate: %v, want an error", err)
	}
}

// TestServerWithoutTLS: without a TLSConfig the EHLO reply offers no
// STARTTLS, so an MTA that requires TLS gets nowhere and one that uses it
// opportunistically delivers in clear.
func TestServerWithoutTLS(t *testing.T) {
	id, contactID, p := oneRecipient(t)
	ctx := context.Background()
	srv := startServer(t, bounce.ServerConfig{Processor: p, Domain: mxHost})

	c, err := smtp.Dial(ctx, srv.Addr(), smtp.Config{LocalName: "relay.sender.example.test", TLS: smtp.TLSOpportunistic})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Caps().ESMTP || c.Caps().StartTLS {
		t.Errorf("EHLO reply: ESMTP %v, STARTTLS %v; want ESMTP without STARTTLS", c.Caps().ESMTP, c.Caps().StartTLS)
	}
	if _, ok := c.TLSState(); ok {
		t.Error("the connection is TLS without a TLSConfig")
	}
	rp, _ := p.Signer.Address(base, id, contactID)
	msg := dsn(t, "postfix.eml", rp, "user00@alpha.example.test", "clear1@relay.example.test")
	if _, err := c.Send(ctx, &smtp.Envelope{Rcpts: []smtp.Recipient{{Addr: rp}}}, bytes.NewReader(msg)); err != nil {
		t.Fatalf("sending the DSN in clear: %v", err)
	}
	if want := (bounce.Summary{Messages: 1, Hard: 1}); srv.Summary() != want {
		t.Errorf("summary %+v, want %+v", srv.Summary(), want)
	}

	_, err = smtp.Dial(ctx, srv.Addr(), smtp.Config{LocalName: "relay.sender.example.test", TLS: smtp.TLSRequired})
	var re *smtp.RouteError
	if !errors.As(err, &re) || re.Op != "STARTTLS" || !re.Permanent {
		t.Errorf("dialing with TLS required: %v, want a permanent STARTTLS error", err)
	}
}
