package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-msgauth/dkim"

	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/message"
	"github.com/blaster-mail/blaster/unsubscribe"
)

// TestCampaignPreview previews a personalized, DKIM-signed campaign with
// one-click unsubscribe for the list's first member, for a chosen member and
// for an empty list, and checks the message as a receiver would: the
// signature verifies, the token is the contact's, the merge fields are
// filled.
func TestCampaignPreview(t *testing.T) {
	url := dbtest.New(t)
	dir := t.TempDir()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "dkim.pem")
	unsubKey := []byte("0123456789abcdef0123456789abcdef")
	unsubFile := filepath.Join(dir, "unsub.key")
	textFile := filepath.Join(dir, "body.txt")
	for path, b := range map[string][]byte{
		keyFile:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		unsubFile: unsubKey,
		textFile:  []byte("Hello {{.Name | default \"friend\"}} in {{.Attrs.city}}\nLeave: {{.UnsubscribeURL}}\n"),
	} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	csv := "email,name,city\nbob@b.example.test,Bob,Rome\nann@a.example.test,Ann,Oslo\n"
	if _, stderr, err := runContactCLI(t, url, csv, "import", "--list", "news", "-"); err != nil {
		t.Fatalf("import: %v\n%s", err, stderr)
	}
	create := func(list string) string {
		t.Helper()
		out, stderr, err := runContactCLI(t, url, "", "campaign", "create", "--name", "n", "--list", list,
			"--from", "News <news@example.test>", "--subject", "Hi {{.Name}}", "--text", textFile,
			"--unsubscribe-url", "https://news.example.test/u", "--one-click", "--unsubscribe-key-file", unsubFile,
			"--dkim-domain", "example.test", "--dkim-selector", "s1", "--dkim-key", keyFile)
		if err != nil {
			t.Fatalf("campaign create: %v\n%s", err, stderr)
		}
		return strings.TrimSpace(out)
	}
	id := create("news")

	record, err := message.DKIMRecord(pub)
	if err != nil {
		t.Fatal(err)
	}
	check := func(args []string, wantTo, wantSubject, wantBody string) {
		t.Helper()
		out, stderr, err := runContactCLI(t, url, "", append([]string{"campaign", "preview", "--unsubscribe-key-file", unsubFile}, args...)...)
		if err != nil {
			t.Fatalf("preview %v: %v\n%s", args, err, stderr)
		}
		msg := []byte(out)
		if !bytes.Contains(msg, []byte("\r\n")) || bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n")) {
			t.Errorf("preview %v: lines do not all end in CRLF", args)
		}
		verifs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
			LookupTXT: func(string) ([]string, error) { return []string{record}, nil },
		})
		if err != nil || len(verifs) != 1 || verifs[0].Err != nil {
			t.Errorf("preview %v: DKIM verification %v %+v", args, err, verifs)
		}
		r, err := mail.CreateReader(bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("preview %v: not a message: %v", args, err)
		}
		if to := r.Header.Get("To"); to != wantTo {
			t.Errorf("preview %v: To %q, want %q", args, to, wantTo)
		}
		if s, _ := r.Header.Subject(); s != wantSubject {
			t.Errorf("preview %v: Subject %q, want %q", args, s, wantSubject)
		}
		p, err := r.NextPart()
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(p.Body)
		if !strings.Contains(string(body), wantBody) {
			t.Errorf("preview %v: body %q, want it to contain %q", args, body, wantBody)
		}
		// The one-click link carries a token for this very recipient.
		i := strings.Index(string(body), "https://news.example.test/u/")
		if i < 0 {
			t.Fatalf("preview %v: no one-click link in %q", args, body)
		}
		tok := strings.Fields(string(body[i+len("https://news.example.test/u/"):]))[0]
		addr := strings.Trim(wantTo[strings.LastIndex(wantTo, "<")+1:], "<>")
		if _, err := unsubscribe.Verify(unsubKey, tok, addr); err != nil {
			t.Errorf("preview %v: token does not verify for %s: %v", args, addr, err)
		}
	}
	// Default: the list's first member (contacts are numbered in address
	// order by the import, so ann).
	check([]string{id}, `<ann@a.example.test>`, "Hi Ann", "Hello Ann in Oslo")
	check([]string{id, "--contact", "BOB@b.example.test"}, `<bob@b.example.test>`, "Hi Bob", "Hello Bob in Rome")

	if _, _, err := runContactCLI(t, url, "email\ncarl@c.example.test\n", "import", "--list", "other", "-"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runContactCLI(t, url, "", "campaign", "preview", "--unsubscribe-key-file", unsubFile, id, "--contact", "carl@c.example.test"); err == nil ||
		!strings.Contains(err.Error(), `not a member of list "news"`) {
		t.Errorf("preview for a contact of another list: %v, want a not-a-member error", err)
	}
	if _, _, err := runContactCLI(t, url, "", "campaign", "preview", id); err == nil || !strings.Contains(err.Error(), "token key") {
		t.Errorf("preview of a one-click campaign without the key: %v, want an error naming the key", err)
	}

	// An empty list previews the sample contact.
	if _, _, err := runContactCLI(t, url, "email,name\n", "import", "--list", "empty", "-"); err != nil {
		t.Fatal(err)
	}
	s := message.DefaultSamples[0]
	check([]string{create("empty")}, `<`+s.Email+`>`, "Hi "+s.Name, "Hello "+s.Name+" in "+s.Attrs["city"])
}

// TestCampaignPreviewSameForAll previews a campaign whose message is the
// same for every recipient: addressed to the list as a group, as the worker
// sends it.
func TestCampaignPreviewSameForAll(t *testing.T) {
	url := dbtest.New(t)
	if _, _, err := runContactCLI(t, url, "email\nann@a.example.test\n", "import", "--list", "Weekly news", "-"); err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(t.TempDir(), "body.txt")
	if err := os.WriteFile(text, []byte("News for all.\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	attach := filepath.Join(t.TempDir(), "prices.csv")
	if err := os.WriteFile(attach, []byte("item,price\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := runContactCLI(t, url, "", "campaign", "create", "--name", "n", "--list", "Weekly news", "--text", text,
		"--from", "news@example.test", "--subject", "Our news", "--unsubscribe-mailto", "leave@example.test", "--attach", attach)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	msg, stderr, err := runContactCLI(t, url, "", "campaign", "preview", strings.TrimSpace(out), "--contact", "ann@a.example.test")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "same message to every recipient") {
		t.Errorf("stderr %q does not say the message is the same for all", stderr)
	}
	r, err := mail.CreateReader(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if to := r.Header.Get("To"); to != "Weekly news:;" {
		t.Errorf("To %q, want the group Weekly news:;", to)
	}
	if lu := r.Header.Get("List-Unsubscribe"); !strings.Contains(lu, "mailto:leave@example.test") {
		t.Errorf("List-Unsubscribe %q", lu)
	}
	if !strings.Contains(msg, "filename=prices.csv") || !strings.Contains(msg, "aXRlbSxwcmljZQo=") { // base64 of the file
		t.Errorf("the preview lacks the stored attachment:\n%s", msg)
	}
}
