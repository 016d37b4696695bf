package message

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// bigFile writes size random bytes to a file named name in a new
// directory and returns its path and contents.
func bigFile(t *testing.T, name string, size int) (string, []byte) {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, b
}

func spoolFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestSharedSpoolsLargeMessage: a same-for-all message past the threshold
// is built once into a spool file; concurrent readers each stream all of
// it, building it allocates far less than its size, and the file goes
// when the last holder releases it.
func TestSharedSpoolsLargeMessage(t *testing.T) {
	const size = 16 << 20
	path, want := bigFile(t, "report.pdf", size)
	dir := t.TempDir()
	tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", Text: "same for all",
		Files: []Attachment{{Path: path, Name: "Jahresbericht für 2026.pdf"}}}, WithSpool(dir, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	body, err := tmpl.Shared("news:;")
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	// The first MiB is built in memory before the spool moves to a file.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 && !raceEnabled {
		t.Errorf("building a %d-byte message allocated %d bytes: it is held in memory", body.Size(), alloc)
	}
	if !body.Spooled() || spoolFiles(t, dir) != 1 {
		t.Fatalf("Spooled() = %v with %d files in the spool directory, want one file", body.Spooled(), spoolFiles(t, dir))
	}
	var wg sync.WaitGroup
	got := make([][]byte, 4)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _ = io.ReadAll(body.Reader())
		}()
	}
	wg.Wait()
	for i, g := range got {
		if int64(len(g)) != body.Size() {
			t.Fatalf("reader %d read %d bytes, want %d", i, len(g), body.Size())
		}
		if !bytes.Equal(g, got[0]) {
			t.Fatalf("reader %d read other bytes than reader 0", i)
		}
	}
	_, parts := readBack(t, got[0])
	if len(parts) != 2 || parts[1].filename != "Jahresbericht für 2026.pdf" || parts[1].contentType != "application/pdf" ||
		!bytes.Equal([]byte(parts[1].body), want) {
		t.Errorf("attachment did not come back intact: %d parts, %q %q", len(parts), parts[1].filename, parts[1].contentType)
	}
	if !strings.Contains(string(got[0][:4096]), "filename*=utf-8''Jahresbericht%20f%C3%BCr%202026.pdf") {
		t.Error("non-ASCII file name not RFC 2231 encoded")
	}

	again, _ := tmpl.Shared("news:;")
	tmpl.Close()
	body.Release()
	if spoolFiles(t, dir) != 1 {
		t.Error("spool file removed while a holder still had it")
	}
	again.Release()
	if n := spoolFiles(t, dir); n != 0 {
		t.Errorf("%d files left in the spool directory after the last Release", n)
	}
}

// TestBuildSpoolsPastThreshold: a personalized message stays in memory
// below the threshold and goes to a file above it, signed or not, and
// reads back the same as Render writes it.
func TestBuildSpoolsPastThreshold(t *testing.T) {
	path, _ := bigFile(t, "a.bin", 300<<10)
	for _, signed := range []bool{false, true} {
		c := Content{From: "news@example.test", Subject: "Hi {{.Name}}", Text: "Dear {{.Name}}", Attachments: []string{path}}
		if signed {
			c.DKIM = &DKIM{Domain: "example.test", Selector: "s1", Key: testEd25519Key(t)}
		}
		for _, over := range []int{1 << 20, 64 << 10} {
			dir := t.TempDir()
			tmpl, err := Parse(c, WithSpool(dir, over))
			if err != nil {
				t.Fatal(err)
			}
			b, err := tmpl.Build("ann@example.test", ann())
			if err != nil {
				t.Fatal(err)
			}
			if want := b.Size() > int64(over); b.Spooled() != want {
				t.Errorf("signed=%v over=%d: %d-byte message Spooled() = %v", signed, over, b.Size(), b.Spooled())
			}
			msg, err := b.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			if _, parts := readBack(t, msg); len(parts) != 2 || parts[0].body != "Dear Ann" {
				t.Errorf("signed=%v over=%d: message reads back as %d parts", signed, over, len(parts))
			}
			if signed && !bytes.HasPrefix(msg, []byte("DKIM-Signature:")) {
				t.Errorf("over=%d: signed message does not start with its signature", over)
			}
			b.Release()
			if n := spoolFiles(t, dir); n != 0 {
				t.Errorf("signed=%v over=%d: %d spool files left after Release", signed, over, n)
			}
		}
	}
}

func TestCheckFilename(t *testing.T) {
	for name, ok := range map[string]bool{
		"report.pdf":                       true,
		"Jahresbericht ü.pdf":              true,
		"年报.xlsx":                          true,
		"":                                 false,
		".":                                false,
		"..":                               false,
		"../etc/passwd":                    false,
		`a\b.txt`:                          false,
		"a\r\nBcc: x.txt":                  false,
		"bad\xffutf8":                      false,
		strings.Repeat("x", MaxFilename+1): false,
	} {
		if err := CheckFilename(name); (err == nil) != ok {
			t.Errorf("CheckFilename(%q) = %v, want ok %v", name, err, ok)
		}
	}
}
