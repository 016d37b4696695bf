package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/throttle"
)

// TestThrottleStatus: a suspension and a lease made by a worker's Limiter
// show in `blaster throttle status`, as a table and as JSON, with the
// configured rates of --config.
func TestThrottleStatus(t *testing.T) {
	url := dbtest.New(t)
	ctx := context.Background()
	pool, err := db.Open(ctx, url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	conf := filepath.Join(t.TempDir(), "throttle.toml")
	err = os.WriteFile(conf, []byte(`
[routes."smtp://relay.example.test:587"]
rate = 200
burst = 20
[domains."example.test"]
rate = 5
max_connections = 3
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := throttle.LoadConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Pool = pool
	cfg.Logger = slog.New(slog.DiscardHandler)
	l, err := throttle.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	key := throttle.Key{Route: "smtp://relay.example.test:587", Domain: "example.test", Campaign: 3}
	// Delivering to the domain's MX hosts, the domain's limits apply and a
	// reply speaks for the domain.
	mxKey := throttle.Key{Route: "mx:mx.example.test", Domain: "example.test", Campaign: 3}
	for _, k := range []throttle.Key{key, mxKey} {
		if w, err := l.Acquire(ctx, k, 1); err != nil || w != 0 {
			t.Fatalf("acquire %+v: %v %v", k, w, err)
		}
	}
	l.Observe(mxKey, &smtp.Error{Reply: smtp.Reply{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 28}, Text: "unusual rate"}, Command: "MAIL"})

	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"--database-url", url, "throttle", "status", "--config", conf}, nil, &out, &errOut); err != nil {
		t.Fatalf("status: %v\n%s", err, errOut.String())
	}
	text := out.String()
	for _, want := range []string{"SCOPE", "route:smtp://relay.example.test:587", "200", "domain:example.test",
		"1.25", "0/3", "[gmail-rate] 421 4.7.28 unusual rate"} {
		if !strings.Contains(text, want) {
			t.Errorf("status output lacks %q:\n%s", want, text)
		}
	}

	out.Reset()
	if err := run(ctx, []string{"--database-url", url, "throttle", "status", "--json"}, nil, &out, &errOut); err != nil {
		t.Fatalf("status --json: %v\n%s", err, errOut.String())
	}
	var st []throttle.ScopeStatus
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out.String())
	}
	found := false
	for _, s := range st {
		if s.Scope == "domain:example.test" {
			found = true
			if s.SuspendedUntil == nil || s.Rule != "gmail-rate" || s.ConfiguredRate != 5 || s.CurrentRate != 1.25 {
				t.Errorf("JSON status of the suspended domain: %+v", s)
			}
		}
	}
	if !found {
		t.Errorf("suspended domain missing from %s", out.String())
	}
}
