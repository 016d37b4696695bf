package message

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// testRSAKey is one RSA-2048 key for the whole package's tests (generating
// one takes a noticeable moment on this machine).
func testRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			t.Fatal(err)
		}
	})
	return rsaKey
}

func testEd25519Key(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verifyDKIM verifies msg's one signature against pub published at
// s1._domainkey.example.test by a fake DNS lookup.
func verifyDKIM(t *testing.T, msg []byte, pub crypto.PublicKey) error {
	t.Helper()
	record, err := DKIMRecord(pub)
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(name string) ([]string, error) {
		if name != "s1._domainkey.example.test" {
			t.Errorf("DKIM lookup of %q", name)
		}
		return []string{record}, nil
	}
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		return err
	}
	if len(verifs) != 1 {
		t.Fatalf("%d DKIM signatures, want 1", len(verifs))
	}
	return verifs[0].Err
}

func TestDKIMSignatureVerifies(t *testing.T) {
	attachment := filepath.Join(t.TempDir(), "report.pdf")
	if err := os.WriteFile(attachment, bytes.Repeat([]byte("%PDF-1.4 \x00\xff\n"), 5000), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  crypto.Signer
	}{
		{"RSA-2048", testRSAKey(t)},
		{"Ed25519", testEd25519Key(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, err := Parse(Content{
				From:        "Néws <news@example.test>",
				Subject:     "Hello {{.Name}} — ünïcode",
				Text:        "Dear {{.Name}},\n\ntrailing spaces   \n\n\n",
				HTML:        "<p>Dear {{.Name}}</p>",
				Attachments: []string{attachment},
				Unsubscribe: Unsubscribe{BaseURL: "https://news.example.test/u", Mailto: "unsub@example.test", OneClick: true, Key: testUnsubKey},
				DKIM:        &DKIM{Domain: "example.test", Selector: "s1", Key: tc.key},
			})
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := tmpl.Render(&buf, "ann@example.test", ann()); err != nil {
				t.Fatal(err)
			}
			msg := buf.Bytes()
			if err := verifyDKIM(t, msg, tc.key.Public()); err != nil {
				t.Fatalf("DKIM verification failed: %v\n%s", err, msg)
			}
			// The signature names exactly the agreed header list.
			sig := string(msg[:bytes.Index(msg, []byte("\r\n\r\n"))])
			want := "h=From:From:To:To:Subject:Subject:Date:Message-Id:List-Unsubscribe:List-Unsubscribe-Post:MIME-Version:Content-Type;"
			if !strings.Contains(strings.ReplaceAll(sig, "\r\n ", ""), want) || !strings.Contains(sig, "c=relaxed/relaxed") {
				t.Errorf("signature header lacks %s or c=relaxed/relaxed:\n%s", want, sig)
			}

			// Altering any signed header, or adding a second From, breaks it.
			for _, alter := range []struct{ old, new string }{
				{"Subject: ", "Subject: X"},
				{"List-Unsubscribe: <", "List-Unsubscribe: <mailto:evil@example.test>, <"},
				{"List-Unsubscribe-Post: List-Unsubscribe=One-Click", "List-Unsubscribe-Post: List-Unsubscribe=Two-Click"},
				{"To: <ann@", "To: <bob@"},
				{"\r\n\r\n", "\r\nFrom: evil@example.test\r\n\r\n"},
				{"Dear Ann", "Dear Bob"},
			} {
				bad := bytes.Replace(msg, []byte(alter.old), []byte(alter.new), 1)
				if bytes.Equal(bad, msg) {
					t.Fatalf("%q not found in message", alter.old)
				}
				if err := verifyDKIM(t, bad, tc.key.Public()); err == nil {
					t.Errorf("signature still verifies after replacing %q with %q", alter.old, alter.new)
				}
			}
		})
	}
}

// TestDKIMSpoolsLargeMessages: a signed message past the spool limit goes
// through a temporary file, which is removed afterwards, and still verifies.
func TestDKIMSpoolsLargeMessages(t *testing.T) {
	dir := t.TempDir()
	attachment := filepath.Join(t.TempDir(), "big.bin")
	big := make([]byte, 1<<20)
	rand.Read(big)
	if err := os.WriteFile(attachment, big, 0o600); err != nil {
		t.Fatal(err)
	}
	key := testEd25519Key(t)
	tmpl, err := Parse(Content{
		From: "news@example.test", Subject: "Big", Text: "See attached.", Attachments: []string{attachment},
		DKIM: &DKIM{Domain: "example.test", Selector: "s1", Key: key},
	}, WithSpool(dir, 64<<10))
	if err != nil {
		t.Fatal(err)
	}
	w := &spyWriter{check: func() {
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("while writing: %d files in the spool directory, want 1", len(ents))
		}
	}}
	if err := tmpl.Render(w, "group:;", nil); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("after Render: %d files left in the spool directory", len(ents))
	}
	if err := verifyDKIM(t, w.buf.Bytes(), key.Public()); err != nil {
		t.Fatalf("DKIM verification failed: %v", err)
	}
	if got := attachmentBytes(t, w.buf.Bytes()); !bytes.Equal(got, big) {
		t.Errorf("attachment read back is %d bytes, differs from the %d written", len(got), len(big))
	}
}

// spyWriter runs check on the first Write.
type spyWriter struct {
	buf   bytes.Buffer
	check func()
}

func (w *spyWriter) Write(p []byte) (int, error) {
	if w.check != nil {
		w.check()
		w.check = nil
	}
	return w.buf.Write(p)
}

func TestLoadDKIMKey(t *testing.T) {
	dir := t.TempDir()
	rsaKey := testRSAKey(t)
	edKey := testEd25519Key(t)
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		file []byte
		want crypto.PublicKey // nil: an error
	}{
		{"rsa-pkcs8", pkcs8(rsaKey), rsaKey.Public()},
		{"rsa-pkcs1", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), rsaKey.Public()},
		{"ed25519-pkcs8", pkcs8(edKey), edKey.Public()},
		{"not pem", []byte("hello"), nil},
		{"public key", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}}), nil},
		{"garbage der", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := LoadDKIMKey(write(tc.name, tc.file))
			if tc.want == nil {
				if err == nil {
					t.Fatalf("LoadDKIMKey accepted %s", tc.name)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.want) {
				t.Errorf("loaded a different key")
			}
		})
	}
	if _, err := LoadDKIMKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadDKIMKey of a missing file succeeded")
	}
}

func TestDKIMConfigChecked(t *testing.T) {
	for _, d := range []*DKIM{
		{Selector: "s1", Key: testEd25519Key(t)},
		{Domain: "example.test", Key: testEd25519Key(t)},
		{Domain: "example.test", Selector: "s1"},
		{Domain: "example.test\r\nX: y", Selector: "s1", Key: testEd25519Key(t)},
	} {
		if _, err := Parse(Content{From: "a@example.test", Subject: "s", Text: "t", DKIM: d}); err == nil {
			t.Errorf("Parse accepted DKIM %+v", d)
		}
	}
}
