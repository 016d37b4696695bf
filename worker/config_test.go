package worker_test

import (
	"testing"
	"time"

	"github.com/blaster-mail/blaster/worker"
)

// TestFetchCooldown checks the fetch cooldown's default, below River's
// 100 ms (which caps a process at 16 batches per 100 ms), and that it never
// exceeds the poll interval (River refuses that).
func TestFetchCooldown(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  worker.Config
		want time.Duration
	}{
		{"default", worker.Config{}, 20 * time.Millisecond},
		{"set", worker.Config{FetchCooldown: 50 * time.Millisecond}, 50 * time.Millisecond},
		{"clamped to the poll interval", worker.Config{FetchInterval: 10 * time.Millisecond}, 10 * time.Millisecond},
		{"poll interval above it", worker.Config{FetchInterval: time.Second}, 20 * time.Millisecond},
	} {
		if got := tc.cfg.WithDefaults().FetchCooldown; got != tc.want {
			t.Errorf("%s: FetchCooldown %s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestPoolSize checks that a worker's pool has a connection for every job
// it runs at once, plus River's.
func TestPoolSize(t *testing.T) {
	if got := worker.PoolSize(worker.Config{}); got != 16+8+4 {
		t.Errorf("default: %d connections, want 28", got)
	}
	if got := worker.PoolSize(worker.Config{NewsletterWorkers: 64, AlertWorkers: 2}); got != 70 {
		t.Errorf("64 + 2 workers: %d connections, want 70", got)
	}
}
