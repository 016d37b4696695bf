package message

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

// sinkBackend keeps every message an in-process go-smtp server receives.
type sinkBackend struct {
	mu   sync.Mutex
	msgs [][]byte
}

func (b *sinkBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{b: b}, nil }

type sinkSession struct{ b *sinkBackend }

func (s *sinkSession) Reset()                               {}
func (s *sinkSession) Logout() error                        { return nil }
func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.b.mu.Lock()
	s.b.msgs = append(s.b.msgs, b)
	s.b.mu.Unlock()
	return nil
}

// startSinkServer runs a go-smtp server on loopback that keeps every
// message it accepts, until the test ends.
func startSinkServer(t *testing.T) (*sinkBackend, net.Listener) {
	t.Helper()
	be := &sinkBackend{}
	srv := smtp.NewServer(be)
	srv.Domain = "mx.example.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return be, ln
}

// TestSignedMessageSurvivesSMTP sends signed messages through a real SMTP
// exchange (go-smtp client and server on loopback: dot-stuffing, CRLF) and
// checks that what the server received verifies and parses.
func TestSignedMessageSurvivesSMTP(t *testing.T) {
	be, ln := startSinkServer(t)

	key := testRSAKey(t)
	tmpl, err := Parse(Content{
		From:    "News <news@example.test>",
		Subject: "Dots for {{.Name}}",
		// Lines starting with "." are dot-stuffed on the wire (RFC 5321
		// §4.5.2) and must come out unchanged.
		Text:        ".\n..leading dots {{.Name}}\n.\nend",
		HTML:        "<p>{{.Name}}</p>",
		Unsubscribe: Unsubscribe{BaseURL: "https://news.example.test/u", OneClick: true, Key: testUnsubKey},
		DKIM:        &DKIM{Domain: "example.test", Selector: "s1", Key: key},
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, d := range []*Data{ann(), {Email: "bob@example.test", Name: "Bob", CampaignID: 3, ContactID: 10}} {
		var buf bytes.Buffer
		if err := tmpl.Render(&buf, d.Email, d); err != nil {
			t.Fatal(err)
		}
		if err := c.SendMail("bounce@example.test", []string{d.Email}, &buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if len(be.msgs) != 2 {
		t.Fatalf("server received %d messages, want 2", len(be.msgs))
	}
	for i, msg := range be.msgs {
		if err := verifyDKIM(t, msg, key.Public()); err != nil {
			t.Errorf("message %d: DKIM verification failed after SMTP: %v", i, err)
		}
		_, parts := readBack(t, msg)
		if len(parts) != 2 || parts[0].body[:2] != ".\r" {
			t.Errorf("message %d: parts %+v", i, parts)
		}
	}
}
