package campaign

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// DefaultMaxRcpt is the most recipients in one SMTP transaction and one
// batch: RFC 5321 §4.5.3.1.8 requires servers to accept at least 100.
const DefaultMaxRcpt = 100

// Settings is a campaign's delivery policy, stored as JSON in
// campaigns.settings.
type Settings struct {
	// MaxRcpt caps the recipients per batch and per SMTP transaction.
	// Default DefaultMaxRcpt.
	MaxRcpt int `json:"max_rcpt,omitempty"`
	// AtLeastOnce resends recipients whose outcome is unknown (the
	// connection was lost after the final "." and before the reply). The
	// default, false, is at-most-once: they are recorded as unknown and
	// not resent.
	AtLeastOnce bool `json:"at_least_once,omitempty"`
	// RetrySchedule is the wait before each retry of a deferred recipient:
	// the n-th retry waits RetrySchedule[n-1] (give or take RetryJitter),
	// the last entry repeating. Default DefaultRetrySchedule; entries may
	// be seconds ("5s"), for tests.
	RetrySchedule []Duration `json:"retry_schedule,omitempty"`
	// MaxAge is how long after the campaign started a deferred recipient
	// is still retried before it is expired. Default 72h.
	MaxAge Duration `json:"max_age,omitempty"`
	// Unsubscribe adds List-Unsubscribe (RFC 2369) and, with OneClick,
	// per-recipient one-click links (RFC 8058). nil for none.
	Unsubscribe *Unsubscribe `json:"unsubscribe,omitempty"`
	// DKIM signs every message (RFC 6376). nil for none.
	DKIM *DKIM `json:"dkim,omitempty"`
	// ReturnPath sends with a signed, per-campaign envelope sender so
	// bounces can be fed back (`blaster bounces`). nil: the From address.
	ReturnPath *ReturnPath `json:"return_path,omitempty"`
	// DSN asks receiving servers for delivery status notifications (RFC
	// 3461). nil: none asked for (servers use their default, failure and
	// delay). The envelope id and original recipient go out either way.
	DSN *DSN `json:"dsn,omitempty"`
}

// DSN is what a campaign asks of RFC 3461 delivery status notifications,
// sent as NOTIFY on each RCPT and RET on MAIL when the server offers DSN.
type DSN struct {
	// Notify is when to notify: "never" alone, or any of "success",
	// "failure", "delay" (RFC 3461 §4.1). Empty: the server's default.
	Notify []string `json:"notify,omitempty"`
	// Ret is what a failure notification carries back: "full" (the whole
	// message) or "hdrs" (its header only) (RFC 3461 §4.3). "": the
	// server's choice.
	Ret string `json:"ret,omitempty"`
}

// ParseDSN reads the flag forms: notify a comma-separated list
// ("failure,delay", "never"), ret "full" or "hdrs"; both may be "". It
// returns nil when both are empty.
func ParseDSN(notify, ret string) (*DSN, error) {
	if notify == "" && ret == "" {
		return nil, nil
	}
	d := &DSN{Ret: strings.ToLower(strings.TrimSpace(ret))}
	if notify != "" {
		for _, n := range strings.Split(notify, ",") {
			d.Notify = append(d.Notify, strings.ToLower(strings.TrimSpace(n)))
		}
	}
	return d, d.validate()
}

func (d *DSN) validate() error {
	if d == nil {
		return nil
	}
	seen := map[string]bool{}
	for _, n := range d.Notify {
		switch n {
		case "never":
			if len(d.Notify) > 1 {
				return errors.New("dsn notify: never cannot be combined with success, failure or delay (RFC 3461 §4.1)")
			}
		case "success", "failure", "delay":
		default:
			return fmt.Errorf("dsn notify %q: want never, or any of success, failure, delay", n)
		}
		if seen[n] {
			return fmt.Errorf("dsn notify %q given twice", n)
		}
		seen[n] = true
	}
	switch d.Ret {
	case "", "full", "hdrs":
	default:
		return fmt.Errorf("dsn ret %q: want full or hdrs", d.Ret)
	}
	return nil
}

// Unsubscribe is the List-Unsubscribe policy; see message.Unsubscribe. The
// token key is not stored: it comes from Secrets at send time.
type Unsubscribe struct {
	BaseURL  string `json:"base_url,omitempty"`
	Mailto   string `json:"mailto,omitempty"`
	OneClick bool   `json:"one_click,omitempty"`
}

// DKIM names the signing key by its file, so no key material is stored in
// the database; every worker reads the file.
type DKIM struct {
	Domain   string `json:"domain"`
	Selector string `json:"selector"`
	KeyFile  string `json:"key_file"`
}

// DefaultRetrySchedule is like an MTA's queue: minutes at first, growing.
var DefaultRetrySchedule = []Duration{
	Duration(time.Minute), Duration(5 * time.Minute), Duration(15 * time.Minute),
	Duration(30 * time.Minute), Duration(time.Hour), Duration(2 * time.Hour), Duration(4 * time.Hour),
}

// RetryJitter is the spread of retry waits: each run of a batch draws one
// factor uniformly from [1-RetryJitter, 1+RetryJitter] and applies it to
// the waits of the recipients it defers, so the batches deferred by one
// outage (a destination answering 421 to all) do not all come back in the
// same second. One factor per run, not per recipient, keeps a batch's
// deferred recipients due together, in one job run.
const RetryJitter = 0.2

// DefaultMaxAge is the age after which deferred recipients expire, the
// common MTA queue lifetime (Postfix's maximal_queue_lifetime is 5d; 3d is
// the usual bulk setting).
const DefaultMaxAge = 72 * time.Hour

// WithDefaults returns s with every zero field set to its default.
func (s Settings) WithDefaults() Settings {
	if s.MaxRcpt <= 0 {
		s.MaxRcpt = DefaultMaxRcpt
	}
	if len(s.RetrySchedule) == 0 {
		s.RetrySchedule = DefaultRetrySchedule
	}
	if s.MaxAge <= 0 {
		s.MaxAge = Duration(DefaultMaxAge)
	}
	return s
}

func (s Settings) validate() error {
	if s.MaxRcpt < 0 || s.MaxRcpt > 1000 {
		return fmt.Errorf("max_rcpt %d out of range 1..1000", s.MaxRcpt)
	}
	if err := s.DSN.validate(); err != nil {
		return err
	}
	for _, d := range s.RetrySchedule {
		if d <= 0 {
			return fmt.Errorf("retry schedule entry %s must be positive", time.Duration(d))
		}
	}
	return nil
}

// RetryDelay is the wait before retry number attempt (1 = first retry).
func (s Settings) RetryDelay(attempt int) time.Duration {
	sched := s.WithDefaults().RetrySchedule
	if attempt < 1 {
		attempt = 1
	}
	if attempt > len(sched) {
		attempt = len(sched)
	}
	return time.Duration(sched[attempt-1])
}

// Duration is a time.Duration that reads and writes as "90s", "5m".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"90s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
