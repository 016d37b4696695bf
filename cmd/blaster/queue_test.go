package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/db"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/worker"
)

// seedCampaign creates a list of count contacts per domain and a started
// campaign of kind k on it (one send_batch job per batch), returning its id.
func seedCampaign(t *testing.T, pool *pgxpool.Pool, list string, k campaign.Kind, domains map[string]int) int64 {
	t.Helper()
	ctx := context.Background()
	var listID int64
	if err := pool.QueryRow(ctx, `INSERT INTO lists (name) VALUES ($1) RETURNING id`, list).Scan(&listID); err != nil {
		t.Fatal(err)
	}
	for domain, n := range domains {
		_, err := pool.Exec(ctx, `
			WITH c AS (INSERT INTO contacts (email) SELECT $2 || '-' || i || '@' || $3 FROM generate_series(1, $4) i RETURNING id)
			INSERT INTO list_members (list_id, contact_id) SELECT $1, id FROM c`, listID, list, domain, n)
		if err != nil {
			t.Fatal(err)
		}
	}
	c, err := campaign.Create(ctx, pool, campaign.New{Name: list, Kind: k, List: list,
		From: "news@example.test", Subject: "hello", Text: "hi"})
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
	return c.ID
}

func openTestPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := db.Open(context.Background(), url, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// cli runs blaster against url and fails the test on an error.
func cli(t *testing.T, url string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), append([]string{"--database-url", url}, args...), strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("blaster %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// cliFails runs blaster and expects an error containing want.
func cliFails(t *testing.T, url, want string, args ...string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), append([]string{"--database-url", url}, args...), strings.NewReader(""), &stdout, &stderr)
	if err == nil {
		t.Fatalf("blaster %s: no error, want one containing %q\n%s", strings.Join(args, " "), want, stdout.String())
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("blaster %s: error %q, want it to contain %q", strings.Join(args, " "), err, want)
	}
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decoding %q: %v", s, err)
	}
	return v
}

func jobIDs(t *testing.T, url string, args ...string) []int64 {
	t.Helper()
	views := decode[[]jobView](t, cli(t, url, append([]string{"queue", "list", "--json"}, args...)...))
	ids := make([]int64, len(views))
	for i, v := range views {
		ids[i] = v.ID
	}
	return ids
}

func TestQueueCommands(t *testing.T) {
	url := dbtest.New(t)
	pool := openTestPool(t, url)
	ctx := context.Background()
	// 150 + 60 + 40 recipients: batches of 100, 50, 60, 40 = 4 newsletter jobs.
	news := seedCampaign(t, pool, "news", campaign.Newsletter,
		map[string]int{"a.example.test": 150, "b.example.test": 60, "c.example.test": 40})
	alert := seedCampaign(t, pool, "alerts", campaign.Alert, map[string]int{"d.example.test": 3})

	// stats: everything available.
	st := decode[queueStats](t, cli(t, url, "queue", "stats", "--json"))
	counts := map[string]int{}
	for _, q := range st.Queues {
		for state, s := range q.States {
			counts[q.Queue+"/"+state] = s.Count
		}
	}
	if counts["newsletter/available"] != 4 || counts["alert/available"] != 1 || counts["newsletter/completed"] != 0 {
		t.Fatalf("stats counts %v, want 4 available newsletter jobs and 1 alert job", counts)
	}

	// list filters.
	newsJobs := jobIDs(t, url, "--campaign", fmt.Sprint(news))
	if len(newsJobs) != 4 {
		t.Fatalf("list --campaign %d: %d jobs, want 4", news, len(newsJobs))
	}
	views := decode[[]jobView](t, cli(t, url, "queue", "list", "--json", "--queue", "alert"))
	if len(views) != 1 || views[0].CampaignID == nil || *views[0].CampaignID != alert || views[0].Queue != "alert" {
		t.Fatalf("list --queue alert: %+v, want the one job of campaign %d", views, alert)
	}
	if n := len(jobIDs(t, url, "--limit", "3")); n != 3 {
		t.Errorf("list --limit 3: %d jobs", n)
	}

	// One job completed just now, one two minutes ago: only the first is
	// in the last minute's throughput.
	if _, err := pool.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now(), attempt = 1, attempted_at = now() WHERE id = $1`, newsJobs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now() - interval '2 minutes', attempt = 1, attempted_at = now() WHERE id = $1`, newsJobs[1]); err != nil {
		t.Fatal(err)
	}
	// One job failed its first attempt.
	if _, err := pool.Exec(ctx, `
		UPDATE river_job SET state = 'retryable', attempt = 1, attempted_at = now(), scheduled_at = now() + interval '1 hour',
		       errors = ARRAY['{"at":"2026-01-02T03:04:05Z","attempt":1,"error":"dialing mx.a.example.test: connection refused","trace":""}'::jsonb]
		WHERE id = $1`, newsJobs[2]); err != nil {
		t.Fatal(err)
	}
	st = decode[queueStats](t, cli(t, url, "queue", "stats", "--json"))
	for _, q := range st.Queues {
		if q.Queue != "newsletter" {
			continue
		}
		if q.CompletedLastMinute != 1 || q.States["completed"].Count != 2 || q.States["retryable"].Count != 1 || q.States["available"].Count != 1 {
			t.Errorf("newsletter stats %+v, want 2 completed (1 in the last minute), 1 retryable, 1 available", q)
		}
	}
	if out := cli(t, url, "queue", "stats"); !strings.Contains(out, "newsletter") || !strings.Contains(out, "retryable") {
		t.Errorf("stats table lacks the newsletter queue's retryable row:\n%s", out)
	}
	if ids := jobIDs(t, url, "--state", "completed,retryable", "--campaign", fmt.Sprint(news)); len(ids) != 3 {
		t.Errorf("list --state completed,retryable: %v, want 3 jobs", ids)
	}

	// show: args, attempts, errors with times.
	v := decode[jobView](t, cli(t, url, "queue", "show", "--json", fmt.Sprint(newsJobs[2])))
	if v.State != "retryable" || v.Attempt != 1 || len(v.Errors) != 1 || v.Errors[0].Attempt != 1 ||
		!strings.Contains(v.Errors[0].Error, "connection refused") || v.Errors[0].At.IsZero() ||
		v.CampaignID == nil || *v.CampaignID != news || v.BatchNo == nil {
		t.Errorf("show: %+v", v)
	}
	var args campaign.SendBatchArgs
	if err := json.Unmarshal(v.Args, &args); err != nil || args.CampaignID != news {
		t.Errorf("show args %s: %v", v.Args, err)
	}
	out := cli(t, url, "queue", "show", fmt.Sprint(newsJobs[2]))
	for _, want := range []string{"retryable", "attempts   1 of 25", "attempt 1 at ", "connection refused", `"campaign_id":`} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}

	// cancel one, then the rest of the campaign's unfinished jobs.
	if out := cli(t, url, "queue", "cancel", fmt.Sprint(newsJobs[3])); !strings.Contains(out, "cancelled 1 job") {
		t.Errorf("cancel: %q", out)
	}
	if out := cli(t, url, "queue", "cancel", "--campaign", fmt.Sprint(news)); !strings.Contains(out, "cancelled 1 job") {
		t.Errorf("cancel --campaign (the retryable one left): %q", out)
	}
	if ids := jobIDs(t, url, "--state", "cancelled"); len(ids) != 2 {
		t.Errorf("cancelled jobs %v, want 2", ids)
	}
	if ids := jobIDs(t, url, "--state", "available"); len(ids) != 1 {
		t.Errorf("available jobs %v, want only the alert job (cancel must not reach other campaigns)", ids)
	}

	// retry the cancelled ones.
	if out := cli(t, url, "queue", "retry", "--campaign", fmt.Sprint(news), "--state", "cancelled"); !strings.Contains(out, "retried 2 jobs") {
		t.Errorf("retry --campaign: %q", out)
	}
	if ids := jobIDs(t, url, "--state", "available", "--campaign", fmt.Sprint(news)); len(ids) != 2 {
		t.Errorf("available after retry %v, want 2", ids)
	}
	if out := cli(t, url, "queue", "retry", fmt.Sprint(newsJobs[0])); !strings.Contains(out, "retried 1 job") {
		t.Errorf("retry JOB: %q", out)
	}
	v = decode[jobView](t, cli(t, url, "queue", "show", "--json", fmt.Sprint(newsJobs[0])))
	if v.State != "available" {
		t.Errorf("retried completed job is %s, want available", v.State)
	}

	// pause and resume, as River's QueueList sees them.
	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}
	paused := func(name string) bool {
		t.Helper()
		res, err := rc.QueueList(ctx, river.NewQueueListParams())
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range res.Queues {
			if q.Name == name {
				return q.PausedAt != nil
			}
		}
		t.Fatalf("QueueList has no queue %q", name)
		return false
	}
	cli(t, url, "queue", "pause", "newsletter")
	if !paused("newsletter") {
		t.Error("newsletter not paused after queue pause")
	}
	st = decode[queueStats](t, cli(t, url, "queue", "stats", "--json"))
	for _, q := range st.Queues {
		if q.Paused != (q.Queue == "newsletter") {
			t.Errorf("stats: queue %s paused=%v", q.Queue, q.Paused)
		}
	}
	cli(t, url, "queue", "resume", "newsletter")
	if paused("newsletter") {
		t.Error("newsletter still paused after queue resume")
	}

	// errors.
	cliFails(t, url, "job 999999: not found", "queue", "show", "999999")
	cliFails(t, url, "retrying job 999999: not found", "queue", "retry", "999999")
	cliFails(t, url, `--state "bogus": must be one of`, "queue", "list", "--state", "bogus")
	cliFails(t, url, "--campaign needs --state", "queue", "retry", "--campaign", fmt.Sprint(news))
	cliFails(t, url, "give a job id or --campaign ID", "queue", "cancel")
	cliFails(t, url, `resuming queue "bogus": no such queue`, "queue", "resume", "bogus")
	cliFails(t, url, `job id "x": must be a positive number`, "queue", "show", "x")
}

func TestParseJobArgs(t *testing.T) {
	states := []struct {
		in, want, err string
	}{
		{"available", "available", ""},
		{" Retryable ", "retryable", ""},
		{"discarded", "discarded", ""},
		{"", "", "must be one of"},
		{"done", "", `--state "done": must be one of available, cancelled`},
	}
	for _, tt := range states {
		got, err := parseJobState(tt.in)
		if string(got) != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("parseJobState(%q) = %q, %v; want %q, %q", tt.in, got, err, tt.want, tt.err)
		}
	}
	ids := []struct {
		in   string
		want int64
		ok   bool
	}{{"1", 1, true}, {"9223372036854775807", 9223372036854775807, true}, {"0", 0, false}, {"-3", 0, false},
		{"1e3", 0, false}, {"", 0, false}, {"9223372036854775808", 0, false}}
	for _, tt := range ids {
		got, err := parseJobID(tt.in)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("parseJobID(%q) = %d, %v; want %d, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestCompletion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"completion", "bash"}, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("completion bash: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "__start_blaster") {
		t.Errorf("completion bash output lacks __start_blaster:\n%.300s", stdout.String())
	}
	// What the generated script asks for on <TAB>: the --state values.
	stdout.Reset()
	if err := run(context.Background(), []string{"__complete", "queue", "list", "--state", ""}, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("__complete: %v\n%s", err, stderr.String())
	}
	for _, want := range []string{"available\n", "retryable\n", "discarded\n"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("completing --state lacks %q:\n%s", want, stdout.String())
		}
	}
	stdout.Reset()
	if err := run(context.Background(), []string{"__complete", "queue", "pause", ""}, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("__complete: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "newsletter\n") || !strings.Contains(stdout.String(), "alert\n") {
		t.Errorf("completing queue pause lacks the queues:\n%s", stdout.String())
	}
}
