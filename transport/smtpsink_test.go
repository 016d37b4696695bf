package transport_test

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/transport"
)

const smtpSinkPath = "/usr/sbin/smtp-sink"

// startSMTPSink runs Postfix's smtp-sink, an independent SMTP server, on
// addr (a loopback host:port, or host:0 for a free port) with the given
// fault-injection flags, and returns its address once it accepts
// connections.
func startSMTPSink(t *testing.T, addr string, flags ...string) string {
	t.Helper()
	if _, err := os.Stat(smtpSinkPath); err != nil {
		t.Skipf("Postfix smtp-sink not installed (%v): apt-get install postfix", err)
	}
	host, port, _ := net.SplitHostPort(addr)
	if port == "0" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		_ = ln.Close()
	} else {
		addr = net.JoinHostPort(host, port)
	}
	args := append([]string{"-u", "nobody"}, flags...)
	args = append(args, addr, "64")
	cmd := exec.Command(smtpSinkPath, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting smtp-sink: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink %v never listened on %s: %v; stderr: %s", flags, addr, err, stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRelayFailoverWithSMTPSink: the first relay greets with 421 (Postfix's
// smtp-sink -Q CONNECT), the second takes the mail; the same check as
// TestRelayFailsOverOn421, against a server that is not go-smtp.
func TestRelayFailoverWithSMTPSink(t *testing.T) {
	busy := startSMTPSink(t, "127.0.0.1:0", "-Q", "CONNECT")
	good := startSMTPSink(t, "127.0.0.1:0")
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
	first := startSMTPSink(t, "127.0.0.2:0", "-Q", "CONNECT")
	_, port, _ := net.SplitHostPort(first)
	startSMTPSink(t, "127.0.0.3:"+port)
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
