package transport_test

import (
	"net"
	"testing"

	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/transport"
)

// TestRelayFailoverWithSMTPSink: the first relay greets with 421 (Postfix's
// smtp-sink -Q CONNECT), the second takes the mail; the same check as
// TestRelayFailsOverOn421, against a server that is not go-smtp.
func TestRelayFailoverWithSMTPSink(t *testing.T) {
	busy := smtptest.RunSmtpSink(t, smtptest.SmtpSinkOptions{Flags: []string{"-Q", "CONNECT"}}).Addr
	good := smtptest.RunSmtpSink(t, smtptest.SmtpSinkOptions{}).Addr
	r, err := transport.NewRelay([]transport.RelayConfig{relayURL(busy), relayURL(good)},
		transport.RelayOptions{LocalName: "client.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := range 10 {
		if _, err := sendOne(t, r, "a@example.test"); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if got, want := r.Route("example.test"), relayURL(good).Redacted(); got != want {
		t.Errorf("Route = %q, want the second relay %q", got, want)
	}
	st := r.Stats()[relayURL(good).Redacted()]
	if st.Created != 1 || st.Reused != 9 {
		t.Errorf("second relay's pool = %+v, want 1 connection reused for 10 messages", st)
	}
}

// TestMXNextOn421GreetingWithSMTPSink: the preferred MX greets with 421,
// the next one takes the mail.
func TestMXNextOn421GreetingWithSMTPSink(t *testing.T) {
	first := smtptest.RunSmtpSink(t, smtptest.SmtpSinkOptions{Listen: "127.0.0.2:0", Flags: []string{"-Q", "CONNECT"}}).Addr
	_, port, _ := net.SplitHostPort(first)
	smtptest.RunSmtpSink(t, smtptest.SmtpSinkOptions{Listen: "127.0.0.3:" + port})
	dns := &fakeDNS{
		mx: map[string][]*net.MX{"example.test": {
			{Host: "busy.example.test", Pref: 10}, {Host: "ok.example.test", Pref: 20},
		}},
		hosts: map[string][]string{"busy.example.test": {"127.0.0.2"}, "ok.example.test": {"127.0.0.3"}},
	}
	p, _ := net.LookupPort("tcp", port)
	m := newMX(t, dns, p, nil)
	if err := sendTo(t, m, "example.test"); err != nil {
		t.Fatalf("send: %v", err)
	}
	st := m.Stats()
	if st["ok.example.test"].Created != 1 || st["busy.example.test"].Created != 0 {
		t.Errorf("pools = %+v, want one connection to ok.example.test and none to busy.example.test", st)
	}
}
