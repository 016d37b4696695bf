package smtptest

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// SmtpSinkPath is where Debian's postfix package installs smtp-sink.
const SmtpSinkPath = "/usr/sbin/smtp-sink"

// SmtpSink is a running smtp-sink.
type SmtpSink struct {
	Addr string // host:port on loopback
	Dump string // the dump file (smtp-sink -D); "" without SmtpSinkOptions.Dump
}

// SmtpSinkOptions configure RunSmtpSink.
type SmtpSinkOptions struct {
	// Listen is the loopback address; a port of 0 picks a free one.
	// Default "127.0.0.1:0".
	Listen string
	// Dump makes smtp-sink write every transaction to SmtpSink.Dump.
	// Off for benchmarks, which would measure the disk.
	Dump bool
	// Flags are more smtp-sink flags: fault injection (-Q CONNECT, -r
	// RCPT, -A 0), no PIPELINING (-p), and so on.
	Flags []string
}

// StartSmtpSink runs smtp-sink on a free loopback port with a dump and the
// extra flags, until t ends.
func StartSmtpSink(t testing.TB, flags ...string) *SmtpSink {
	t.Helper()
	return RunSmtpSink(t, SmtpSinkOptions{Dump: true, Flags: flags})
}

// RunSmtpSink runs smtp-sink as o says, as nobody when we are root, and
// stops it when t ends. It skips t when smtp-sink is not installed,
// except in CI (CI=true), where that fails. It fails t with smtp-sink's
// stderr when smtp-sink exits or does not accept a connection within ten
// seconds.
func RunSmtpSink(t testing.TB, o SmtpSinkOptions) *SmtpSink {
	t.Helper()
	if _, err := os.Stat(SmtpSinkPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("smtp-sink missing in CI: %v", err)
		}
		t.Skip("smtp-sink not installed (Debian package postfix)")
	}
	addr := o.Listen
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	if host, port, _ := net.SplitHostPort(addr); port == "0" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("finding a free port on %s: %v", host, err)
		}
		addr = ln.Addr().String()
		_ = ln.Close()
	}
	s := &SmtpSink{Addr: addr}
	args := append([]string{}, o.Flags...)
	if o.Dump {
		// smtp-sink runs as nobody (-u) when we are root and must write
		// its dump; t.TempDir's parent is private, so it goes in /tmp.
		dir, err := os.MkdirTemp("", "smtp-sink-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		s.Dump = filepath.Join(dir, "dump")
		args = append([]string{"-D", s.Dump}, args...)
	}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "nobody"}, args...)
	}
	args = append(args, addr, "256")
	var stderr bytes.Buffer
	cmd := exec.Command(SmtpSinkPath, args...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting smtp-sink: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var reaped sync.Once
	stop := func() {
		reaped.Do(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			reaped.Do(func() {})
			t.Fatalf("smtp-sink %v exited: %v: %s", args, err, stderr.String())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return s
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("smtp-sink %v not accepting on %s: %v: %s", args, addr, err, stderr.String())
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
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
