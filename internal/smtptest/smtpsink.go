package smtptest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// SmtpSinkPath is where Debian's postfix package installs smtp-sink.
const SmtpSinkPath = "/usr/sbin/smtp-sink"

// SmtpSink is a running smtp-sink that dumps every transaction to one file.
type SmtpSink struct {
	Addr string // host:port on loopback
	Dump string // the dump file (smtp-sink -D)
}

// StartSmtpSink runs smtp-sink on a free loopback port with extra flags
// (e.g. fault injection) and stops it when t ends. It skips t when
// smtp-sink is not installed, except in CI (CI=true), where that fails.
func StartSmtpSink(t testing.TB, flags ...string) *SmtpSink {
	t.Helper()
	if _, err := os.Stat(SmtpSinkPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("smtp-sink missing in CI: %v", err)
		}
		t.Skip("smtp-sink not installed (Debian package postfix)")
	}
	addr := ClosedAddr(t)
	// smtp-sink runs as nobody (-u) when we are root and must write its
	// dump; t.TempDir's parent is private, so the directory goes in /tmp.
	dir, err := os.MkdirTemp("", "smtp-sink-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	dump := filepath.Join(dir, "dump")
	args := append([]string{"-D", dump}, flags...)
	args = append(args, addr, "256")
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "nobody"}, args...)
	}
	cmd := exec.Command(SmtpSinkPath, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return &SmtpSink{Addr: addr, Dump: dump}
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink not answering on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Recipients counts each recipient address in the dump (its X-Rcpt-Args
// lines): what smtp-sink itself says it accepted.
func (s *SmtpSink) Recipients(t testing.TB) map[string]int {
	t.Helper()
	b, err := os.ReadFile(s.Dump)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "X-Rcpt-Args: <"); ok {
			a, _, _ := strings.Cut(rest, ">")
			got[a]++
		}
	}
	return got
}
