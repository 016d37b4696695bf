package transport

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/blaster-mail/blaster/pool"
	"github.com/blaster-mail/blaster/smtp"
)

// PasswordEnv is the environment variable a relay's password is read from
// when its URL names a user and no password_file is given. A password
// never appears in a URL, in argv or in the database.
const PasswordEnv = "BLASTER_RELAY_PASSWORD"

// Default relay ports.
const (
	SubmissionPort  = 587 // RFC 6409 §3.1, with STARTTLS
	SubmissionsPort = 465 // RFC 8314 §3.3, implicit TLS
)

// RelayConfig is one relay, as parsed from a URL by ParseRelayURL.
type RelayConfig struct {
	// Scheme is "smtp" (STARTTLS or plain) or "smtps" (implicit TLS).
	Scheme string
	// Host is the relay's host name or IP address.
	Host string
	// Port defaults to SubmissionPort (587) for smtp, SubmissionsPort (465)
	// for smtps.
	Port int
	// TLS is how the connection is secured: smtp.TLSRequired when a user
	// is given, smtp.TLSOpportunistic otherwise, smtp.TLSImplicit for
	// smtps; the URL's tls= option overrides it for smtp.
	TLS smtp.TLSMode
	// ServerName is the name the certificate must be valid for; default
	// Host.
	ServerName string
	// CAFile is a PEM file of CA certificates to verify the relay with,
	// instead of the system's roots. "" uses the system's roots.
	CAFile string
	// User is the SASL user name; "" means no AUTH.
	User string
	// Password is the secret for User. ParseRelayURL never sets it (a URL
	// holding one is refused); LoadPassword reads it from PasswordFile or
	// the PasswordEnv variable. Never logged: see Redacted.
	Password string
	// PasswordFile is a file whose content (trailing newline trimmed) is
	// the password; "" reads PasswordEnv instead.
	PasswordFile string
	// Auth is the SASL mechanism: plain, login, xoauth2, oauthbearer or
	// cram-md5; "" picks the best the server offers (smtp.NewAuth).
	Auth string
	// MaxConns caps the connections open to this relay; 0 means
	// DefaultRelayMaxConns.
	MaxConns int
	// MaxMessages retires a connection after that many messages; 0 means
	// pool.DefaultMaxMessages, -1 no limit.
	MaxMessages int
	// InsecureAuth allows AUTH over a connection without TLS: an explicit
	// opt-in, for a relay on a trusted network only.
	InsecureAuth bool
}

var authMechs = []string{"plain", "login", "xoauth2", "oauthbearer", "cram-md5"}

// ParseRelayURL parses a relay URL:
//
//	smtp://[user@]host[:587][?options]   STARTTLS (required with a user, opportunistic without)
//	smtps://[user@]host[:465][?options]  implicit TLS (RFC 8314)
//
// Options: tls=required|opportunistic|none (smtp only), ca=FILE,
// server_name=NAME, auth=plain|login|xoauth2|oauthbearer|cram-md5,
// max_conns=N, max_messages=N (-1: no limit), insecure_auth=true,
// password_file=PATH. Unknown or repeated options are errors, so a typo is
// never silently ignored. A password in the URL is refused: it would show
// in process listings and logs.
func ParseRelayURL(s string) (RelayConfig, error) {
	var c RelayConfig
	u, err := url.Parse(s)
	if err != nil {
		// url.Error quotes the whole URL, which may hold a password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return c, fmt.Errorf("relay URL: %w", err)
	}
	if _, has := u.User.Password(); has {
		return c, fmt.Errorf("relay URL %s: holds a password, which would show in process listings and logs; "+
			"give it in the %s environment variable or in a file named by password_file=PATH", redactURL(u), PasswordEnv)
	}
	where := "relay URL " + redactURL(u)
	switch c.Scheme = strings.ToLower(u.Scheme); c.Scheme {
	case "smtp":
		c.Port = SubmissionPort
	case "smtps":
		c.Port = SubmissionsPort
	default:
		return c, fmt.Errorf("%s: scheme %q: want smtp or smtps", where, u.Scheme)
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.Fragment != "" {
		return c, fmt.Errorf("%s: want scheme://[user@]host[:port][?options], with no path", where)
	}
	c.Host = u.Hostname()
	if c.Host == "" {
		return c, fmt.Errorf("%s: no host", where)
	}
	if !validHost(c.Host) {
		return c, fmt.Errorf("%s: host %q: want a DNS name (letters, digits, '-', '.', '_') or an IP address", where, c.Host)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return c, fmt.Errorf("%s: port %q: want 1 to 65535", where, p)
		}
		c.Port = n
	}
	if u.User != nil {
		c.User = u.User.Username()
		if c.User == "" {
			return c, fmt.Errorf("%s: empty user name before @", where)
		}
	}
	switch {
	case c.Scheme == "smtps":
		c.TLS = smtp.TLSImplicit
	case c.User != "":
		c.TLS = smtp.TLSRequired
	default:
		c.TLS = smtp.TLSOpportunistic
	}

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return c, fmt.Errorf("%s: options: %w", where, err)
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		vs := q[k]
		if len(vs) > 1 {
			return c, fmt.Errorf("%s: option %s given %d times", where, k, len(vs))
		}
		v := vs[0]
		switch k {
		case "tls":
			if c.Scheme == "smtps" {
				return c, fmt.Errorf("%s: tls=%s: smtps is always implicit TLS; use smtp:// for STARTTLS or none", where, v)
			}
			switch v {
			case "required":
				c.TLS = smtp.TLSRequired
			case "opportunistic":
				c.TLS = smtp.TLSOpportunistic
			case "none":
				c.TLS = smtp.TLSNone
			default:
				return c, fmt.Errorf("%s: tls=%q: want required, opportunistic or none", where, v)
			}
		case "ca":
			c.CAFile = v
		case "server_name":
			c.ServerName = v
		case "auth":
			v = strings.ToLower(v)
			if !slices.Contains(authMechs, v) {
				return c, fmt.Errorf("%s: auth=%q: want one of %s", where, v, strings.Join(authMechs, ", "))
			}
			c.Auth = v
		case "max_conns":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return c, fmt.Errorf("%s: max_conns=%q: want a whole number of at least 1", where, v)
			}
			c.MaxConns = n
		case "max_messages":
			n, err := strconv.Atoi(v)
			if err != nil || n < -1 || n == 0 {
				return c, fmt.Errorf("%s: max_messages=%q: want a whole number of at least 1, or -1 for no limit", where, v)
			}
			c.MaxMessages = n
		case "insecure_auth":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return c, fmt.Errorf("%s: insecure_auth=%q: want true or false", where, v)
			}
			c.InsecureAuth = b
		case "password_file":
			if v == "" {
				return c, fmt.Errorf("%s: password_file is empty", where)
			}
			c.PasswordFile = v
		default:
			return c, fmt.Errorf("%s: unknown option %q (known: tls, ca, server_name, auth, max_conns, max_messages, insecure_auth, password_file)", where, k)
		}
	}
	if c.User == "" && (c.Auth != "" || c.PasswordFile != "") {
		return c, fmt.Errorf("%s: auth or password_file given without a user (smtp://USER@host)", where)
	}
	if c.User != "" && c.TLS == smtp.TLSNone && !c.InsecureAuth {
		return c, fmt.Errorf("%s: tls=none with a user would send the password in clear; add insecure_auth=true to allow it", where)
	}
	return c, nil
}

// LoadPassword sets Password, when User is set and Password is not, from
// PasswordFile or else from the PasswordEnv variable read with getenv
// (os.Getenv when nil). A user without a password is an error.
func (c *RelayConfig) LoadPassword(getenv func(string) string) error {
	if c.User == "" || c.Password != "" {
		return nil
	}
	if c.PasswordFile != "" {
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return fmt.Errorf("relay %s: reading password_file: %w", c.Redacted(), err)
		}
		c.Password = strings.TrimRight(string(b), "\r\n")
		if c.Password == "" {
			return fmt.Errorf("relay %s: password_file %s is empty", c.Redacted(), c.PasswordFile)
		}
		return nil
	}
	if getenv == nil {
		getenv = os.Getenv
	}
	c.Password = getenv(PasswordEnv)
	if c.Password == "" {
		return fmt.Errorf("relay %s: user %q has no password: set %s or password_file=PATH", c.Redacted(), c.User, PasswordEnv)
	}
	return nil
}

// String is Redacted: a RelayConfig printed by mistake (%v, %+v, an
// error message) shows no password.
func (c RelayConfig) String() string { return c.Redacted() }

// GoString is Redacted too, for %#v.
func (c RelayConfig) GoString() string { return c.Redacted() }

// LogValue is Redacted, for a RelayConfig handed to slog.
func (c RelayConfig) LogValue() slog.Value { return slog.StringValue(c.Redacted()) }

// Redacted is the relay as a URL for logs, metrics and Route: scheme, user,
// host, port and the options that differ from the defaults, never the
// password.
func (c RelayConfig) Redacted() string {
	u := url.URL{Scheme: c.Scheme, Host: net.JoinHostPort(c.Host, strconv.Itoa(c.Port))}
	if c.User != "" {
		u.User = url.User(c.User)
	}
	q := url.Values{}
	if c.Scheme == "smtp" {
		def := smtp.TLSOpportunistic
		if c.User != "" {
			def = smtp.TLSRequired
		}
		if c.TLS != def {
			q.Set("tls", c.TLS.String())
		}
	}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("ca", c.CAFile)
	set("server_name", c.ServerName)
	set("auth", c.Auth)
	if c.MaxConns != 0 {
		q.Set("max_conns", strconv.Itoa(c.MaxConns))
	}
	if c.MaxMessages != 0 {
		q.Set("max_messages", strconv.Itoa(c.MaxMessages))
	}
	if c.InsecureAuth {
		q.Set("insecure_auth", "true")
	}
	set("password_file", c.PasswordFile)
	u.RawQuery = q.Encode()
	return u.String()
}

// redactURL prints u without its password, for error messages.
func redactURL(u *url.URL) string {
	r := *u
	if r.User != nil {
		r.User = url.User(r.User.Username())
	}
	r.RawQuery = ""
	return r.String()
}

// validHost accepts an IP address or an ASCII DNS name (an IDN must be
// given in its A-label form, RFC 5890).
func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, r := range h {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '-', r == '.', r == '_':
		default:
			return false
		}
	}
	return true
}

// Addr is host:port.
func (c RelayConfig) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// ClientConfig builds the SMTP client configuration for this relay: TLS
// verified against CAFile (or the system's roots) for ServerName, TLS 1.2
// at least, AUTH with User and Password when User is set. Call
// LoadPassword first.
func (c RelayConfig) ClientConfig(localName string) (smtp.Config, error) {
	serverName := c.ServerName
	if serverName == "" {
		serverName = c.Host
	}
	tc, err := tlsConfig(serverName, c.CAFile)
	if err != nil {
		return smtp.Config{}, fmt.Errorf("relay %s: %w", c.Redacted(), err)
	}
	cfg := smtp.Config{
		LocalName:         localName,
		ServerName:        serverName,
		TLS:               c.TLS,
		TLSConfig:         tc,
		AllowInsecureAuth: c.InsecureAuth,
	}
	if c.User != "" {
		cfg.Auth = smtp.NewAuth(c.Auth, c.User, c.Password)
	}
	return cfg, nil
}

// tlsConfig verifies serverName against the roots in caFile, or the
// system's when caFile is "".
func tlsConfig(serverName, caFile string) (*tls.Config, error) {
	tc := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return tc, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", caFile)
	}
	tc.RootCAs = roots
	return tc, nil
}

// RelayOptions configures NewRelay.
type RelayOptions struct {
	// LocalName is the name sent in EHLO; default the host name, or
	// "localhost" when it cannot be read.
	LocalName string
	// Timeouts are the SMTP command timeouts; the zero value takes the
	// client's RFC 5321 §4.5.3.2 defaults.
	Timeouts smtp.Timeouts
	// DialFunc opens TCP connections; default net.Dialer. Tests inject it.
	DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)
	// RetryAfter is how long a relay that refused a connection or answered
	// 421 is passed over before it is tried first again. Default 1 minute.
	RetryAfter time.Duration
	// MaxConns caps the connections to a relay whose URL gives no
	// max_conns. Default DefaultRelayMaxConns; `blaster worker` passes its
	// newsletter + alert batches, so an alert never waits for a connection
	// that a newsletter batch holds.
	MaxConns int
	// IdleTimeout and CheckAfter are the pools' (see pool.Config); 0 means
	// the pool's default.
	IdleTimeout, CheckAfter time.Duration
	// Getenv reads PasswordEnv; default os.Getenv.
	Getenv func(string) string
	// NowFunc is the clock for RetryAfter and the pools; default time.Now.
	NowFunc func() time.Time
}

// DefaultRelayMaxConns is a relay's connection cap when its URL gives no
// max_conns: as many as `blaster worker` runs newsletter batches at once
// by default, so no batch waits for a connection while holding its job.
// A relay is one operator-chosen server built for many sessions (Postfix's
// default_process_limit is 100), unlike an MX host, whose pools keep
// pool.DefaultMaxConns.
const DefaultRelayMaxConns = 16

// DefaultRetryAfter is RelayOptions.RetryAfter's default.
const DefaultRetryAfter = time.Minute

// Relay delivers everything through one of a list of relays: the first one
// that is up, failing over to the next when one refuses connections,
// cannot be dialed or answers 421 (RFC 5321 §3.8: the service is closing),
// and going back to it after RetryAfter. Each relay has its own pool.
type Relay struct {
	relays []*relayRoute
	opts   RelayOptions
}

var _ Transport = (*Relay)(nil)

type relayRoute struct {
	name string // redacted URL
	pool *pool.Pool[*smtp.Client]

	mu        sync.Mutex
	downUntil time.Time
}

// NewRelay builds a relay transport over cfgs, tried in order. Passwords
// are loaded (LoadPassword) and CA files read here, so a misconfiguration
// fails at start, not at the first message. Nothing is dialed yet.
func NewRelay(cfgs []RelayConfig, opts RelayOptions) (*Relay, error) {
	if len(cfgs) == 0 {
		return nil, errors.New("relay transport: no relay given")
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = DefaultRetryAfter
	}
	if opts.NowFunc == nil {
		opts.NowFunc = time.Now
	}
	if opts.LocalName == "" {
		opts.LocalName = localName()
	}
	r := &Relay{opts: opts}
	for _, c := range cfgs {
		if err := c.LoadPassword(opts.Getenv); err != nil {
			return nil, err
		}
		cc, err := c.ClientConfig(opts.LocalName)
		if err != nil {
			return nil, err
		}
		cc.Timeouts = opts.Timeouts
		cc.DialFunc = opts.DialFunc
		addr := c.Addr()
		p, err := pool.New(pool.Config[*smtp.Client]{
			Dial: func(ctx context.Context) (*smtp.Client, error) {
				return smtp.Dial(ctx, addr, cc)
			},
			MaxConns:    cmp.Or(c.MaxConns, opts.MaxConns, DefaultRelayMaxConns),
			MaxMessages: c.MaxMessages,
			IdleTimeout: opts.IdleTimeout,
			CheckAfter:  opts.CheckAfter,
			NowFunc:     opts.NowFunc,
		})
		if err != nil {
			return nil, fmt.Errorf("relay %s: %w", c.Redacted(), err)
		}
		r.relays = append(r.relays, &relayRoute{name: c.Redacted(), pool: p})
	}
	return r, nil
}

// Session returns a connection to the first relay that is up and answers.
// Relays marked down are tried last, in order, rather than not at all.
func (r *Relay) Session(ctx context.Context, _ string) (Session, error) {
	now := r.opts.NowFunc()
	order := make([]*relayRoute, 0, len(r.relays))
	var down []*relayRoute
	for _, rr := range r.relays {
		if rr.isDown(now) {
			down = append(down, rr)
		} else {
			order = append(order, rr)
		}
	}
	order = append(order, down...)

	var errs []error
	for _, rr := range order {
		c, err := rr.pool.Get(ctx)
		if err == nil {
			return &smtpSession{pool: rr.pool, conn: c, onRelease: func(err error) {
				// A 421 means the relay is closing connections (RFC 5321
				// §3.8) and likely refusing new ones for a while.
				if isServiceClosing(err) {
					rr.markDown(r.opts.NowFunc().Add(r.opts.RetryAfter))
				}
			}}, nil
		}
		if ctx.Err() != nil || errors.Is(err, pool.ErrClosed) {
			return nil, fmt.Errorf("relay %s: %w", rr.name, err)
		}
		rr.markDown(r.opts.NowFunc().Add(r.opts.RetryAfter))
		errs = append(errs, fmt.Errorf("relay %s: %w", rr.name, err))
	}
	return nil, fmt.Errorf("every relay failed: %w", errors.Join(errs...))
}

// Route is the first relay that is up (redacted URL), whatever the domain.
func (r *Relay) Route(string) string {
	now := r.opts.NowFunc()
	for _, rr := range r.relays {
		if !rr.isDown(now) {
			return rr.name
		}
	}
	return r.relays[0].name
}

// Close closes every relay's pool, QUITting their connections.
func (r *Relay) Close() error {
	for _, rr := range r.relays {
		_ = rr.pool.Close()
	}
	return nil
}

// Stats returns each relay's pool counters, keyed by redacted URL.
func (r *Relay) Stats() map[string]pool.Stats {
	m := make(map[string]pool.Stats, len(r.relays))
	for _, rr := range r.relays {
		m[rr.name] = rr.pool.Stats()
	}
	return m
}

func (rr *relayRoute) isDown(now time.Time) bool {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	return now.Before(rr.downUntil)
}

func (rr *relayRoute) markDown(until time.Time) {
	rr.mu.Lock()
	rr.downUntil = until
	rr.mu.Unlock()
}

// isServiceClosing reports a 421 reply (RFC 5321 §3.8).
func isServiceClosing(err error) bool {
	var se *smtp.Error
	return errors.As(err, &se) && se.Code == 421
}

func localName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}
