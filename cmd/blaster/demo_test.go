package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

// demoSinkEnv, when set, makes the test binary act as `blaster sink` on
// the address it holds: TestDemoSinkHelper. The helper-process pattern is
// os/exec's own (TestHelperProcess in its tests); it lets the demo start
// its sink as a child process without building the blaster binary.
const demoSinkEnv = "BLASTER_DEMO_TEST_SINK_ADDR"

func TestDemoSinkHelper(t *testing.T) {
	addr := os.Getenv(demoSinkEnv)
	if addr == "" {
		t.Skip("helper process for TestDemo")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, []string{"sink", "--addr", addr, "--log-level", "warn"}, os.Stdin, os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sink helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helperSinkCommand(addr string) (*exec.Cmd, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestDemoSinkHelper$")
	cmd.Env = append(os.Environ(), demoSinkEnv+"="+addr)
	return cmd, nil
}

// TestDemo runs the demo twice on one database: each run sends a new
// campaign to every sample contact through a sink child process, and the
// second import changes nothing.
func TestDemo(t *testing.T) {
	url := dbtest.New(t)
	dir := t.TempDir()
	const n = 300
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	for run := 1; run <= 2; run++ {
		var stdout, stderr bytes.Buffer
		a := &app{stdout: &stdout, stderr: &stderr, logger: newLogger(&stderr, slog.LevelWarn), databaseURL: url}
		err := runDemo(ctx, a, demoOptions{dir: dir, contacts: n, workers: 4, timeout: time.Minute,
			sinkCommand: helperSinkCommand})
		if err != nil {
			t.Fatalf("run %d: %v\nstdout:\n%s\nstderr:\n%s", run, err, &stdout, &stderr)
		}
		out := stdout.String()
		if !strings.Contains(out, fmt.Sprintf("%d recipients", n)) {
			t.Errorf("run %d: no sink summary with %d recipients in:\n%s", run, n, out)
		}
		wantImport := "0 new, 0 updated, 300 unchanged, 0 rejected"
		if run == 1 {
			wantImport = "300 new, 0 updated, 0 unchanged, 0 rejected"
		}
		if !strings.Contains(out, wantImport) {
			t.Errorf("run %d: import line %q missing in:\n%s", run, wantImport, out)
		}
	}

	pool, err := db.Open(ctx, url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	cs, err := campaign.List(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 {
		t.Fatalf("%d campaigns after two runs, want 2", len(cs))
	}
	for _, c := range cs {
		s, err := campaign.GetStatus(ctx, pool, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s.State != campaign.Done || s.Sent != n || s.Total != n {
			t.Errorf("campaign %d: state %s, sent %d of %d; want done, %d of %d", c.ID, s.State, s.Sent, s.Total, n, n)
		}
	}
}

func TestWriteSampleCSV(t *testing.T) {
	path := t.TempDir() + "/c.csv"
	if err := writeSampleCSV(path, 500); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(path)
	if err := writeSampleCSV(path, 500); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(path)
	if !bytes.Equal(first, second) {
		t.Error("two samples of the same size differ: a rerun would change contacts")
	}
	rows, err := csv.NewReader(bytes.NewReader(first)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 501 || strings.Join(rows[0], ",") != "email,name,city" {
		t.Fatalf("%d rows, header %v", len(rows), rows[0])
	}
	seen := map[string]bool{}
	for _, r := range rows[1:] {
		email := r[0]
		domain := email[strings.LastIndexByte(email, '@')+1:]
		if !strings.HasSuffix(domain, ".test") && !strings.HasPrefix(domain, "example.") {
			t.Errorf("%s: not a reserved (RFC 2606) domain", email)
		}
		if seen[email] {
			t.Errorf("%s twice", email)
		}
		seen[email] = true
		if r[1] == "" || r[2] == "" {
			t.Errorf("%s: empty name or city: %v", email, r)
		}
	}
}

func TestSinkRecipients(t *testing.T) {
	for _, tc := range []struct {
		in string
		n  int
		ok bool
	}{
		{"sink: 16 connections, 10000 messages, 10000 recipients, 31415926 bytes", 10000, true},
		{"sink: 1 connections, 1 messages, 0 recipients, 0 bytes", 0, true},
		{"", 0, false},
		{"sink: 1 connections", 0, false},
		{"recipients", 0, false},
		{"sink: x recipients", 0, false},
	} {
		n, ok := sinkRecipients(tc.in)
		if n != tc.n || ok != tc.ok {
			t.Errorf("sinkRecipients(%q) = %d, %v; want %d, %v", tc.in, n, ok, tc.n, tc.ok)
		}
	}
}
