package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

// TestCampaignCreateDelivery: the delivery policy (retry schedule, maximum
// age, at-least-once, max_rcpt) comes from the config file's [campaign]
// table, flags win over it, and bad values name the file and setting.
func TestCampaignCreateDelivery(t *testing.T) {
	url := dbtest.New(t)
	ctx := context.Background()
	pool, err := db.Open(ctx, url, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, _, err := runContactCLI(t, url, "email\na@alpha.example.test\n", "import", "--list", "news", "-"); err != nil {
		t.Fatalf("import: %v", err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "blaster.toml")
	text := filepath.Join(dir, "body.txt")
	os.WriteFile(text, []byte("The news.\n"), 0o600)
	os.WriteFile(conf, []byte(`
[transport]
relays = ["smtp://relay.example.test:587"]

[campaign]
retry_schedule = ["2s", "5s"]
max_age = "10m"
at_least_once = true
max_rcpt = 20
`), 0o600)
	base := []string{"campaign", "create", "--name", "n", "--list", "news", "--from", "news@sender.example.test", "--subject", "s", "--text", text}
	create := func(args ...string) campaign.Settings {
		t.Helper()
		out := cli(t, url, append(slices.Clone(base), args...)...)
		id, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		if err != nil {
			t.Fatalf("create printed %q", out)
		}
		c, err := campaign.Get(ctx, pool, id)
		if err != nil {
			t.Fatal(err)
		}
		return c.Settings
	}
	d := func(ds ...time.Duration) []campaign.Duration {
		out := make([]campaign.Duration, len(ds))
		for i, x := range ds {
			out[i] = campaign.Duration(x)
		}
		return out
	}

	s := create("--config", conf)
	if !slices.Equal(s.RetrySchedule, d(2*time.Second, 5*time.Second)) || s.MaxAge != campaign.Duration(10*time.Minute) ||
		!s.AtLeastOnce || s.MaxRcpt != 20 {
		t.Errorf("settings from the file = %+v", s)
	}
	s = create("--config", conf, "--retry-schedule", "1s,3s,9s", "--max-age", "1h", "--at-least-once=false", "--max-rcpt", "50")
	if !slices.Equal(s.RetrySchedule, d(time.Second, 3*time.Second, 9*time.Second)) || s.MaxAge != campaign.Duration(time.Hour) ||
		s.AtLeastOnce || s.MaxRcpt != 50 {
		t.Errorf("flags over the file = %+v", s)
	}
	s = create()
	if len(s.RetrySchedule) != 0 || s.MaxAge != 0 || s.AtLeastOnce {
		t.Errorf("no file, no flags = %+v, want the defaults (stored empty)", s)
	}

	os.WriteFile(conf, []byte("[campaign]\nmax_age = \"soon\"\n"), 0o600)
	cliFails(t, url, "campaign.max_age \"soon\"", append(slices.Clone(base), "--config", conf)...)
	os.WriteFile(conf, []byte("[campaign]\nretry_schedule = [\"1m\", \"-5s\"]\n"), 0o600)
	cliFails(t, url, "campaign.retry_schedule: entry 2", append(slices.Clone(base), "--config", conf)...)
	os.WriteFile(conf, []byte("[campaign]\nretry = \"1m\"\n"), 0o600)
	cliFails(t, url, "unknown setting campaign.retry", append(slices.Clone(base), "--config", conf)...)
	cliFails(t, url, "--retry-schedule: entry 1", append(slices.Clone(base), "--retry-schedule", "0s")...)
}
