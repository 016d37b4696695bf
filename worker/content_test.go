package worker_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/message"
	"github.com/blaster-mail/blaster/sink"
	"github.com/blaster-mail/blaster/unsubscribe"
	"github.com/blaster-mail/blaster/worker"
)

// TestSignedOneClickCampaign sends a one-click, DKIM-signed campaign
// through the worker and checks every message the server stored: the DKIM
// signature verifies against the test key, and the List-Unsubscribe token
// is the recipient's own.
func TestSignedOneClickCampaign(t *testing.T) {
	pool := dbtest.Pool(t)
	emails := seedList(t, pool, "news", 20)

	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "dkim.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	record, err := message.DKIMRecord(pub)
	if err != nil {
		t.Fatal(err)
	}
	unsubKey := bytes.Repeat([]byte("k"), 32)
	sec := campaign.Secrets{UnsubscribeKey: unsubKey}

	dir := t.TempDir()
	srv := sink.New(sink.Config{Dir: dir})
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	w, err := worker.New(worker.Config{Pool: pool, Transport: relayTransport(t, srv.Addr()), Secrets: sec,
		FetchInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer w.Stop(context.Background())

	c, err := campaign.Create(context.Background(), pool, campaign.New{
		Name: "signed", List: "news", From: "News <news@sender.example.test>",
		Subject: "Weekly news", Text: "Same text for all.\n", Secrets: sec,
		Settings: campaign.Settings{
			Unsubscribe: &campaign.Unsubscribe{BaseURL: "https://news.example.test/u", OneClick: true},
			DKIM:        &campaign.DKIM{Domain: "sender.example.test", Selector: "s1", KeyFile: keyFile},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Personalized {
		t.Fatal("a one-click campaign must be personalized (one link per recipient)")
	}
	start(t, pool, c.ID)
	if st := waitDone(t, pool, c.ID); st.Sent != len(emails) {
		t.Fatalf("status %+v, want %d sent", st, len(emails))
	}

	files, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	if len(files) != len(emails) {
		t.Fatalf("server stored %d messages, want %d", len(files), len(emails))
	}
	lookup := func(domain string) ([]string, error) {
		if domain != "s1._domainkey.sender.example.test" {
			t.Errorf("DKIM lookup of %q", domain)
		}
		return []string{record}, nil
	}
	tokenRE := regexp.MustCompile(`https://news\.example\.test/u/([^>]+)>`)
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// The sink writes its envelope lines (X-Sender, X-Receiver) first.
		var rcpt string
		msg := raw
		for {
			line, rest, _ := bytes.Cut(msg, []byte("\r\n"))
			if v, ok := bytes.CutPrefix(line, []byte("X-Receiver: ")); ok {
				rcpt = string(v)
			} else if !bytes.HasPrefix(line, []byte("X-Sender: ")) {
				break
			}
			msg = rest
		}
		verifs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookup})
		if err != nil || len(verifs) != 1 || verifs[0].Err != nil {
			t.Fatalf("%s: DKIM verification failed: %v %+v", rcpt, err, verifs)
		}
		m := tokenRE.FindSubmatch(msg)
		if m == nil {
			t.Fatalf("%s: no one-click List-Unsubscribe link", rcpt)
		}
		if _, err := unsubscribe.Verify(unsubKey, string(m[1]), rcpt); err != nil {
			t.Fatalf("%s: token does not verify for its recipient: %v", rcpt, err)
		}
		if !bytes.Contains(msg, []byte("List-Unsubscribe-Post: List-Unsubscribe=One-Click")) {
			t.Fatalf("%s: no List-Unsubscribe-Post", rcpt)
		}
	}
}
