package metrics

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/throttle"
)

// TestDomainLabels: the throttle configuration's domains and groups keep
// their names, the first MaxDomains others get their own, the rest are
// "other", and a domain keeps its label once given.
func TestDomainLabels(t *testing.T) {
	cfg, err := throttle.LoadConfig("") // default.toml: gmail, microsoft, ... groups
	if err != nil {
		t.Fatal(err)
	}
	cfg.Domains = map[string]throttle.Limits{"big.example.test": {Rate: 10}}
	m := New(Config{Throttle: &cfg, MaxDomains: 2})
	for _, c := range []struct{ in, want string }{
		{"gmail.com", "gmail"},
		{"googlemail.com", "gmail"},
		{"hotmail.de", "microsoft"},
		{"big.example.test", "big.example.test"},
		{"a.example.test", "a.example.test"},
		{"b.example.test", "b.example.test"},
		{"c.example.test", Other},
		{"a.example.test", "a.example.test"},
		{"outlook.com", "microsoft"}, // named: past the cap all the same
		{"", ""},
	} {
		if got := m.domains.label(c.in); got != c.want {
			t.Errorf("label(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	// Throttle scopes are exported only under labels already given.
	for _, c := range []struct {
		in   string
		want bool
	}{{"gmail", true}, {"big.example.test", true}, {"b.example.test", true}, {"c.example.test", false}, {"mx:mx1.example.test", false}} {
		if _, ok := m.domains.known(c.in); ok != c.want {
			t.Errorf("known(%q) = %v, want %v", c.in, ok, c.want)
		}
	}
}

func TestMessageOutcome(t *testing.T) {
	ok := &smtp.Reply{Code: 250}
	for _, c := range []struct {
		res  *smtp.Result
		err  error
		want string
	}{
		{&smtp.Result{Rcpts: []*smtp.Reply{ok}, Data: ok}, nil, "sent"},
		{&smtp.Result{Rcpts: []*smtp.Reply{ok}, Data: &smtp.Reply{Code: 554}}, &smtp.Error{Reply: smtp.Reply{Code: 554}}, "bounced"},
		{&smtp.Result{Rcpts: []*smtp.Reply{ok}, Data: &smtp.Reply{Code: 451}}, &smtp.Error{Reply: smtp.Reply{Code: 451}}, "deferred"},
		{&smtp.Result{Rcpts: []*smtp.Reply{{Code: 550}}}, nil, "refused"},
		{&smtp.Result{Rcpts: []*smtp.Reply{ok}}, fmt.Errorf("reading reply: %w", smtp.ErrUnknownOutcome), "unknown"},
		{nil, errors.New("connection reset"), "deferred"},
	} {
		if got := messageOutcome(c.res, c.err); got != c.want {
			t.Errorf("messageOutcome(%+v, %v) = %q, want %q", c.res, c.err, got, c.want)
		}
	}
}

// fakeThrottle refuses every Acquire for a second and decides every
// error to be a suspension by rule "busy".
type fakeThrottle struct{ observed int }

func (f *fakeThrottle) Acquire(context.Context, throttle.Key, int) (time.Duration, error) {
	return time.Second, nil
}
func (f *fakeThrottle) AcquireConn(context.Context, throttle.Key) (func(), time.Duration, error) {
	return nil, time.Second, nil
}
func (f *fakeThrottle) Observe(throttle.Key, error)         { f.observed++ }
func (f *fakeThrottle) Limits(throttle.Key) throttle.Limits { return throttle.Limits{} }
func (f *fakeThrottle) Decide(err error) throttle.Decision {
	if err == nil {
		return throttle.Decision{}
	}
	return throttle.Decision{Action: throttle.Suspend, Rule: "busy"}
}

func TestThrottleCounts(t *testing.T) {
	m := New(Config{})
	f := &fakeThrottle{}
	th := m.Throttle(f)
	key := throttle.Key{Route: "smtp://relay.example.test:587", Domain: "a.example.test"}
	if wait, err := th.Acquire(context.Background(), key, 10); wait != time.Second || err != nil {
		t.Fatalf("Acquire = %v, %v", wait, err)
	}
	if _, wait, err := th.AcquireConn(context.Background(), key); wait != time.Second || err != nil {
		t.Fatalf("AcquireConn = %v, %v", wait, err)
	}
	th.Observe(key, nil)
	th.Observe(key, &smtp.Error{Reply: smtp.Reply{Code: 421}})
	if f.observed != 2 {
		t.Errorf("inner Observe called %d times, want 2", f.observed)
	}
	if got := value(t, m.snoozes.WithLabelValues(key.Route, key.Domain)); got != 2 {
		t.Errorf("snoozes = %v, want 2 (a refused Acquire and a refused AcquireConn)", got)
	}
	if got := value(t, m.backoffs.WithLabelValues("suspend", "busy")); got != 1 {
		t.Errorf("backoffs{suspend,busy} = %v, want 1 (a success decides nothing)", got)
	}
}

// value reads a counter.
func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
