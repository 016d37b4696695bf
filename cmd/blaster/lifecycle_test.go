package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/worker"
)

// TestCampaignLifecycleCommands drives pause, resume, retry and cancel
// through the CLI on a started campaign (no worker runs, so the ledger
// changes only by these commands).
func TestCampaignLifecycleCommands(t *testing.T) {
	url := dbtest.New(t)
	ctx := context.Background()
	pool, err := db.Open(ctx, url, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, _, err := runContactCLI(t, url, "email\na@alpha.example.test\nb@alpha.example.test\nc@beta.example.test\n", "import", "--list", "news", "-"); err != nil {
		t.Fatalf("import: %v", err)
	}
	c, err := campaign.Create(ctx, pool, campaign.New{Name: "n", List: "news", From: "news@sender.example.test", Subject: "s", Text: "t"})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := campaign.Start(ctx, pool, rc, c.ID); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprint(c.ID)

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
			if _, err := pool.Exec(ctx, `UPDATE deliveries SET state = 'deferred' WHERE campaign_id = $1 AND email LIKE '%@alpha.example.test'`, c.ID); err != nil {
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
	st, err := campaign.GetStatus(ctx, pool, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != campaign.Cancelled || st.Cancelled != 3 {
		t.Errorf("status = %+v, want cancelled with 3 recipients cancelled", st)
	}
}
