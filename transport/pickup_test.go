package transport_test

import (
	"context"
	"fmt"
	"io"
	"net/mail"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/transport"
)

func TestPickupWritesParsableFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pickup")
	p, err := transport.NewPickup(dir, transport.PickupOptions{})
	if err != nil {
		t.Fatalf("NewPickup: %v", err)
	}
	if got, want := p.Route("example.test"), "pickup:"+dir; got != want {
		t.Errorf("Route = %q, want %q", got, want)
	}
	s, err := p.Session(context.Background(), "example.test")
	if err != nil {
		t.Fatalf("Session: %v", err)
	}
	env := &smtp.Envelope{
		From:  "news@example.test",
		Rcpts: []smtp.Recipient{{Addr: "a@example.test"}, {Addr: "b@example.test"}, {Addr: "c@example.test"}},
	}
	const msg = "From: news@example.test\r\nSubject: Hello\r\n\r\nBody line 1\r\nBody line 2\r\n"
	res, err := s.Send(context.Background(), env, strings.NewReader(msg))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	s.Release(nil)
	if len(res.Rcpts) != 3 || res.Data == nil || res.Data.Code != 250 {
		t.Fatalf("result = %+v, want 3 recipient replies and a 250 data reply", res)
	}
	for i, r := range res.Rcpts {
		if r == nil || r.Code != 250 {
			t.Errorf("recipient %d reply = %v, want 250", i, r)
		}
	}

	files := emlFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("pickup holds %d .eml files, want 1", len(files))
	}
	if !strings.Contains(res.Data.Text, filepath.Base(files[0])) {
		t.Errorf("data reply %q does not name the file %s", res.Data.Text, files[0])
	}
	m := readMessage(t, files[0])
	if got := m.Header.Get("X-Sender"); got != env.From {
		t.Errorf("X-Sender = %q, want %q", got, env.From)
	}
	if got := m.Header["X-Receiver"]; strings.Join(got, ",") != "a@example.test,b@example.test,c@example.test" {
		t.Errorf("X-Receiver = %q, want the three recipients in order", got)
	}
	if got := m.Header.Get("Subject"); got != "Hello" {
		t.Errorf("Subject = %q", got)
	}
	body, _ := io.ReadAll(m.Body)
	if string(body) != "Body line 1\r\nBody line 2\r\n" {
		t.Errorf("body = %q", body)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Errorf("tmp holds %d files after the write", len(left))
	}
}

func TestPickupNullSenderAndUniqueNames(t *testing.T) {
	dir := t.TempDir()
	p, err := transport.NewPickup(dir, transport.PickupOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			s, _ := p.Session(context.Background(), "example.test")
			for i := range each {
				env := &smtp.Envelope{Rcpts: []smtp.Recipient{{Addr: fmt.Sprintf("r%d-%d@example.test", w, i)}}}
				if _, err := s.Send(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
					t.Errorf("Send: %v", err)
				}
			}
		})
	}
	wg.Wait()
	files := emlFiles(t, dir)
	if len(files) != writers*each {
		t.Fatalf("%d files for %d messages", len(files), writers*each)
	}
	seen := map[string]bool{}
	for _, f := range files {
		m := readMessage(t, f)
		if got := m.Header.Get("X-Sender"); got != "<>" {
			t.Errorf("%s: X-Sender = %q, want <> for the null reverse path", f, got)
		}
		rcpt := m.Header.Get("X-Receiver")
		if seen[rcpt] {
			t.Errorf("recipient %s written twice", rcpt)
		}
		seen[rcpt] = true
	}
}

func TestPickupRefusesHeaderInjection(t *testing.T) {
	dir := t.TempDir()
	p, _ := transport.NewPickup(dir, transport.PickupOptions{})
	s, _ := p.Session(context.Background(), "example.test")
	for _, env := range []*smtp.Envelope{
		{From: "a@example.test\r\nX-Receiver: evil@example.test", Rcpts: []smtp.Recipient{{Addr: "b@example.test"}}},
		{From: "a@example.test", Rcpts: []smtp.Recipient{{Addr: "b@example.test\nBcc: evil@example.test"}}},
		{From: "a@example.test"},
	} {
		if _, err := s.Send(context.Background(), env, strings.NewReader("x\r\n")); err == nil {
			t.Errorf("Send(%+v) succeeded", env)
		}
	}
	leftNothing(t, dir, "refused sends")
}

// leftNothing fails t when what (a failed send) left a .eml file in dir
// or a temporary file in dir/tmp.
func leftNothing(t *testing.T, dir, what string) {
	t.Helper()
	if files := emlFiles(t, dir); len(files) != 0 {
		t.Errorf("%s left %d .eml files", what, len(files))
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Errorf("%s left %d temp files", what, len(left))
	}
}

func TestPickupFailedBodyLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	p, _ := transport.NewPickup(dir, transport.PickupOptions{})
	s, _ := p.Session(context.Background(), "example.test")
	env := &smtp.Envelope{From: "a@example.test", Rcpts: []smtp.Recipient{{Addr: "b@example.test"}}}
	body := io.MultiReader(strings.NewReader("Subject: x\r\n\r\npartial"), errReader{io.ErrUnexpectedEOF})
	if _, err := s.Send(context.Background(), env, body); err == nil {
		t.Fatal("Send with a failing body succeeded")
	}
	leftNothing(t, dir, "a failed body")
}

// TestPickupStreamsTheBody writes a 64 MiB body and checks the bytes
// allocated meanwhile are a small fraction of it: the body is never held
// whole.
func TestPickupStreamsTheBody(t *testing.T) {
	dir := t.TempDir()
	p, _ := transport.NewPickup(dir, transport.PickupOptions{NoSync: true})
	s, _ := p.Session(context.Background(), "example.test")
	env := &smtp.Envelope{From: "a@example.test", Rcpts: []smtp.Recipient{{Addr: "b@example.test"}}}
	const size = 64 << 20
	body := io.MultiReader(strings.NewReader("Subject: big\r\n\r\n"), io.LimitReader(lineSource{}, size))

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := s.Send(context.Background(), env, body); err != nil {
		t.Fatalf("Send: %v", err)
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/16 {
		t.Errorf("writing a %d-byte body allocated %d bytes", size, alloc)
	}
	files := emlFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("%d files", len(files))
	}
	fi, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < size {
		t.Errorf("file holds %d bytes, want more than %d", fi.Size(), size)
	}
}

func TestPickupHonoursContext(t *testing.T) {
	dir := t.TempDir()
	p, _ := transport.NewPickup(dir, transport.PickupOptions{})
	s, _ := p.Session(context.Background(), "example.test")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	env := &smtp.Envelope{From: "a@example.test", Rcpts: []smtp.Recipient{{Addr: "b@example.test"}}}
	if _, err := s.Send(ctx, env, strings.NewReader("x\r\n")); err == nil {
		t.Error("Send with an ended context succeeded")
	}
	if files := emlFiles(t, dir); len(files) != 0 {
		t.Errorf("%d files written", len(files))
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// lineSource is an endless body of 78-character lines.
type lineSource struct{}

func (lineSource) Read(b []byte) (int, error) {
	const line = "0123456789012345678901234567890123456789012345678901234567890123456789012345\r\n"
	n := 0
	for n < len(b) {
		n += copy(b[n:], line[n%len(line):])
	}
	return n, nil
}

func emlFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func readMessage(t *testing.T, path string) *mail.Message {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	m, err := mail.ReadMessage(f)
	if err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	return m
}
