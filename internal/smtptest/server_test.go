package smtptest

import (
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
)

// TestServerCountsCommandsNotContent checks the command count skips the
// message content, even lines that look like commands.
func TestServerCountsCommandsNotContent(t *testing.T) {
	s := StartServer(t, Options{})
	c, err := gosmtp.Dial(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := "Subject: x\r\n\r\nNOOP\r\nQUIT\r\n.\r\n.. a stuffed dot\r\n" + strings.Repeat("y", 100) + "\r\n"
	if err := c.SendMail("a@example.test", []string{"b@example.test"}, strings.NewReader(body)); err != nil {
		t.Fatalf("SendMail: %v", err)
	}
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	for verb, want := range map[string]int{"EHLO": 1, "MAIL": 1, "RCPT": 1, "DATA": 1, "NOOP": 1, "QUIT": 1} {
		if got := s.Count(verb); got != want {
			t.Errorf("Count(%s) = %d, want %d", verb, got, want)
		}
	}
	m := s.Messages()
	if len(m) != 1 || m[0].Body != body || m[0].From != "a@example.test" || m[0].TLS || s.Connections() != 1 {
		t.Errorf("messages %+v, %d connections; want the one message in clear, one connection", m, s.Connections())
	}
}

// TestServerSTARTTLSAndAuth checks AUTH is required, over TLS, and that
// the commands after STARTTLS are not counted.
func TestServerSTARTTLSAndAuth(t *testing.T) {
	ca := NewCA(t, "mx.example.test")
	s := StartServer(t, Options{TLS: ca.ServerConfig(), User: "u", Pass: "p"})
	c, err := gosmtp.DialStartTLS(s.Addr, ca.ClientConfig())
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	defer c.Close()
	if err := c.Mail("a@example.test", nil); err == nil {
		t.Error("MAIL before AUTH accepted")
	}
	if err := c.Auth(sasl.NewPlainClient("", "u", "wrong")); err == nil {
		t.Error("a wrong password accepted")
	}
	if err := c.Auth(sasl.NewPlainClient("", "u", "p")); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	if err := c.SendMail("a@example.test", []string{"b@example.test"}, strings.NewReader("hi\r\n")); err != nil {
		t.Fatalf("SendMail: %v", err)
	}
	if m := s.Messages(); len(m) != 1 || !m[0].TLS || m[0].User != "u" || s.Logins() != 1 {
		t.Errorf("messages %+v, %d logins; want one over TLS from u, one login", m, s.Logins())
	}
	if s.Count("STARTTLS") != 1 || s.Count("MAIL") != 0 {
		t.Errorf("counted STARTTLS %d, MAIL %d times; want 1 and 0 (MAIL went over TLS)", s.Count("STARTTLS"), s.Count("MAIL"))
	}
}
