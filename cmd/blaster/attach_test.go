package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/internal/smtptest"
)

// TestSendAttachAndDSN: 'send --attach --dsn-notify --dsn-ret' delivers
// the file and asks for notifications; bad DSN flags and an unusable
// attachment are refused before anything is sent.
func TestSendAttachAndDSN(t *testing.T) {
	url := dbtest.New(t)
	srv := smtptest.StartServer(t, smtptest.Options{})
	sendTestWorker(t, url, srv.Addr)
	dir := t.TempDir()
	file := filepath.Join(dir, "incident.txt")
	if err := os.WriteFile(file, []byte("disk /var at 100%\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{
		{"--dsn-notify", "never,failure"},
		{"--dsn-ret", "body"},
		{"--attach", dir},
	} {
		args := append([]string{"--to", "ann@alpha.example.test", "--text", "x"}, bad...)
		if _, _, err := runSendCLI(t, url, "", args...); err == nil {
			t.Errorf("send %v: no error", bad)
		}
	}
	if n := len(srv.Messages()); n != 0 {
		t.Fatalf("refused sends delivered %d messages", n)
	}
	_, stderr, err := runSendCLI(t, url, "", "--to", "ann@alpha.example.test", "--text", "See attached.",
		"--attach", file, "--dsn-notify", "failure,delay", "--dsn-ret", "hdrs", "--wait")
	if err != nil {
		t.Fatalf("send: %v\n%s", err, stderr)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if !strings.Contains(m.Body, `Content-Disposition: attachment; filename=incident.txt`) ||
		!strings.Contains(m.Body, "ZGlzayAvdmFyIGF0IDEwMCUK") { // base64 of the file
		t.Errorf("attachment missing from the message:\n%s", m.Body)
	}
	if m.Opts.Return != gosmtp.DSNReturnHeaders || !strings.HasPrefix(m.Opts.EnvelopeID, "blaster.") ||
		!slices.Equal(m.RcptOpts[0].Notify, []gosmtp.DSNNotify{gosmtp.DSNNotifyFailure, gosmtp.DSNNotifyDelayed}) {
		t.Errorf("DSN parameters: RET %q ENVID %q NOTIFY %v", m.Opts.Return, m.Opts.EnvelopeID, m.RcptOpts[0].Notify)
	}
}
