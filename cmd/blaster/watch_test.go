package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

func TestRateMeter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type sample struct {
		at   time.Duration // since t0
		n    int
		want float64
	}
	tests := []struct {
		name    string
		samples []sample
	}{
		{"one sample has no rate", []sample{{0, 100, 0}}},
		{"steady", []sample{{0, 0, 0}, {time.Second, 50, 50}, {2 * time.Second, 100, 50}}},
		{"same instant", []sample{{0, 0, 0}, {0, 10, 0}}},
		{"old samples leave the 10s window", []sample{
			{0, 0, 0}, {5 * time.Second, 1000, 200}, {10 * time.Second, 1000, 100},
			{15 * time.Second, 1000, 0}, // 5s..15s: no progress
			{20 * time.Second, 3000, 200},
		}},
		{"counter going down (a retry) is not a negative rate", []sample{{0, 10, 0}, {time.Second, 5, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m rateMeter
			for i, s := range tt.samples {
				if got := m.add(t0.Add(s.at), s.n); math.Abs(got-s.want) > 1e-9 {
					t.Errorf("sample %d (%s, %d): rate %v, want %v", i, s.at, s.n, got, s.want)
				}
			}
		})
	}
}

// syncBuffer is a bytes.Buffer the watch goroutine writes while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchPlainLinesUntilDone(t *testing.T) {
	url := dbtest.New(t)
	pool := openTestPool(t, url)
	ctx := context.Background()
	id := seedCampaign(t, pool, "news", campaign.Newsletter, map[string]int{"a.example.test": 30, "b.example.test": 10})

	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--database-url", url, "campaign", "status", fmt.Sprint(id), "--watch", "--interval", "10ms"},
			strings.NewReader(""), &out, &errOut)
	}()
	waitFor(t, "a first progress line", func() bool { return strings.Contains(out.String(), "\n") })
	if first := strings.SplitN(out.String(), "\n", 2)[0]; !strings.Contains(first, fmt.Sprintf("campaign %d running 0.0%% 0/40 queued 40", id)) {
		t.Errorf("first line %q", first)
	}

	// The worker's outcomes, written as it would: a.example.test accepted
	// with per-recipient queue ids, b.example.test rejected.
	if _, err := pool.Exec(ctx, `
		UPDATE deliveries SET state = 'sent', attempts = 1, last_code = 250, last_enhanced = '2.0.0',
		       last_text = 'Ok: queued as Q' || contact_id
		WHERE campaign_id = $1 AND email LIKE '%@a.example.test'`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		UPDATE deliveries SET state = 'bounced', attempts = 1, last_code = 550, last_enhanced = '5.1.1',
		       last_text = 'no such user'
		WHERE campaign_id = $1 AND email LIKE '%@b.example.test'`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE batches SET done = true WHERE campaign_id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if ok, err := campaign.FinishIfDone(ctx, pool, id); err != nil || !ok {
		t.Fatalf("FinishIfDone: %v, %v", ok, err)
	}

	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("watch: %v\n%s", err, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("watch did not end after the campaign was done")
	}
	got := out.String()
	if strings.Contains(got, "\x1b[") {
		t.Errorf("plain output has terminal escapes:\n%q", got)
	}
	for _, want := range []string{
		fmt.Sprintf("campaign %d done 100.0%% 40/40 queued 0 sending 0 sent 30 deferred 0 bounced 10", id),
		"top domains:\n",
		"a.example.test                 30 recipients: 30 sent, 0 pending, 0 failed\n",
		"b.example.test                 10 recipients: 0 sent, 0 pending, 10 failed\n",
		"top replies:\n",
		"250 2.0.0       30  Ok: queued as Q", // one group despite 30 different texts
		"550 5.1.1       10  no such user\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "top replies:"); n != 1 {
		t.Errorf("top replies printed %d times, want once at the end", n)
	}
}

func TestWatchJSONLines(t *testing.T) {
	url := dbtest.New(t)
	pool := openTestPool(t, url)
	ctx := context.Background()
	id := seedCampaign(t, pool, "news", campaign.Newsletter, map[string]int{"a.example.test": 3})
	if _, err := pool.Exec(ctx, `UPDATE deliveries SET state = 'sent', last_code = 250, last_enhanced = '2.0.0', last_text = 'Ok' WHERE campaign_id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE campaigns SET state = 'done', finished_at = now() WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	out := cli(t, url, "campaign", "status", fmt.Sprint(id), "--watch", "--json")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 1 {
		t.Fatalf("%d lines for a done campaign, want 1:\n%s", len(lines), out)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "state", "total", "sent", "queued", "at", "finished", "rate_per_second", "top_domains", "top_replies"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON line lacks %q: %s", k, lines[0])
		}
	}
	if m["state"] != "done" || m["finished"] != 3.0 || m["sent"] != 3.0 {
		t.Errorf("JSON line %s", lines[0])
	}
	top := m["top_replies"].([]any)[0].(map[string]any)
	if top["code"] != 250.0 || top["enhanced"] != "2.0.0" || top["recipients"] != 3.0 {
		t.Errorf("top reply %v", top)
	}
}

func TestWatchEndsOnInterrupt(t *testing.T) {
	url := dbtest.New(t)
	pool := openTestPool(t, url)
	id := seedCampaign(t, pool, "news", campaign.Newsletter, map[string]int{"a.example.test": 3})
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--database-url", url, "campaign", "status", fmt.Sprint(id), "--watch", "--interval", "1h"},
			strings.NewReader(""), &out, &out)
	}()
	waitFor(t, "a first progress line", func() bool { return strings.Contains(out.String(), "\n") })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watch ended by its context: %v, want no error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("watch did not end when its context was cancelled")
	}
}

func TestWatchTerminalFrames(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var out bytes.Buffer
	w := &watcher{out: &out, tty: true, width: 80}
	st := &campaign.Status{ID: 7, Name: "spring", Kind: campaign.Newsletter, State: campaign.Running, Total: 200, Queued: 200}
	first := &watchSnapshot{Status: st, At: t0}
	if err := w.render(first, false); err != nil {
		t.Fatal(err)
	}
	frame1 := out.String()
	if strings.Contains(frame1, "\x1b[") {
		t.Errorf("first frame moves the cursor: %q", frame1)
	}
	if !strings.Contains(frame1, "[....") || !strings.Contains(frame1, " 0.0% 0/200 0.0/s ETA -") {
		t.Errorf("first frame:\n%s", frame1)
	}

	out.Reset()
	st2 := *st
	st2.Queued, st2.Sent = 100, 100
	eta := 2.0
	second := &watchSnapshot{Status: &st2, At: t0.Add(2 * time.Second), Finished: 100, RatePerSecond: 50, ETASeconds: &eta,
		TopDomains: []domainCount{{Domain: "a.example.test", Recipients: 200, Sent: 100, Pending: 100}},
		TopReplies: []replyCount{{Code: 250, Enhanced: "2.0.0", Text: "Ok", Recipients: 100}}}
	if err := w.render(second, false); err != nil {
		t.Fatal(err)
	}
	frame2 := out.String()
	if want := fmt.Sprintf("\x1b[%dF\x1b[J", strings.Count(frame1, "\n")); !strings.HasPrefix(frame2, want) {
		t.Errorf("second frame does not start by going back over the first (%q): %q", want, frame2)
	}
	barLine := strings.Split(frame2, "\n")[1]
	bar := barLine[strings.Index(barLine, "[")+1 : strings.Index(barLine, "]")]
	if hashes := strings.Count(bar, "#"); hashes != len(bar)/2 {
		t.Errorf("bar %q half done has %d of %d filled", bar, hashes, len(bar))
	}
	for _, want := range []string{" 50.0% 100/200 50.0/s ETA 2s", "queued 100 sending 0 sent 100", "a.example.test", "250 2.0.0"} {
		if !strings.Contains(frame2, want) {
			t.Errorf("second frame lacks %q:\n%s", want, frame2)
		}
	}
	if len(strings.SplitN(frame2, "\n", 3)[1]) > 80 {
		t.Errorf("bar line wider than the terminal:\n%s", frame2)
	}
}

// FuzzFormatFrame feeds the terminal display counts that do not add up and
// any terminal width: it must never panic and keeps to its three lines.
func FuzzFormatFrame(f *testing.F) {
	f.Add(100, 50, 10, 80, 12.5)
	f.Add(0, 0, 0, 0, 0.0)
	f.Add(10, 20, -5, 5, -1.0)
	f.Add(math.MaxInt32, math.MaxInt32, 1, 1000, math.Inf(1))
	f.Fuzz(func(t *testing.T, total, finished, pending, width int, rate float64) {
		st := &campaign.Status{ID: 1, State: campaign.Running, Total: total, Queued: pending}
		snap := &watchSnapshot{Status: st, Finished: finished, RatePerSecond: rate}
		if rate > 0 {
			eta := float64(pending) / rate
			snap.ETASeconds = &eta
		}
		frame := formatFrame(snap, width)
		if n := strings.Count(frame, "\n"); n != 3 {
			t.Errorf("frame has %d lines, want 3 without top lists:\n%s", n, frame)
		}
		formatLine(snap)
	})
}
