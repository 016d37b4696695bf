package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

// TestCampaignLifecycleCommands drives pause, resume, retry and cancel
// through the CLI on a started campaign (no worker runs, so the ledger
// changes only by these commands).
func TestCampaignLifecycleCommands(t *testing.T) {
	url := dbtest.New(t)
	ctx := context.Background()
	pool := openTestPool(t, url)
	cid := seedCampaign(t, pool, "news", campaign.Newsletter, map[string]int{"alpha.example.test": 2, "beta.example.test": 1})
	id := fmt.Sprint(cid)

	steps := []struct {
		args    []string
		stdout  string // wanted in stdout, when the step succeeds
		errText string // wanted in the error, when it fails
	}{
		{[]string{"campaign", "pause", id}, "paused campaign " + id, ""},
		{[]string{"campaign", "pause", id}, "", "cannot pause campaign " + id + ": it is paused; only a running campaign can be paused"},
		{[]string{"campaign", "resume", id}, "resumed campaign " + id, ""},
		{[]string{"campaign", "resume", "x"}, "", `campaign id "x": must be a positive number`},
		{[]string{"campaign", "retry", id, "--state", "deferred,sent"}, "", `--state: state 2 "sent": must be one of`},
		{[]string{"campaign", "retry", id, "--state", "deferred"}, "campaign " + id + ": 2 recipients (deferred) queued again in 1 batches, 0 skipped", ""},
		{[]string{"campaign", "cancel", id}, "cancelled campaign " + id + ": 3 recipients not sent", ""},
		{[]string{"campaign", "resume", id}, "", "cannot resume campaign " + id + ": it is cancelled"},
		{[]string{"campaign", "cancel", "4242"}, "", "campaign 4242: campaign not found"},
	}
	for _, s := range steps {
		if strings.Join(s.args[:2], " ") == "campaign retry" && s.errText == "" {
			// Two recipients of one batch were deferred by an earlier attempt.
			if _, err := pool.Exec(ctx, `UPDATE deliveries SET state = 'deferred' WHERE campaign_id = $1 AND email LIKE '%@alpha.example.test'`, cid); err != nil {
				t.Fatal(err)
			}
		}
		stdout, stderr, err := runContactCLI(t, url, "", s.args...)
		if s.errText != "" {
			if err == nil || !strings.Contains(err.Error(), s.errText) {
				t.Errorf("%v = %v, want an error containing %q", s.args, err, s.errText)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v\n%s", s.args, err, stderr)
			continue
		}
		if !strings.Contains(stdout, s.stdout) {
			t.Errorf("%v printed %q, want %q", s.args, stdout, s.stdout)
		}
	}
	st, err := campaign.GetStatus(ctx, pool, cid)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != campaign.Cancelled || st.Cancelled != 3 {
		t.Errorf("status = %+v, want cancelled with 3 recipients cancelled", st)
	}
}
