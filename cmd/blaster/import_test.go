package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blaster-mail/blaster/internal/dbtest"
)

// runContactCLI runs blaster with args and stdin against the database at url.
func runContactCLI(t *testing.T, url, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), append([]string{"--database-url", url}, args...), strings.NewReader(stdin), &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func TestImportCommand(t *testing.T) {
	url := dbtest.New(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "people.csv")
	var b strings.Builder
	b.WriteString("E-Mail;Full Name;city\n")
	b.WriteString("ann@example.com;Ann;Oslo\n")
	for i := range 25 { // lines 3..27, all bad
		fmt.Fprintf(&b, "bad%d;X;Y\n", i)
	}
	b.WriteString("ann@example.com;Ann again;Oslo\n") // line 28, duplicate
	b.WriteString("bob@example.com;Bob;Rome\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	stdout, stderr, err := runContactCLI(t, url, "", "import", "--list", "news", "--map", "email=E-Mail,name=Full Name", path)
	if err != nil {
		t.Fatalf("import: %v\n%s", err, stderr)
	}
	if want := "imported 2 (inserted 2, updated 0, unchanged 0), rejected 25, duplicates 1"; !strings.Contains(stdout, want) {
		t.Errorf("stdout %q, want it to contain %q", stdout, want)
	}
	rejectsPath := path + ".rejects.csv"
	for _, want := range []string{
		path + ":3: email: missing @\n",
		path + ":22: email: missing @\n",
		"... and 5 more in " + rejectsPath,
		"written to " + rejectsPath,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, ":23:") {
		t.Errorf("stderr lists more than %d rejects:\n%s", maxShownRejects, stderr)
	}
	rejects, err := os.ReadFile(rejectsPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(rejects), "\n"); n != 1+25+1 {
		t.Errorf("rejects file has %d lines, want a header, 25 rejects and 1 duplicate:\n%s", n, rejects)
	}
	if st, err := os.Stat(rejectsPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("rejects file mode %v, %v; want 0600 (it holds personal data)", st.Mode(), err)
	}

	// stdin, dry run, no rejects: no rejects file, nothing written.
	stdout, stderr, err = runContactCLI(t, url, "email,name\ncarl@example.com,Carl\nann@example.com,Ann\n", "import", "--list", "news", "--dry-run", "-")
	if err != nil {
		t.Fatalf("import -: %v\n%s", err, stderr)
	}
	if want := "dry run, nothing written: imported 2 (inserted 1, updated 0, unchanged 1), rejected 0"; !strings.Contains(stdout, want) {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	stdout, stderr, err = runContactCLI(t, url, "email\tname\ncarl@example.com\tCarl\n", "import", "--list", "news", "--delimiter", "tab", "-")
	if err != nil {
		t.Fatalf("import: %v\n%s", err, stderr)
	}
	if !strings.Contains(stdout, "inserted 1,") {
		t.Errorf("after the dry run carl is new again: stdout %q", stdout)
	}

	// A missing file and a missing email column are errors naming the file.
	if _, _, err := runContactCLI(t, url, "", "import", "--list", "news", filepath.Join(dir, "none.csv")); err == nil {
		t.Error("importing a missing file succeeded")
	}
	noEmail := filepath.Join(dir, "noemail.csv")
	os.WriteFile(noEmail, []byte("name\nAnn\n"), 0o600)
	if _, _, err := runContactCLI(t, url, "", "import", "--list", "news", noEmail); err == nil || !strings.Contains(err.Error(), noEmail+":1:") {
		t.Errorf("import without an email column: %v, want an error naming %s:1", err, noEmail)
	}
}

// TestProgressBar draws the bar as it would on a terminal: the share of
// the input read, then the merge note, then nothing left after clear.
func TestProgressBar(t *testing.T) {
	var buf bytes.Buffer
	read := &countingReader{r: strings.NewReader(strings.Repeat("x", 100))}
	io.CopyN(io.Discard, read, 50)
	b := &progressBar{w: &buf, tty: true, size: 100, read: read}
	b.update(10_000)
	if !strings.Contains(buf.String(), " 50%  10000 rows") {
		t.Errorf("bar at half the input: %q", buf.String())
	}
	b.merging()
	if !strings.Contains(buf.String(), "100%  read; merging") {
		t.Errorf("bar while merging: %q", buf.String())
	}
	buf.Reset()
	b.clear()
	if buf.String() != "\r\033[K" {
		t.Errorf("clear wrote %q", buf.String())
	}
	quiet := &progressBar{w: &buf, size: 100, read: read}
	buf.Reset()
	quiet.update(10_000)
	quiet.merging()
	if buf.Len() != 0 {
		t.Errorf("bar drawn on a non-terminal: %q", buf.String())
	}
}
