package throttle

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultTOML is the shipped configuration: conservative limits for unknown
// destinations, groups and limits for the large providers (Gmail, Outlook /
// Microsoft 365, Yahoo / AOL, Apple iCloud) and the back-off rule pack.
// Operators copy it and edit; LoadConfig("") uses it as it is.
//
//go:embed default.toml
var DefaultTOML []byte

// Limits are the limits of one scope. A zero field inherits the default of
// its kind of scope (Config.Route, Config.Domain, ...); a zero field there
// means unlimited. A negative value means unlimited explicitly, overriding a
// default.
type Limits struct {
	// Rate is the sustained message rate in recipients per second: every
	// accepted RCPT counts as one message, as the large providers count
	// them. 0.5 is one every two seconds.
	Rate float64 `toml:"rate"`
	// Burst is how many recipients may go at once after a quiet period
	// (the token bucket's size). Default: Rate/10 rounded up, at least 1.
	// Keep it at or below a tenth of Rate to keep every second within 110%
	// of the rate. The send worker keeps transactions to at most Burst
	// recipients (the newsletter share of it for newsletters: see
	// Limiter.Limits); an Acquire of more takes them piece by piece.
	Burst int `toml:"burst"`
	// ConnRate is how many new connections per second may be opened.
	ConnRate float64 `toml:"conn_rate"`
	// MaxConns is the most concurrent connections, across all worker
	// processes (each process publishes its count; see Limiter.Start).
	MaxConns int `toml:"max_connections"`
	// MaxMsgsPerConn is how many transactions one connection carries before
	// it is closed and a new one opened.
	MaxMsgsPerConn int `toml:"max_messages_per_connection"`
	// MaxRcpts is the most recipients in one transaction. RFC 5321
	// §4.5.3.1.8 requires servers to take at least 100.
	MaxRcpts int `toml:"max_recipients"`
}

// merge returns l with each zero field taken from def; negative fields
// become zero (unlimited).
func (l Limits) merge(def Limits) Limits {
	pickF := func(v, d float64) float64 {
		if v == 0 {
			v = d
		}
		return max(v, 0)
	}
	pickI := func(v, d int) int {
		if v == 0 {
			v = d
		}
		return max(v, 0)
	}
	return Limits{
		Rate:           pickF(l.Rate, def.Rate),
		Burst:          pickI(l.Burst, def.Burst),
		ConnRate:       pickF(l.ConnRate, def.ConnRate),
		MaxConns:       pickI(l.MaxConns, def.MaxConns),
		MaxMsgsPerConn: pickI(l.MaxMsgsPerConn, def.MaxMsgsPerConn),
		MaxRcpts:       pickI(l.MaxRcpts, def.MaxRcpts),
	}
}

// tighter returns the stricter of l and o field by field (0 is unlimited).
func (l Limits) tighter(o Limits) Limits {
	minF := func(a, b float64) float64 {
		if a == 0 || (b != 0 && b < a) {
			return b
		}
		return a
	}
	minI := func(a, b int) int {
		if a == 0 || (b != 0 && b < a) {
			return b
		}
		return a
	}
	return Limits{
		Rate:           minF(l.Rate, o.Rate),
		Burst:          minI(l.Burst, o.Burst),
		ConnRate:       minF(l.ConnRate, o.ConnRate),
		MaxConns:       minI(l.MaxConns, o.MaxConns),
		MaxMsgsPerConn: minI(l.MaxMsgsPerConn, o.MaxMsgsPerConn),
		MaxRcpts:       minI(l.MaxRcpts, o.MaxRcpts),
	}
}

// burst is the effective bucket size: Burst, else Rate/10 rounded up, at
// least 1.
func (l Limits) burst() int {
	if l.Burst > 0 {
		return l.Burst
	}
	return max(1, int(l.Rate/10+0.999999))
}

// Group is a set of destination domains that share one budget because they
// are served by the same MX hosts (Gmail serves gmail.com, googlemail.com
// and millions of Google Workspace domains). A domain belongs to the first
// group one of whose Domains patterns matches it or, when Config.MXHostsFunc
// is set, one of whose MX patterns matches one of its MX hosts.
type Group struct {
	// Name names the group's scope ("domain:NAME" in status output).
	Name string `toml:"name"`
	// Domains are patterns of recipient domains, in path.Match syntax
	// ("gmail.com", "hotmail.*").
	Domains []string `toml:"domains"`
	// MX are patterns of MX host names ("*.google.com").
	MX []string `toml:"mx"`
	// Limits are the group's limits, over the Config.Domain defaults.
	Limits
}

// Config configures a Limiter. The TOML keys are in the struct tags; see
// default.toml for a commented example.
type Config struct {
	// AlertReserve is the share of every rate kept for alert traffic
	// (Key.Alert): newsletters may use at most (1-AlertReserve) of a rate,
	// less what alerts take; alerts may use all of it. Default 0.2;
	// 0 < AlertReserve < 1. A negative value reserves nothing (and gives
	// alerts no priority).
	AlertReserve float64 `toml:"alert_reserve"`
	// MaxWait is the longest Acquire waits for budget; when budget is
	// further off, Acquire returns the wait instead (and the batch is
	// snoozed). Default 2s.
	MaxWait Duration `toml:"max_wait"`
	// LeaseFraction is how much of a rate one process leases from
	// PostgreSQL at a time, as a fraction of one second's budget
	// (0.1 = 100 ms worth). Default 0.1.
	LeaseFraction float64 `toml:"lease_fraction"`
	// LeaseTTL is how long a process may hold leased tokens before it gives
	// them back; it bounds how late a process sees a suspension decided by
	// another. Default 1s.
	LeaseTTL Duration `toml:"lease_ttl"`
	// SyncInterval is how often a started Limiter publishes its connection
	// counts and reads the other processes'. Default 500ms.
	SyncInterval Duration `toml:"sync_interval"`
	// RecoveryStart is the fraction of its rate a scope resumes at after a
	// suspension. Default 0.25.
	RecoveryStart float64 `toml:"recovery_start"`
	// RecoveryStep multiplies a slowed scope's rate once per
	// RecoveryInterval while its replies stay good, up to the configured
	// rate. Default 1.5.
	RecoveryStep float64 `toml:"recovery_step"`
	// RecoveryInterval is the length of one good interval. Default 30s.
	RecoveryInterval Duration `toml:"recovery_interval"`
	// MinFactor is the floor of a slowed rate, as a fraction of the
	// configured rate. Default 0.05.
	MinFactor float64 `toml:"min_factor"`
	// MaxSuspend caps any suspension, including one asked for by a reply's
	// "retry in N minutes" hint. Default 1h.
	MaxSuspend Duration `toml:"max_suspend"`
	// MXCacheTTL is how long a domain's MX hosts (for grouping) are cached.
	// Default 1h.
	MXCacheTTL Duration `toml:"mx_cache_ttl"`

	// Global limits all traffic together. Default unlimited.
	Global Limits `toml:"global"`
	// Route is the default for every route (relay or MX host).
	Route Limits `toml:"route"`
	// Domain is the default for every destination domain or group.
	Domain Limits `toml:"domain"`
	// Campaign is the default for every campaign.
	Campaign Limits `toml:"campaign"`
	// Routes override Route for one route, by its name (Key.Route).
	Routes map[string]Limits `toml:"routes"`
	// Domains override Domain for one destination domain.
	Domains map[string]Limits `toml:"domains"`
	// Campaigns override Campaign for one campaign, by its id in decimal.
	Campaigns map[string]Limits `toml:"campaigns"`
	// Groups map domains to shared budgets (see Group).
	Groups []Group `toml:"mx_group"`
	// Rules are the back-off rules, tried in order; the first match wins.
	// Empty means the shipped rule pack (default.toml's). Set NoRules to run
	// without any.
	Rules []Rule `toml:"rule"`
	// NoRules disables adaptive back-off: Rules are ignored.
	NoRules bool `toml:"no_rules"`
	// DomainLimitsViaRelay applies the destination scopes ([domain],
	// [domains], [[mx_group]]) to traffic handed to a relay too. Off by
	// default: a relay is an MTA that queues and shapes per destination
	// itself (Postfix, PowerMTA, KumoMTA, the ESPs' submission services), so
	// blaster shapes what it hands the relay ([route], [routes]) and back-off
	// rules act on the relay, whose replies are about itself. Turn it on
	// when the relay forwards without shaping.
	DomainLimitsViaRelay bool `toml:"domain_limits_via_relay"`

	// Pool is the database shared by the worker processes. Nil keeps every
	// budget in this process (x/time/rate), for a single process.
	Pool *pgxpool.Pool `toml:"-"`
	// NowFunc is the clock. Default: time.Now for local budgets; with a
	// Pool and no NowFunc, the database's clock refills the shared buckets,
	// so hosts with skewed clocks still agree.
	NowFunc func() time.Time `toml:"-"`
	// SleepFunc waits d or until ctx ends. Default a timer; tests pass one
	// that advances their fake clock.
	SleepFunc func(ctx context.Context, d time.Duration) error `toml:"-"`
	// MXHostsFunc returns a domain's MX host names, to put domains served
	// by the same hosts into one budget. Nil groups by the Domains patterns
	// and by name only.
	MXHostsFunc func(ctx context.Context, domain string) ([]string, error) `toml:"-"`
	// Logger; default slog.Default().
	Logger *slog.Logger `toml:"-"`
}

// Duration is a time.Duration read from TOML as a string ("1m30s").
type Duration time.Duration

// UnmarshalText parses "250ms", "1m".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText formats d as time.Duration does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// LoadConfig reads a TOML configuration file; path "" loads the shipped
// default.toml. A file replaces default.toml as a whole (copy it and edit):
// keys the file leaves out take the WithDefaults values, groups it leaves
// out do not exist, and a file without [[rule]]s gets default.toml's.
func LoadConfig(path string) (Config, error) {
	b := DefaultTOML
	name := "default.toml"
	if path != "" {
		var err error
		if b, err = os.ReadFile(path); err != nil {
			return Config{}, fmt.Errorf("reading throttle config: %w", err)
		}
		name = path
	}
	return ParseConfig(name, b)
}

// ParseConfig parses TOML read from the file name (for messages).
func ParseConfig(name string, b []byte) (Config, error) {
	var c Config
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(&c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return Config{}, fmt.Errorf("%s:%d: %s", name, pe.Position.Line, pe.Message)
		}
		return Config{}, fmt.Errorf("%s: %w", name, err)
	}
	if un := md.Undecoded(); len(un) > 0 {
		keys := make([]string, len(un))
		for i, k := range un {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("%s: unknown keys: %s", name, strings.Join(keys, ", "))
	}
	c = c.WithDefaults()
	if err := c.validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

// WithDefaults returns c with every zero field set to its default. The
// rule pack of default.toml is used when c has no rules.
func (c Config) WithDefaults() Config {
	if c.AlertReserve == 0 {
		c.AlertReserve = 0.2 // a negative value stays: New applies WithDefaults again
	}
	setD := func(d *Duration, v time.Duration) {
		if *d <= 0 {
			*d = Duration(v)
		}
	}
	setF := func(f *float64, v float64) {
		if *f <= 0 {
			*f = v
		}
	}
	setD(&c.MaxWait, 2*time.Second)
	setD(&c.LeaseTTL, time.Second)
	setD(&c.SyncInterval, 500*time.Millisecond)
	setD(&c.RecoveryInterval, 30*time.Second)
	setD(&c.MaxSuspend, time.Hour)
	setD(&c.MXCacheTTL, time.Hour)
	setF(&c.LeaseFraction, 0.1)
	setF(&c.RecoveryStart, 0.25)
	setF(&c.RecoveryStep, 1.5)
	setF(&c.MinFactor, 0.05)
	switch {
	case c.NoRules:
		c.Rules = nil
	case len(c.Rules) == 0:
		c.Rules = defaultRules()
	default:
		c.Rules = slices.Clone(c.Rules) // validate compiles them in place
	}
	if c.SleepFunc == nil {
		c.SleepFunc = sleep
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// defaultRules is the rule pack of the embedded default.toml.
func defaultRules() []Rule {
	var d struct {
		Rules []Rule `toml:"rule"`
	}
	if _, err := toml.Decode(string(DefaultTOML), &d); err != nil {
		panic(fmt.Sprintf("throttle: embedded default.toml: %v", err))
	}
	return d.Rules
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c Config) validate() error {
	if c.AlertReserve >= 1 {
		return fmt.Errorf("alert_reserve %v: must be below 1", c.AlertReserve)
	}
	if c.RecoveryStart > 1 {
		return fmt.Errorf("recovery_start %v: must be at most 1", c.RecoveryStart)
	}
	if c.RecoveryStep <= 1 {
		return fmt.Errorf("recovery_step %v: must be above 1", c.RecoveryStep)
	}
	if c.MinFactor > 1 {
		return fmt.Errorf("min_factor %v: must be at most 1", c.MinFactor)
	}
	if c.LeaseFraction > 1 {
		return fmt.Errorf("lease_fraction %v: must be at most 1", c.LeaseFraction)
	}
	names := map[string]bool{}
	for i, g := range c.Groups {
		if g.Name == "" {
			return fmt.Errorf("mx_group %d: name is required", i+1)
		}
		if names[g.Name] {
			return fmt.Errorf("mx_group %q: defined twice", g.Name)
		}
		names[g.Name] = true
		for _, p := range append(append([]string(nil), g.Domains...), g.MX...) {
			if _, err := path.Match(p, ""); err != nil {
				return fmt.Errorf("mx_group %q: pattern %q: %w", g.Name, p, err)
			}
		}
	}
	for i := range c.Rules {
		if err := c.Rules[i].compile(); err != nil {
			return fmt.Errorf("rule %d (%s): %w", i+1, c.Rules[i].Name, err)
		}
	}
	return nil
}
