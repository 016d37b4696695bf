package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/unsubscribe"
)

// TestServe runs `blaster serve` on 127.0.0.1:0 against a real database
// and unsubscribes a contact through it.
func TestServe(t *testing.T) {
	dbURL := dbtest.New(t)
	keyFile := filepath.Join(t.TempDir(), "key")
	key := []byte("serve-test-key-0123456789abcdef-0123")
	if err := os.WriteFile(keyFile, append(key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &app{stdout: io.Discard, stderr: io.Discard, logger: slog.New(slog.DiscardHandler), databaseURL: dbURL}
	defer a.close()
	ctx, cancel := context.WithCancel(context.Background())
	pool, err := a.db(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var contactID, campaignID int64
	if err := pool.QueryRow(ctx, `INSERT INTO contacts (email) VALUES ('ann@example.test') RETURNING id`).Scan(&contactID); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO campaigns (name, from_addr, subject, personalized)
		VALUES ('c', 'News <news@example.test>', 's', true) RETURNING id`).Scan(&campaignID); err != nil {
		t.Fatal(err)
	}

	addrc := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- runServe(ctx, a, &serveOptions{addr: "127.0.0.1:0", keyFile: keyFile, listening: func(ad net.Addr) { addrc <- ad }})
	}()
	var base string
	select {
	case ad := <-addrc:
		base = "http://" + ad.String()
	case err := <-errc:
		t.Fatalf("serve stopped: %v", err)
	}

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	token := unsubscribe.Token(key, unsubscribe.Recipient{CampaignID: campaignID, ContactID: contactID, Email: "ann@example.test"})
	if code, _ := get(unsubscribe.PathPrefix + token); code != http.StatusOK {
		t.Errorf("GET confirm page = %d", code)
	}
	resp, err := http.PostForm(base+unsubscribe.PathPrefix+token, url.Values{"List-Unsubscribe": {"One-Click"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("one-click POST = %d", resp.StatusCode)
	}
	var sender, reason string
	if err := pool.QueryRow(ctx, `SELECT sender, reason FROM suppressions WHERE email = 'ann@example.test'`).Scan(&sender, &reason); err != nil {
		t.Fatalf("no suppression written: %v", err)
	}
	if sender != "news@example.test" || reason != "unsubscribed" {
		t.Errorf("suppression = (%q, %q)", sender, reason)
	}
	code, metrics := get("/metrics")
	if code != http.StatusOK || !strings.Contains(metrics, `blaster_unsubscribe_requests_total{method="POST",result="done"} 1`) {
		t.Errorf("/metrics = %d, lacks the unsubscribe counter:\n%s", code, metrics)
	}

	cancel()
	if err := <-errc; err != nil {
		t.Errorf("serve returned %v after cancel", err)
	}
}

func TestServeNeedsKey(t *testing.T) {
	t.Setenv(unsubscribe.KeyEnv, "")
	a := &app{stdout: io.Discard, stderr: io.Discard, logger: slog.New(slog.DiscardHandler)}
	err := runServe(context.Background(), a, &serveOptions{addr: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), unsubscribe.KeyEnv) {
		t.Fatalf("runServe without a key = %v, want an error naming %s", err, unsubscribe.KeyEnv)
	}
}
