package throttle

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/blaster-mail/blaster/smtp"
)

// Action is what a back-off rule does to the scope whose reply matched.
type Action string

const (
	// Suspend stops the scope for Rule.For (or the reply's retry hint);
	// afterwards it resumes at Config.RecoveryStart of its rate and
	// recovers step by step.
	Suspend Action = "suspend"
	// Slow multiplies the scope's rate by Rule.Factor, or lowers it to
	// Rule.Rate, holding it there for Rule.For before recovery starts.
	Slow Action = "slow"
	// Bounce asks the caller to treat the reply as permanent (a 4xx that
	// will never succeed); the throttle itself does nothing. See Decide.
	Bounce Action = "bounce"
	// Ignore matches a reply to keep later rules from matching it.
	Ignore Action = "ignore"
)

// Rule maps an SMTP reply, or a connection error, to an Action. Every
// condition given must hold; a rule with none matches every reply. The idea
// of rules on server replies is borrowed from PowerMTA's backoff mode and
// KumoMTA's traffic-shaping automation.
type Rule struct {
	// Name identifies the rule in logs and in `blaster throttle status`.
	Name string `toml:"name"`
	// Codes are reply codes (RFC 5321 §4.2.3); empty matches any.
	Codes []int `toml:"codes"`
	// Enhanced is an enhanced status code pattern (RFC 3463 §2), each part
	// a number or "x" for any: "4.7.28", "4.7.x". Empty matches any.
	Enhanced string `toml:"enhanced"`
	// Text is a regular expression (RE2, case-insensitive) searched for in
	// the reply text, enhanced code included ("4.7.650 ... S3114"), or in a
	// connection error's message. Empty matches any.
	Text string `toml:"text"`
	// Connection makes the rule match connection errors (refused, reset,
	// timed out, DNS failures: anything that is not an SMTP reply) instead
	// of replies.
	Connection bool `toml:"connection"`
	// Action is what to do: "suspend", "slow", "bounce" or "ignore".
	Action Action `toml:"action"`
	// For is how long a suspension lasts, or how long a slow-down holds
	// before recovery starts. A retry hint in the reply ("try again in 5
	// minutes") takes precedence for suspensions. Default 1m.
	For Duration `toml:"for"`
	// Factor multiplies the current rate for "slow" (0 < Factor < 1).
	// Default 0.5 when Rate is not set either.
	Factor float64 `toml:"factor"`
	// Rate lowers the rate to at most this many recipients per second for
	// "slow".
	Rate float64 `toml:"rate"`
	// Scope is the scope the action applies to: "domain" (the destination
	// domain or its group), "route" (the relay or MX host), or "auto"
	// (default): the route when it is a relay, whose replies speak for
	// itself, and the destination when delivering to its MX hosts
	// (route "mx:HOST").
	Scope string `toml:"scope"`

	re       *regexp.Regexp
	enhanced [3]int // -1 for "x"
	hasEnh   bool
}

func (r *Rule) compile() error {
	switch r.Action {
	case Suspend, Slow, Bounce, Ignore:
	default:
		return fmt.Errorf("action %q: want suspend, slow, bounce or ignore", r.Action)
	}
	switch r.Scope {
	case "":
		r.Scope = "auto"
	case "auto", "domain", "route":
	default:
		return fmt.Errorf("scope %q: want auto, domain or route", r.Scope)
	}
	for _, c := range r.Codes {
		if c < 200 || c > 599 {
			return fmt.Errorf("code %d: not an SMTP reply code (RFC 5321 §4.2)", c)
		}
	}
	if r.For <= 0 {
		r.For = Duration(time.Minute)
	}
	if r.Action == Slow {
		if r.Factor == 0 && r.Rate == 0 {
			r.Factor = 0.5
		}
		if r.Factor < 0 || r.Factor >= 1 {
			return fmt.Errorf("factor %v: want 0 < factor < 1", r.Factor)
		}
		if r.Rate < 0 {
			return fmt.Errorf("rate %v: must not be negative", r.Rate)
		}
	}
	if r.Enhanced != "" {
		parts := strings.Split(r.Enhanced, ".")
		if len(parts) != 3 {
			return fmt.Errorf("enhanced %q: want class.subject.detail", r.Enhanced)
		}
		for i, p := range parts {
			if p == "x" || p == "*" {
				r.enhanced[i] = -1
				continue
			}
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n > 999 {
				return fmt.Errorf("enhanced %q: part %q is not a number or x", r.Enhanced, p)
			}
			r.enhanced[i] = n
		}
		r.hasEnh = true
	}
	if r.Text != "" {
		re, err := regexp.Compile("(?i)" + r.Text)
		if err != nil {
			return fmt.Errorf("text: %w", err)
		}
		r.re = re
	}
	return nil
}

// matchReply reports whether r matches the reply.
func (r *Rule) matchReply(rep *smtp.Reply) bool {
	if r.Connection {
		return false
	}
	if len(r.Codes) > 0 {
		found := false
		for _, c := range r.Codes {
			found = found || c == rep.Code
		}
		if !found {
			return false
		}
	}
	if r.hasEnh {
		for i, want := range r.enhanced {
			if want >= 0 && rep.Enhanced[i] != want {
				return false
			}
		}
	}
	if r.re != nil && !r.re.MatchString(rep.Enhanced.String()+" "+rep.Text) {
		return false
	}
	return true
}

// matchConn reports whether r matches a connection error.
func (r *Rule) matchConn(err error) bool {
	if !r.Connection {
		return false
	}
	return r.re == nil || r.re.MatchString(err.Error())
}

// Decision is what the rules make of one transaction's error.
type Decision struct {
	// Action is the action; "" when nothing matched.
	Action Action
	// Rule is the name of the rule that matched ("retry-hint" for an
	// unmatched 4xx that carried a retry hint).
	Rule string
	// For is the suspension or hold time, hint and cap applied.
	For time.Duration
	// Factor and Rate are the slow-down, for Slow.
	Factor, Rate float64
	// Scope is "auto", "domain" or "route" (see Rule.Scope).
	Scope string
	// Reason is the reply or error that caused it, for operators.
	Reason string
}

// Decide maps an error from a transaction (an *smtp.Error or a connection
// error) to a Decision by the configured rules, without acting on it. A nil
// error, a cancelled context and a 2xx/3xx reply decide nothing. The send
// worker may call it to turn a reply a Bounce rule matched into a bounce.
func (l *Limiter) Decide(err error) Decision {
	return decide(l.cfg.Rules, time.Duration(l.cfg.MaxSuspend), err)
}

func decide(rules []Rule, maxSuspend time.Duration, err error) Decision {
	if err == nil || errors.Is(err, context.Canceled) {
		return Decision{}
	}
	var se *smtp.Error
	if errors.As(err, &se) {
		rep := &se.Reply
		if rep.Code < 400 {
			return Decision{}
		}
		hint, hasHint := RetryHint(rep.Text)
		for i := range rules {
			r := &rules[i]
			if !r.matchReply(rep) {
				continue
			}
			if r.Action == Ignore {
				return Decision{}
			}
			d := decision(r, rep.String())
			if hasHint && r.Action == Suspend {
				d.For = hint
			}
			d.For = min(d.For, maxSuspend)
			return d
		}
		if hasHint && rep.Code/100 == 4 {
			return Decision{Action: Suspend, Rule: "retry-hint", For: min(hint, maxSuspend), Scope: "auto", Reason: rep.String()}
		}
		return Decision{}
	}
	for i := range rules {
		r := &rules[i]
		if r.matchConn(err) {
			if r.Action == Ignore {
				return Decision{}
			}
			d := decision(r, err.Error())
			d.For = min(d.For, maxSuspend)
			return d
		}
	}
	return Decision{}
}

func decision(r *Rule, reason string) Decision {
	return Decision{Action: r.Action, Rule: r.Name, For: time.Duration(r.For), Factor: r.Factor, Rate: r.Rate, Scope: r.Scope, Reason: reason}
}

// retryHintRE finds "try again in 5 minutes", "retry after 30s", "wait 2
// hours", "please retry in 300 seconds".
var retryHintRE = regexp.MustCompile(`(?i)\b(?:retry|try(?:\s+again)?|again|wait|resend|back)\b[^0-9\n]{0,24}?\b(\d{1,7})\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b`)

// RetryHint finds a "retry in N seconds/minutes/hours" hint in a reply text
// and returns it. Hints beyond a day are taken as a day.
func RetryHint(text string) (time.Duration, bool) {
	m := retryHintRE.FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n <= 0 {
		return 0, false
	}
	unit := time.Second
	switch u := strings.ToLower(m[2]); {
	case strings.HasPrefix(u, "h"):
		unit = time.Hour
	case strings.HasPrefix(u, "m"):
		unit = time.Minute
	}
	const day = 24 * time.Hour
	if n > int(day/unit) {
		return day, true
	}
	return time.Duration(n) * unit, true
}

// ResultError is what to pass to Observe after a transaction: the
// transaction's error, or when it succeeded for some recipients, the first
// transient (4xx) reply to a RCPT, where providers put their rate limits
// (Gmail's 4.7.28 comes at RCPT time). Nil when everything was accepted or
// refused permanently.
func ResultError(res *smtp.Result, err error) error {
	if err != nil || res == nil {
		return err
	}
	for _, r := range res.Rcpts {
		if r != nil && r.Code/100 == 4 {
			return &smtp.Error{Reply: *r, Command: "RCPT"}
		}
	}
	return nil
}
