package throttle

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/smtp"
)

func reply(code int, enh smtp.EnhancedCode, text string) error {
	return &smtp.Error{Reply: smtp.Reply{Code: code, Enhanced: enh, Text: text}, Command: "RCPT", Server: "mx.example.test:25"}
}

func TestDecideDefaultRules(t *testing.T) {
	cfg := Config{}.WithDefaults()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	tests := []struct {
		name   string
		err    error
		action Action
		rule   string
		dur    time.Duration
	}{
		{"nil", nil, "", "", 0},
		{"accepted", reply(250, smtp.EnhancedCode{2, 0, 0}, "ok"), "", "", 0},
		{"user unknown", reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"), "", "", 0},
		{"mailbox full", reply(452, smtp.EnhancedCode{4, 2, 2}, "mailbox full"), "", "", 0},
		{"gmail 4.7.28", reply(421, smtp.EnhancedCode{4, 7, 28}, "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail"), Suspend, "gmail-rate", 15 * time.Minute},
		{"gmail unusual rate", reply(421, smtp.EnhancedCode{4, 7, 0}, "Our system has detected an unusual rate of unsolicited mail originating from your IP address"), Suspend, "gmail-unusual-rate", 10 * time.Minute},
		{"outlook 4.7.650", reply(451, smtp.EnhancedCode{4, 7, 650}, "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation"), Suspend, "microsoft-4.7.650", 15 * time.Minute},
		{"outlook S3114", reply(421, smtp.EnhancedCode{4, 7, 0}, "[S3114] Message refused: temporarily deferred due to user complaints"), Suspend, "microsoft-deferred", 10 * time.Minute},
		{"yahoo TSS04", reply(421, smtp.EnhancedCode{4, 7, 0}, "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints"), Suspend, "yahoo-tss", 30 * time.Minute},
		{"yahoo TS01", reply(421, smtp.EnhancedCode{}, "[TS01] Messages from 192.0.2.1 deferred due to user complaints"), Suspend, "yahoo-tss", 30 * time.Minute},
		{"apple CS01", reply(450, smtp.EnhancedCode{}, "[CS01] Message rejected due to local policy"), Suspend, "apple-policy", 10 * time.Minute},
		{"too many connections", reply(421, smtp.EnhancedCode{4, 3, 2}, "Too many concurrent connections from this IP"), Slow, "too-many-connections", 5 * time.Minute},
		{"451 4.7.1", reply(451, smtp.EnhancedCode{4, 7, 1}, "Greylisted"), Suspend, "4.7.x", 2 * time.Minute},
		{"450 4.7.1 not a 4.7.x 5xx", reply(550, smtp.EnhancedCode{5, 7, 1}, "blocked"), "", "", 0},
		{"try again later", reply(451, smtp.EnhancedCode{4, 3, 0}, "Temporary local problem - please try again later"), Suspend, "try-again-later", time.Minute},
		{"bare 421", reply(421, smtp.EnhancedCode{}, "Service not available, closing transmission channel"), Suspend, "421", time.Minute},
		{"retry hint on a rule", reply(421, smtp.EnhancedCode{}, "Too busy, try again in 5 minutes"), Suspend, "421", 5 * time.Minute},
		{"retry hint alone", reply(450, smtp.EnhancedCode{4, 2, 0}, "mailbox busy, retry in 90 seconds"), Suspend, "retry-hint", 90 * time.Second},
		{"hint capped", reply(421, smtp.EnhancedCode{}, "go away, retry in 30 hours"), Suspend, "421", time.Hour},
		{"mailbox gone", reply(450, smtp.EnhancedCode{4, 2, 1}, "The user you are trying to contact is disabled; user is disabled"), Bounce, "mailbox-gone", time.Minute},
		{"connection refused", refused, Slow, "connection", 2 * time.Minute},
		{"timeout", fmt.Errorf("dialing mx.example.test:25: %w", os.ErrDeadlineExceeded), Slow, "connection", 2 * time.Minute},
		{"wrapped reply", fmt.Errorf("sending: %w", reply(421, smtp.EnhancedCode{}, "bye")), Suspend, "421", time.Minute},
		{"cancelled", fmt.Errorf("x: %w", errors.Join(errors.New("stop"), context.Canceled)), "", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(cfg.Rules, time.Duration(cfg.MaxSuspend), tt.err)
			if d.Action != tt.action || d.Rule != tt.rule || d.For != tt.dur {
				t.Errorf("decide(%v) = %s/%s/%v, want %s/%s/%v", tt.err, d.Action, d.Rule, d.For, tt.action, tt.rule, tt.dur)
			}
			if d.Action != "" && d.Reason == "" {
				t.Errorf("decision without a reason")
			}
		})
	}
}

func TestRuleCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
	}{
		{"no action", Rule{}},
		{"bad action", Rule{Action: "explode"}},
		{"bad code", Rule{Action: Suspend, Codes: []int{42}}},
		{"bad enhanced", Rule{Action: Suspend, Enhanced: "4.7"}},
		{"bad enhanced part", Rule{Action: Suspend, Enhanced: "4.y.1"}},
		{"bad regexp", Rule{Action: Suspend, Text: "("}},
		{"bad factor", Rule{Action: Slow, Factor: 1.5}},
		{"bad scope", Rule{Action: Suspend, Scope: "planet"}},
	}
	for _, tt := range tests {
		if err := tt.rule.compile(); err == nil {
			t.Errorf("%s: compile succeeded", tt.name)
		}
	}
}

func TestRetryHint(t *testing.T) {
	tests := []struct {
		text string
		want time.Duration
		ok   bool
	}{
		{"try again in 5 minutes", 5 * time.Minute, true},
		{"Please retry in 30 seconds", 30 * time.Second, true},
		{"retry after 300s", 300 * time.Second, true},
		{"wait 2 hours before sending again", 2 * time.Hour, true},
		{"Try again later (in 10 mins)", 10 * time.Minute, true},
		{"try again later", 0, false},
		{"4.7.0 retry later, too many messages (120 per hour)", 0, false},
		{"mailbox quota is 5 MB", 0, false},
		{"retry in 0 seconds", 0, false},
		{"retry in 9999999 hours", 24 * time.Hour, true},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := RetryHint(tt.text)
		if got != tt.want || ok != tt.ok {
			t.Errorf("RetryHint(%q) = %v, %v; want %v, %v", tt.text, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzRetryHint(f *testing.F) {
	for _, s := range []string{"try again in 5 minutes", "retry in 30s", "wait 9999999 h", "", "retry 1 m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := RetryHint(s)
		if ok && (d <= 0 || d > 24*time.Hour) {
			t.Fatalf("RetryHint(%q) = %v", s, d)
		}
		if !ok && d != 0 {
			t.Fatalf("RetryHint(%q) = %v without a hint", s, d)
		}
	})
}

// FuzzDecide feeds arbitrary replies to the shipped rules: they must never
// panic, and a suspension is never longer than MaxSuspend.
func FuzzDecide(f *testing.F) {
	f.Add(421, 4, 7, 28, "unusual rate, try again in 3 minutes")
	f.Add(550, 5, 1, 1, "no such user")
	cfg := Config{}.WithDefaults()
	if err := cfg.validate(); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, code, c, s, d int, text string) {
		if code < 200 || code > 599 {
			return
		}
		err := reply(code, smtp.EnhancedCode{c, s, d}, text)
		dec := decide(cfg.Rules, time.Duration(cfg.MaxSuspend), err)
		if dec.For > time.Duration(cfg.MaxSuspend) {
			t.Fatalf("%v: suspension %v beyond the cap", err, dec.For)
		}
		if code < 400 && dec.Action != "" {
			t.Fatalf("%v: positive reply decided %s", err, dec.Action)
		}
	})
}

// FuzzParseConfig: an operator's file never panics the parser, and what it
// accepts is valid.
func FuzzParseConfig(f *testing.F) {
	f.Add(string(DefaultTOML))
	f.Add("alert_reserve = 0.5\n[[rule]]\naction = \"slow\"\nrate = 3\n")
	f.Add("[domains.\"x.test\"]\nrate = -1\n[[mx_group]]\nname = \"g\"\nmx = [\"*.x\"]\n")
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := ParseConfig("fuzz.toml", []byte(s))
		if err != nil {
			return
		}
		if err := cfg.validate(); err != nil {
			t.Fatalf("accepted config fails validation: %v", err)
		}
		if _, err := New(cfg); err != nil {
			t.Fatalf("accepted config refused by New: %v", err)
		}
	})
}

func TestResultError(t *testing.T) {
	ok := &smtp.Reply{Code: 250}
	limited := &smtp.Reply{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 28}, Text: "unusual rate"}
	unknown := &smtp.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Text: "no such user"}
	connErr := errors.New("connection reset by peer")
	tests := []struct {
		name string
		res  *smtp.Result
		err  error
		want string
	}{
		{"all accepted", &smtp.Result{Rcpts: []*smtp.Reply{ok, ok}, Data: ok}, nil, ""},
		{"a permanent refusal is no signal", &smtp.Result{Rcpts: []*smtp.Reply{ok, unknown}, Data: ok}, nil, ""},
		{"rate limit at RCPT", &smtp.Result{Rcpts: []*smtp.Reply{ok, limited, nil}, Data: ok}, nil, "RCPT: 421 4.7.28 unusual rate"},
		{"transaction error wins", &smtp.Result{Rcpts: []*smtp.Reply{limited}}, connErr, connErr.Error()},
		{"no result", nil, nil, ""},
	}
	for _, tt := range tests {
		err := ResultError(tt.res, tt.err)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, tt.want) || (tt.want == "") != (got == "") {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}
