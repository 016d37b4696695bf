package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blaster-mail/blaster/internal/crashtest"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

// runMainEnv makes the test binary run blaster's main instead of the
// tests: TestCrashFaults re-executes it as a worker process it can kill.
const runMainEnv = "BLASTER_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// selfCommand runs this test binary as `blaster args...`.
func selfCommand(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	return cmd
}

// TestCrashFaults sends a 5,000-recipient campaign to a server injecting
// faults (421 greetings, 451 to RCPT and after DATA, 550s, connections
// dropped before and after the final reply) while the worker process is
// SIGKILLed and restarted three times, then reconciles the server's record
// with the ledger recipient by recipient: nobody lost; under at-most-once
// nobody accepted twice and unknown only where a reply was lost or a
// worker died in the sending window; under at-least-once nobody unknown
// and accepted twice only where the ledger marks the recipient ambiguous.
func TestCrashFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("kills worker processes for ~30 s: skipped in -short mode")
	}
	for _, tc := range []struct {
		name                      string
		atLeastOnce, personalized bool
		seed                      uint64
	}{
		{"at-most-once/personalized", false, true, 1},
		{"at-least-once/same-for-all", true, false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := dbtest.Pool(t)
			dir := t.TempDir()
			if d := os.Getenv("BLASTER_CRASH_LOGS"); d != "" { // keep the worker logs
				dir = filepath.Join(d, strings.ReplaceAll(tc.name, "/", "-"))
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := crashtest.Run(context.Background(), crashtest.Config{
				Pool: pool, DatabaseURL: pool.Config().ConnString(), Recipients: 5000, Kills: 3, Seed: tc.seed,
				AtLeastOnce: tc.atLeastOnce, Personalized: tc.personalized,
				Command: selfCommand, Dir: dir, Log: testLog{t},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", rep)
			if err := rep.Check(); err != nil {
				t.Fatal(err)
			}
			if rep.GreetingFaults == 0 || rep.LostReplies == 0 || rep.Bounced == 0 {
				t.Errorf("the faults were not all injected: %+v", rep)
			}
		})
	}
}

// testLog writes progress lines to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}
