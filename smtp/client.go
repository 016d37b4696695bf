package smtp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
)

// TLSMode says how a connection is encrypted.
type TLSMode int

const (
	// TLSOpportunistic upgrades with STARTTLS (RFC 3207) when the server
	// offers it and goes on in plain text when it does not. A certificate
	// that fails verification is still an error. The zero value.
	TLSOpportunistic TLSMode = iota
	// TLSRequired upgrades with STARTTLS or fails with a permanent
	// RouteError.
	TLSRequired
	// TLSNone never starts TLS.
	TLSNone
	// TLSImplicit starts TLS before the greeting (RFC 8314 §3, port 465).
	TLSImplicit
)

func (m TLSMode) String() string {
	switch m {
	case TLSOpportunistic:
		return "opportunistic"
	case TLSRequired:
		return "required"
	case TLSNone:
		return "none"
	case TLSImplicit:
		return "implicit"
	}
	return "tlsmode(" + strconv.Itoa(int(m)) + ")"
}

// Timeouts bound each protocol step. A zero field takes its default, the
// value RFC 5321 §4.5.3.2 recommends. Each is the time allowed for one read
// or write of that step; the ctx given to the call can only shorten it.
type Timeouts struct {
	// Greeting waits for the 220 greeting (§4.5.3.2.1). Default 5 minutes.
	Greeting time.Duration
	// Mail waits for the reply to MAIL (§4.5.3.2.2). Default 5 minutes.
	Mail time.Duration
	// Rcpt waits for the reply to each RCPT (§4.5.3.2.3). Default 5 minutes.
	Rcpt time.Duration
	// Data waits for the 354 reply to DATA (§4.5.3.2.4). Default 2 minutes.
	Data time.Duration
	// DataBlock bounds each write of message data (§4.5.3.2.5).
	// Default 3 minutes.
	DataBlock time.Duration
	// DataEnd waits for the reply to the final "." (§4.5.3.2.6).
	// Default 10 minutes.
	DataEnd time.Duration
	// Command bounds every other step: EHLO, STARTTLS and the TLS
	// handshake, AUTH, RSET, NOOP, QUIT. RFC 5321 names no value; default
	// 5 minutes, the server's own timeout (§4.5.3.2.7).
	Command time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Greeting, 5*time.Minute)
	def(&t.Mail, 5*time.Minute)
	def(&t.Rcpt, 5*time.Minute)
	def(&t.Data, 2*time.Minute)
	def(&t.DataBlock, 3*time.Minute)
	def(&t.DataEnd, 10*time.Minute)
	def(&t.Command, 5*time.Minute)
	return t
}

// Config configures Dial.
type Config struct {
	// LocalName is the name sent with EHLO/HELO (RFC 5321 §4.1.1.1), a
	// fully qualified domain name or an address literal. Default
	// os.Hostname(), or "localhost" when that fails.
	LocalName string
	// ServerName is the name the server's certificate must match.
	// Default the host part of the address given to Dial. Overrides
	// TLSConfig.ServerName only when that is empty.
	ServerName string
	// TLS is the encryption mode. Default TLSOpportunistic.
	TLS TLSMode
	// TLSConfig is the base TLS configuration (RootCAs for a private CA,
	// client certificates). It is cloned, never modified. MinVersion is
	// raised to TLS 1.2 when lower. Default: system roots, verified.
	TLSConfig *tls.Config
	// Auth, when set, authenticates after TLS (RFC 4954): it is called
	// with the server's capabilities and returns the SASL client to use;
	// NewAuth builds one. Nil means no AUTH.
	Auth func(caps Caps) (sasl.Client, error)
	// AllowInsecureAuth permits AUTH on a connection without TLS. Default
	// false: credentials are never sent in clear, Dial fails instead.
	AllowInsecureAuth bool
	// Timeouts bounds each protocol step; zero fields take the RFC 5321
	// §4.5.3.2 defaults.
	Timeouts Timeouts
	// DialFunc opens the connection. Default a net.Dialer's DialContext.
	DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)
	// Trace, when set, receives the conversation for diagnosis ("blaster
	// probe"): one "C: " or "S: " line per command or reply line; AUTH
	// payloads are masked and the message data is summarized, not copied.
	// Nil: no trace.
	Trace io.Writer
}

func (cfg Config) withDefaults(addr string) (Config, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return cfg, fmt.Errorf("address %q: %w", addr, err)
	}
	if cfg.LocalName == "" {
		cfg.LocalName, err = os.Hostname()
		if err != nil || cfg.LocalName == "" {
			cfg.LocalName = "localhost"
		}
	}
	if strings.ContainsAny(cfg.LocalName, " \t\r\n") {
		return cfg, fmt.Errorf("local name %q: contains white space", cfg.LocalName)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if cfg.TLS < TLSOpportunistic || cfg.TLS > TLSImplicit {
		return cfg, fmt.Errorf("TLS mode %d: unknown", int(cfg.TLS))
	}
	var tc *tls.Config
	if cfg.TLSConfig != nil {
		tc = cfg.TLSConfig.Clone()
	} else {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		tc.ServerName = cfg.ServerName
	}
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	cfg.TLSConfig = tc
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	if cfg.DialFunc == nil {
		var d net.Dialer
		cfg.DialFunc = d.DialContext
	}
	return cfg, nil
}

// Caps is what the server announced in its EHLO reply (RFC 5321 §4.1.1.1).
type Caps struct {
	// Domain is the name the server gave in the first line of its reply.
	Domain string
	// ESMTP is false when EHLO was refused and HELO used: no extensions.
	ESMTP bool
	// Size is the SIZE limit in octets (RFC 1870); 0 when not announced or
	// announced without a limit.
	Size int64
	// Pipelining: RFC 2920.
	Pipelining bool
	// EightBitMIME: RFC 6152.
	EightBitMIME bool
	// SMTPUTF8: RFC 6531.
	SMTPUTF8 bool
	// DSN: RFC 3461.
	DSN bool
	// EnhancedStatusCodes: RFC 2034.
	EnhancedStatusCodes bool
	// StartTLS: RFC 3207.
	StartTLS bool
	// Chunking: RFC 3030 (BDAT). Parsed, not used: DATA streams as well.
	Chunking bool
	// Auth lists the SASL mechanisms offered (RFC 4954 §3), upper case.
	Auth []string

	ext map[string]string
}

// Extension reports whether the server announced the EHLO keyword name
// (case-insensitive), with its parameters.
func (c Caps) Extension(name string) (param string, ok bool) {
	param, ok = c.ext[strings.ToUpper(name)]
	return param, ok
}

func parseCaps(r *Reply) Caps {
	lines := strings.Split(r.Text, "\n")
	domain, _, _ := strings.Cut(lines[0], " ")
	caps := Caps{Domain: domain, ESMTP: true, ext: make(map[string]string)}
	for _, l := range lines[1:] {
		kw, param, _ := strings.Cut(strings.TrimSpace(l), " ")
		kw = strings.ToUpper(kw)
		if m, ok := strings.CutPrefix(kw, "AUTH="); ok {
			// The pre-RFC 4954 form "AUTH=LOGIN PLAIN" some servers still send.
			kw, param = "AUTH", m+" "+param
		}
		if kw == "" {
			continue
		}
		caps.ext[kw] = param
		switch kw {
		case "SIZE":
			if n, err := strconv.ParseInt(strings.TrimSpace(param), 10, 64); err == nil && n > 0 {
				caps.Size = n
			}
		case "PIPELINING":
			caps.Pipelining = true
		case "8BITMIME":
			caps.EightBitMIME = true
		case "SMTPUTF8":
			caps.SMTPUTF8 = true
		case "DSN":
			caps.DSN = true
		case "ENHANCEDSTATUSCODES":
			caps.EnhancedStatusCodes = true
		case "STARTTLS":
			caps.StartTLS = true
		case "CHUNKING":
			caps.Chunking = true
		case "AUTH":
			for _, m := range strings.Fields(strings.ToUpper(param)) {
				if !caps.HasAuth(m) {
					caps.Auth = append(caps.Auth, m)
				}
			}
		}
	}
	return caps
}

// Client is one SMTP connection. It is not safe for concurrent use: one
// goroutine runs its transactions, one after the other, and asks Broken;
// only Close may be called from elsewhere.
type Client struct {
	cfg    Config
	server string
	br     *bufio.Reader
	bw     *bufio.Writer
	cw     *connWriter
	buf    []byte // copy buffer for message bodies
	// lines and pending hold the RCPT lines of the current transaction,
	// reused from one to the next.
	lines   []byte
	pending []pendingRcpt
	cache   replyCache
	caps    Caps
	broken  bool
	closed  atomic.Bool

	// mu guards conn (replaced by STARTTLS) and the cancellation state
	// shared with the context.AfterFunc callback of bind.
	mu       sync.Mutex
	conn     net.Conn
	ctx      context.Context
	canceled bool
	deadline time.Time // ctx's deadline, or zero
}

// bufferSize is the size of the read and write buffers. A pipelined
// envelope of 100 recipients (about 5 KB) fits the write buffer, so it goes
// out in one write.
const bufferSize = 32 << 10

// Dial connects to addr (host:port), reads the greeting, sends EHLO
// (falling back to HELO), starts TLS per cfg.TLS (then EHLO again) and
// authenticates when cfg.Auth is set. Every error it returns is a
// *RouteError.
func Dial(ctx context.Context, addr string, cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults(addr)
	if err != nil {
		return nil, &RouteError{Server: addr, Op: "config", Permanent: true, Err: err}
	}
	conn, err := cfg.DialFunc(ctx, "tcp", addr)
	if err != nil {
		return nil, &RouteError{Server: addr, Op: "dial", Err: err}
	}
	c := &Client{cfg: cfg, server: addr, conn: conn}
	c.cw = &connWriter{c: c}
	c.br = bufio.NewReaderSize(conn, 4096)
	c.bw = bufio.NewWriterSize(c.cw, bufferSize)
	if err := c.open(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) open(ctx context.Context) error {
	unbind, err := c.bind(ctx)
	if err != nil {
		return &RouteError{Server: c.server, Op: "dial", Err: err}
	}
	defer unbind()
	if c.cfg.TLS == TLSImplicit {
		if err := c.handshake(ctx); err != nil {
			return err
		}
	}
	if _, err := c.reply("greeting", c.cfg.Timeouts.Greeting, 2); err != nil {
		return c.routeErr("greeting", err)
	}
	if err := c.hello(); err != nil {
		return c.routeErr("EHLO", err)
	}
	if c.cfg.TLS == TLSOpportunistic || c.cfg.TLS == TLSRequired {
		if err := c.startTLS(ctx); err != nil {
			return err
		}
	}
	if c.cfg.Auth != nil {
		if err := c.auth(); err != nil {
			return c.routeErr("AUTH", err)
		}
	}
	return nil
}

// routeErr wraps a failed setup step; a 5xx reply is permanent.
func (c *Client) routeErr(op string, err error) error {
	var re *RouteError
	if errors.As(err, &re) {
		return err
	}
	var se *Error
	permanent := errors.As(err, &se) && se.Code/100 == 5
	return &RouteError{Server: c.server, Op: op, Permanent: permanent, Err: err}
}

// hello sends EHLO and falls back to HELO when EHLO is refused with 5xx
// (RFC 5321 §3.2).
func (c *Client) hello() error {
	r, err := c.cmd("EHLO", c.cfg.Timeouts.Command, 2, "EHLO "+c.cfg.LocalName)
	if err == nil {
		c.caps = parseCaps(r)
		return nil
	}
	if r == nil || r.Code/100 != 5 || c.broken {
		return err
	}
	if _, err := c.cmd("HELO", c.cfg.Timeouts.Command, 2, "HELO "+c.cfg.LocalName); err != nil {
		return err
	}
	c.caps = Caps{}
	return nil
}

func (c *Client) startTLS(ctx context.Context) error {
	if !c.caps.StartTLS {
		if c.cfg.TLS == TLSRequired {
			return &RouteError{Server: c.server, Op: "STARTTLS", Permanent: true,
				Err: errors.New("TLS is required and the server does not offer STARTTLS")}
		}
		return nil
	}
	r, err := c.cmd("STARTTLS", c.cfg.Timeouts.Command, 2, "STARTTLS")
	if err != nil {
		if r != nil && !c.broken && c.cfg.TLS == TLSOpportunistic {
			return nil // RFC 3207 §4: refused (454); go on without TLS
		}
		return c.routeErr("STARTTLS", err)
	}
	// Anything the server sent after its 220 came before TLS and must not
	// be read as if it came through it (CVE-2011-0411, the STARTTLS
	// command injection; here the reply side of it).
	if c.br.Buffered() > 0 {
		c.abort()
		return &RouteError{Server: c.server, Op: "STARTTLS",
			Err: fmt.Errorf("server sent data after its STARTTLS reply: %w", errProtocol)}
	}
	if err := c.handshake(ctx); err != nil {
		return err
	}
	if err := c.hello(); err != nil {
		return c.routeErr("EHLO", err)
	}
	return nil
}

func (c *Client) handshake(ctx context.Context) error {
	if err := c.setDeadline(c.cfg.Timeouts.Command); err != nil {
		return &RouteError{Server: c.server, Op: "TLS handshake", Err: err}
	}
	tc := tls.Client(c.conn, c.cfg.TLSConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.abort()
		var ve *tls.CertificateVerificationError
		return &RouteError{Server: c.server, Op: "TLS handshake", Permanent: errors.As(err, &ve), Err: err}
	}
	c.mu.Lock()
	c.conn = tc
	c.mu.Unlock()
	c.br.Reset(tc)
	c.trace("TLS %s, %s, server %q", tls.VersionName(tc.ConnectionState().Version),
		tls.CipherSuiteName(tc.ConnectionState().CipherSuite), c.cfg.TLSConfig.ServerName)
	return nil
}

// maxAuthSteps bounds a SASL exchange; no mechanism here needs more than
// three challenges.
const maxAuthSteps = 8

// auth runs a SASL exchange (RFC 4954 §4). Payloads are masked in traces.
func (c *Client) auth() error {
	if !c.isTLS() && !c.cfg.AllowInsecureAuth {
		return &RouteError{Server: c.server, Op: "AUTH", Permanent: true,
			Err: errors.New("refusing to send credentials without TLS (AllowInsecureAuth is false)")}
	}
	if len(c.caps.Auth) == 0 {
		return &RouteError{Server: c.server, Op: "AUTH", Permanent: true,
			Err: errors.New("credentials are configured and the server does not offer AUTH")}
	}
	sc, err := c.cfg.Auth(c.caps)
	if err != nil {
		return &RouteError{Server: c.server, Op: "AUTH", Permanent: true, Err: err}
	}
	mech, ir, err := sc.Start()
	if err != nil {
		return &RouteError{Server: c.server, Op: "AUTH", Permanent: true, Err: fmt.Errorf("starting %s: %w", mech, err)}
	}
	line := "AUTH " + mech
	switch {
	case ir == nil:
	case len(ir) == 0:
		line += " =" // RFC 4954 §4: an empty initial response
	default:
		line += " " + base64.StdEncoding.EncodeToString(ir)
	}
	secret := len("AUTH " + mech)
	for step := 0; ; step++ {
		r, err := c.cmdMasked("AUTH", c.cfg.Timeouts.Command, line, secret)
		if r == nil {
			return err
		}
		switch {
		case r.Code == 235:
			return nil
		case r.Code != 334:
			return &RouteError{Server: c.server, Op: "AUTH " + mech, Permanent: r.Code/100 == 5,
				Err: &Error{Reply: *r, Command: "AUTH", Server: c.server}}
		case step == maxAuthSteps:
			c.cancelAuth()
			return &RouteError{Server: c.server, Op: "AUTH " + mech, Permanent: true,
				Err: fmt.Errorf("more than %d challenges", maxAuthSteps)}
		}
		challenge, err := base64.StdEncoding.DecodeString(r.Text)
		if err != nil {
			c.cancelAuth()
			return &RouteError{Server: c.server, Op: "AUTH " + mech, Err: fmt.Errorf("challenge: %w: %w", errProtocol, err)}
		}
		resp, err := sc.Next(challenge)
		if err != nil {
			c.cancelAuth()
			return &RouteError{Server: c.server, Op: "AUTH " + mech, Permanent: true, Err: err}
		}
		line, secret = base64.StdEncoding.EncodeToString(resp), 0
	}
}

// cancelAuth ends an exchange with "*" (RFC 4954 §4).
func (c *Client) cancelAuth() {
	if r, _ := c.cmd("AUTH", c.cfg.Timeouts.Command, 5, "*"); r == nil {
		c.broken = true
	}
}

// Caps returns what the server announced (after STARTTLS, the second EHLO).
func (c *Client) Caps() Caps { return c.caps }

// TLSState returns the TLS connection state, and false without TLS.
func (c *Client) TLSState() (tls.ConnectionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tc, ok := c.conn.(*tls.Conn); ok {
		return tc.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

func (c *Client) isTLS() bool {
	_, ok := c.TLSState()
	return ok
}

// Broken reports whether the connection can no longer be used: an I/O
// error, a timeout or cancellation mid-step, a 421 reply (RFC 5321 §3.8),
// a malformed reply, or a body aborted before its end.
func (c *Client) Broken() bool { return c.broken || c.closed.Load() }

// Send runs one mail transaction (RFC 5321 §3.3): MAIL, one RCPT per
// recipient, DATA and the body streamed from body to EOF.
//
// With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out in one write
// and the replies are matched in order; without it, in lock step.
//
// The per-recipient rule, which Result.Outcome applies: a recipient whose
// RCPT got a negative reply has that reply as its outcome; every other
// recipient gets the returned error's outcome (Classify), or, when the
// error is nil, the outcome of Result.Data. In detail:
//
//   - A recipient address that cannot be sent (control characters, '<' or
//     '>', empty) gets a local 553 5.1.3 reply and is not sent; the others
//     go on.
//   - One rejected recipient never fails the others. When every recipient
//     is rejected, no body is sent, the transaction is reset with RSET and
//     the error is nil. If the server pipelined a 354 to DATA anyway, the
//     client sends a lone "." (an empty message, RFC 2920 §3.1 "the client
//     SMTP should send a single dot"), the server refuses it for want of
//     recipients, and Result.Data stays nil.
//   - A 452 to RCPT (RFC 5321 §4.5.3.1.10, too many recipients) is in
//     Result.Rcpts; without pipelining no further RCPT is sent after it and
//     the later recipients get that same 452 reply. Recipients with a 452
//     belong in the next transaction, which may run on the same connection
//     at once.
//   - A negative reply to MAIL or DATA, or to the final ".", is returned as
//     *Error and applies to every recipient not rejected at RCPT; a reply
//     to the final "." is also in Result.Data.
//   - A network error or ctx ending before the final "." went out: the
//     connection is broken, nothing was delivered, Classify says Retry.
//   - The final "." went out and no reply was read: the error wraps
//     ErrUnknownOutcome.
//   - A body line over 998 octets: the connection is closed before the
//     final "." (nothing partial is delivered) and the error wraps
//     ErrLineTooLong.
//
// The body is streamed, never held whole: line endings are normalized to
// CRLF and dot-stuffed on the way (see dotWriter). Envelope.Size, when
// set, is checked against the server's SIZE first.
func (c *Client) Send(ctx context.Context, env *Envelope, body io.Reader) (*Result, error) {
	if err := c.usable(); err != nil {
		return nil, err
	}
	if env == nil || len(env.Rcpts) == 0 {
		return nil, fmt.Errorf("smtp %s: envelope without recipients: %w", c.server, ErrInvalidEnvelope)
	}
	if body == nil {
		return nil, fmt.Errorf("smtp %s: nil message body: %w", c.server, ErrInvalidEnvelope)
	}
	mail, err := c.mailCommand(env)
	if err != nil {
		return nil, fmt.Errorf("smtp %s: %w", c.server, err)
	}
	res := &Result{Rcpts: make([]*Reply, len(env.Rcpts))}
	// The RCPT lines are built into one reused buffer: a 100-recipient
	// transaction then costs no allocation per recipient here.
	rcpts := c.pending[:0]
	lines := c.lines[:0]
	for i, r := range env.Rcpts {
		start := len(lines)
		var err error
		lines, err = c.appendRcpt(lines, r)
		if err != nil {
			lines = lines[:start]
			// A local reply, never sent: 553 "mailbox name not allowed"
			// (RFC 5321 §4.2.3), 5.1.3 "bad destination mailbox address
			// syntax" (RFC 3463 §3.2).
			res.Rcpts[i] = &Reply{Code: 553, Enhanced: EnhancedCode{5, 1, 3},
				Text: "not sent by blaster: " + err.Error()}
			continue
		}
		rcpts = append(rcpts, pendingRcpt{i: i, start: start, end: len(lines)})
	}
	c.pending, c.lines = rcpts, lines
	if len(rcpts) == 0 {
		return res, nil
	}
	unbind, err := c.bind(ctx)
	if err != nil {
		return res, fmt.Errorf("smtp %s: %w", c.server, err)
	}
	defer unbind()
	var ok bool
	if c.caps.Pipelining {
		ok, err = c.envelopePipelined(mail, rcpts, res)
	} else {
		ok, err = c.envelopeLockstep(mail, rcpts, res)
	}
	if !ok {
		return res, err
	}
	return res, c.data(body, res)
}

// pendingRcpt is recipient i's RCPT line, lines[start:end] of Client.lines.
type pendingRcpt struct {
	i, start, end int
}

// envelopePipelined sends MAIL, every RCPT and DATA in one write (RFC 2920
// §3.1: DATA is the last command of the group) and reads the replies in
// order. ok is true when the body is to follow.
func (c *Client) envelopePipelined(mail string, rcpts []pendingRcpt, res *Result) (ok bool, err error) {
	if err := c.setDeadline(c.cfg.Timeouts.Mail); err != nil {
		return false, c.fail("MAIL", err)
	}
	c.writeLine(mail)
	for _, p := range rcpts {
		c.writeBytes(c.lines[p.start:p.end])
	}
	c.writeLine("DATA")
	if err := c.bw.Flush(); err != nil {
		return false, c.fail("MAIL", err)
	}
	r, mailErr := c.reply("MAIL", c.cfg.Timeouts.Mail, 2)
	if r == nil || c.broken {
		return false, mailErr
	}
	accepted := 0
	for _, p := range rcpts {
		r, err := c.reply("RCPT", c.cfg.Timeouts.Rcpt, 2)
		if r == nil {
			return false, errors.Join(mailErr, err)
		}
		if mailErr != nil {
			if c.broken {
				return false, mailErr
			}
			continue // 503s that follow a refused MAIL say nothing of the recipient
		}
		res.Rcpts[p.i] = r
		if c.broken {
			return false, err
		}
		if r.Positive() {
			accepted++
		}
	}
	r, dataErr := c.reply("DATA", c.cfg.Timeouts.Data, 3)
	if r == nil || c.broken {
		return false, errors.Join(mailErr, dataErr)
	}
	if mailErr != nil || accepted == 0 {
		if r.Code == 354 {
			// RFC 2920 §3.1: DATA was accepted though no recipient was;
			// end the (empty) data with a single dot.
			c.writeLine(".")
			if err := c.bw.Flush(); err != nil {
				return false, errors.Join(mailErr, c.fail(".", err))
			}
			if r, err := c.reply(".", c.cfg.Timeouts.DataEnd, 5); r == nil {
				return false, errors.Join(mailErr, err)
			}
		}
		c.rset()
		return false, mailErr
	}
	if dataErr != nil {
		c.rset()
		return false, dataErr
	}
	return true, nil
}

// envelopeLockstep sends MAIL, each RCPT and DATA waiting for each reply.
func (c *Client) envelopeLockstep(mail string, rcpts []pendingRcpt, res *Result) (ok bool, err error) {
	if _, err := c.cmd("MAIL", c.cfg.Timeouts.Mail, 2, mail); err != nil {
		return false, err
	}
	accepted := 0
	for k, p := range rcpts {
		r, err := c.cmd("RCPT", c.cfg.Timeouts.Rcpt, 2, string(c.lines[p.start:p.end]))
		if r == nil {
			return false, err
		}
		res.Rcpts[p.i] = r
		if c.broken {
			return false, err
		}
		if r.Positive() {
			accepted++
		}
		if r.Code == 452 {
			// RFC 5321 §4.5.3.1.10: no more recipients in this
			// transaction. The server's 452 stands for the rest too: they
			// go in the next transaction.
			for _, rest := range rcpts[k+1:] {
				res.Rcpts[rest.i] = r
			}
			break
		}
	}
	if accepted == 0 {
		c.rset()
		return false, nil
	}
	if r, err := c.cmd("DATA", c.cfg.Timeouts.Data, 3, "DATA"); err != nil {
		if r != nil && !c.broken {
			c.rset()
		}
		return false, err
	}
	return true, nil
}

// data streams the body after a 354 and reads the reply to the final ".".
func (c *Client) data(body io.Reader, res *Result) error {
	if err := c.setDeadline(c.cfg.Timeouts.DataBlock); err != nil {
		return c.fail("DATA", err)
	}
	if c.buf == nil {
		c.buf = make([]byte, bufferSize)
	}
	dw := newDotWriter(c.bw)
	rd := &errReader{r: body}
	c.cw.block = c.cfg.Timeouts.DataBlock
	_, err := io.CopyBuffer(dw, rd, c.buf)
	if err == nil {
		err = dw.close()
	}
	if err == nil {
		// An error here means the last bytes, the end of the final
		// ".\r\n", never reached the kernel: the server cannot have seen
		// the end of the data, so nothing was delivered.
		err = c.bw.Flush()
	}
	c.cw.block = 0
	if err != nil {
		switch {
		case errors.Is(err, ErrLineTooLong):
			c.abort()
			return fmt.Errorf("smtp %s: message line %d: %w", c.server, dw.lines+1, ErrLineTooLong)
		case rd.err != nil:
			c.abort()
			return fmt.Errorf("smtp %s: reading the message body: %w", c.server, rd.err)
		}
		if r := c.salvageReply(err); r != nil {
			res.Data = r
			return &Error{Reply: *r, Command: ".", Server: c.server}
		}
		return c.fail("sending the message body", err)
	}
	c.trace("C: (message data: %d octets, %d lines)", dw.n, dw.lines)
	c.trace("C: .")
	r, err := c.reply(".", c.cfg.Timeouts.DataEnd, 2)
	if r == nil {
		return fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
	}
	res.Data = r
	return err
}

// salvageWait bounds the read of a reply after a failed write of message
// data; the reply, if any, is already in the socket's buffer.
const salvageWait = time.Second

// salvageReply looks for a negative reply the server sent before it closed
// the connection in the middle of the data (a server that refuses the
// message early, like smtp-sink -A, Postfix's smtpd on a size overrun or a
// filter). Like Postfix's smtp client, it prefers that reply to the bare
// write error: it says why. The connection stays broken either way.
func (c *Client) salvageReply(writeErr error) *Reply {
	var ne net.Error
	if errors.As(writeErr, &ne) && ne.Timeout() {
		return nil
	}
	c.broken = true
	if c.setDeadline(salvageWait) != nil {
		c.abort()
		return nil
	}
	r, err := readReply(c.br, c.traceFunc())
	c.abort()
	if err != nil || r.Code/100 == 2 || r.Code/100 == 3 {
		return nil
	}
	return r
}

// errReader records the body reader's error, to tell it from a write error.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// Reset sends RSET (RFC 5321 §4.1.1.5), ending any transaction.
func (c *Client) Reset(ctx context.Context) error {
	return c.simple(ctx, "RSET")
}

// Noop sends NOOP (RFC 5321 §4.1.1.9): a liveness check.
func (c *Client) Noop(ctx context.Context) error {
	return c.simple(ctx, "NOOP")
}

func (c *Client) simple(ctx context.Context, verb string) error {
	if err := c.usable(); err != nil {
		return err
	}
	unbind, err := c.bind(ctx)
	if err != nil {
		return fmt.Errorf("smtp %s: %s: %w", c.server, verb, err)
	}
	defer unbind()
	_, err = c.cmd(verb, c.cfg.Timeouts.Command, 2, verb)
	return err
}

// Quit sends QUIT (RFC 5321 §4.1.1.10) when the connection is healthy,
// then closes it.
func (c *Client) Quit(ctx context.Context) error {
	if c.closed.Load() {
		return nil
	}
	var err error
	if !c.broken {
		err = c.simple(ctx, "QUIT")
	}
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close closes the connection without QUIT. It may be called more than
// once, and from another goroutine than the one running a transaction:
// that transaction then fails with a network error (Retry).
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.conn.Close(); err != nil && !c.broken {
		return fmt.Errorf("smtp %s: closing: %w", c.server, err)
	}
	return nil
}

func (c *Client) usable() error {
	if c.closed.Load() || c.broken {
		return fmt.Errorf("smtp %s: connection closed or broken, not reusable", c.server)
	}
	return nil
}

// bind ties ctx to the connection for one call: when ctx ends, the
// connection's deadline is set in the past so any blocked read or write
// returns at once, and deadlines set later never exceed ctx's deadline.
func (c *Client) bind(ctx context.Context) (unbind func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dl, _ := ctx.Deadline()
	c.mu.Lock()
	c.ctx, c.canceled, c.deadline = ctx, false, dl
	c.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.canceled = true
		c.conn.SetDeadline(time.Unix(1, 0))
	})
	return func() {
		stop()
		c.mu.Lock()
		c.ctx = nil
		c.mu.Unlock()
	}, nil
}

// setDeadline gives the next reads and writes d, capped by ctx's deadline.
func (c *Client) setDeadline(d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.canceled {
		return context.Cause(c.ctx)
	}
	t := time.Now().Add(d)
	if !c.deadline.IsZero() && c.deadline.Before(t) {
		t = c.deadline
	}
	return c.conn.SetDeadline(t)
}

// fail marks the connection broken after an I/O error in step op and
// returns the error, naming the server, the step and, when that was the
// cause, the ended ctx.
func (c *Client) fail(op string, err error) error {
	c.abort()
	c.mu.Lock()
	ctx := c.ctx
	c.mu.Unlock()
	if ctx != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
	}
	return fmt.Errorf("smtp %s: %s: %w", c.server, op, err)
}

// abort closes the connection at once: nothing more may go out on it.
func (c *Client) abort() {
	c.broken = true
	c.mu.Lock()
	c.conn.Close()
	c.mu.Unlock()
}

// rset ends a transaction that was left open; a failure only breaks the
// connection, the transaction's outcome is already known.
func (c *Client) rset() {
	if r, err := c.cmd("RSET", c.cfg.Timeouts.Command, 2, "RSET"); err != nil && r != nil {
		c.broken = true
	}
}

// cmd is the choke point of a lock-step protocol step, after
// emersion/go-smtp's cmd(): set the step's deadline, write the command,
// flush, read the reply and turn an unexpected one into *Error. want is
// the expected class: 2 (positive completion) or 3 (intermediate). The
// reply is nil only when none was read (an I/O or protocol error, and the
// connection is broken).
func (c *Client) cmd(name string, timeout time.Duration, want int, line string) (*Reply, error) {
	return c.cmdMasked(name, timeout, line, -1, want)
}

func (c *Client) cmdMasked(name string, timeout time.Duration, line string, secretFrom int, want ...int) (*Reply, error) {
	if err := c.setDeadline(timeout); err != nil {
		return nil, c.fail(name, err)
	}
	if strings.ContainsAny(line, "\r\n") {
		// Never reached with the addresses Send checks; a last guard
		// against command injection.
		return nil, fmt.Errorf("smtp %s: %s: command contains CR or LF: %w", c.server, name, ErrInvalidEnvelope)
	}
	c.writeMasked(line, secretFrom)
	if err := c.bw.Flush(); err != nil {
		return nil, c.fail(name, err)
	}
	w := 0
	if len(want) > 0 {
		w = want[0]
	}
	return c.reply(name, timeout, w)
}

// reply reads one reply for step name. want 0 accepts any code.
func (c *Client) reply(name string, timeout time.Duration, want int) (*Reply, error) {
	// A reply already whole in the buffer needs no read, so no deadline:
	// pipelined replies usually arrive together, and a deadline costs a
	// timer update.
	if buffered, _ := c.br.Peek(c.br.Buffered()); bytes.IndexByte(buffered, '\n') < 0 {
		if err := c.setDeadline(timeout); err != nil {
			return nil, c.fail(name, err)
		}
	}
	r, err := readReplyCached(c.br, c.traceFunc(), &c.cache)
	if err != nil {
		return nil, c.fail(name, err)
	}
	if r.Code == 421 {
		// RFC 5321 §3.8: the server is closing the connection.
		c.abort()
	}
	if want != 0 && r.Code/100 != want {
		return r, &Error{Reply: *r, Command: name, Server: c.server}
	}
	return r, nil
}

// writeLine buffers one command line; the caller flushes.
func (c *Client) writeLine(line string) { c.writeMasked(line, -1) }

// writeBytes is writeLine for a line held in a byte slice.
func (c *Client) writeBytes(line []byte) {
	if c.cfg.Trace != nil {
		fmt.Fprintf(c.cfg.Trace, "C: %s\n", line)
	}
	c.bw.Write(line)
	c.bw.WriteString("\r\n")
}

// writeMasked buffers one command line; in the trace, the line from octet
// secretFrom on is masked (secretFrom < 0: nothing is).
func (c *Client) writeMasked(line string, secretFrom int) {
	if c.cfg.Trace != nil {
		shown := line
		if secretFrom >= 0 && secretFrom < len(line) {
			shown = line[:secretFrom] + " ********"
			if secretFrom == 0 {
				shown = "********"
			}
		}
		fmt.Fprintf(c.cfg.Trace, "C: %s\n", shown)
	}
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
}

func (c *Client) traceFunc() func(string) {
	if c.cfg.Trace == nil {
		return nil
	}
	return func(l string) { fmt.Fprintf(c.cfg.Trace, "S: %s\n", l) }
}

func (c *Client) trace(format string, args ...any) {
	if c.cfg.Trace != nil {
		fmt.Fprintf(c.cfg.Trace, format+"\n", args...)
	}
}

// connWriter is the write buffer's sink. During the data phase (block > 0)
// each write gets its own deadline (RFC 5321 §4.5.3.2.5, the data block
// timeout).
type connWriter struct {
	c     *Client
	block time.Duration
}

func (w *connWriter) Write(p []byte) (int, error) {
	if w.block > 0 {
		if err := w.c.setDeadline(w.block); err != nil {
			return 0, err
		}
	}
	w.c.mu.Lock()
	conn := w.c.conn
	w.c.mu.Unlock()
	return conn.Write(p)
}

// mailCommand builds MAIL FROM with the parameters the server announced.
func (c *Client) mailCommand(env *Envelope) (string, error) {
	if env.From != "" && !validAddr(env.From) {
		return "", fmt.Errorf("reverse path %q: %w", env.From, ErrInvalidEnvelope)
	}
	utf8 := env.UTF8 || !isASCII(env.From)
	for _, r := range env.Rcpts {
		utf8 = utf8 || !isASCII(r.Addr)
	}
	if utf8 && !c.caps.SMTPUTF8 {
		return "", ErrSMTPUTF8Unsupported
	}
	if env.Size > 0 && c.caps.Size > 0 && env.Size > c.caps.Size {
		return "", fmt.Errorf("%d octets, limit %d: %w", env.Size, c.caps.Size, ErrMessageTooLarge)
	}
	var b strings.Builder
	b.WriteString("MAIL FROM:<")
	b.WriteString(env.From)
	b.WriteByte('>')
	if _, ok := c.caps.Extension("SIZE"); ok && env.Size > 0 {
		b.WriteString(" SIZE=") // RFC 1870 §3
		b.WriteString(strconv.FormatInt(env.Size, 10))
	}
	if env.EightBit && c.caps.EightBitMIME {
		b.WriteString(" BODY=8BITMIME") // RFC 6152 §2
	}
	if utf8 {
		b.WriteString(" SMTPUTF8") // RFC 6531 §3.4
	}
	if c.caps.DSN {
		if env.Ret != "" {
			ret := strings.ToUpper(env.Ret)
			if ret != "FULL" && ret != "HDRS" {
				return "", fmt.Errorf("DSN RET %q: want FULL or HDRS: %w", env.Ret, ErrInvalidEnvelope)
			}
			b.WriteString(" RET=" + ret) // RFC 3461 §4.3
		}
		if env.EnvID != "" {
			b.WriteString(" ENVID=" + xtext(env.EnvID)) // RFC 3461 §4.4
		}
	}
	return b.String(), nil
}

// appendRcpt appends the RCPT TO line for r, without CRLF, with the DSN
// parameters when the server announced DSN.
func (c *Client) appendRcpt(dst []byte, r Recipient) ([]byte, error) {
	if r.Addr == "" || !validAddr(r.Addr) {
		return dst, fmt.Errorf("recipient %q: %w", r.Addr, ErrInvalidEnvelope)
	}
	dst = append(dst, "RCPT TO:<"...)
	dst = append(dst, r.Addr...)
	dst = append(dst, '>')
	if !c.caps.DSN {
		return dst, nil
	}
	if len(r.Notify) > 0 {
		// RFC 3461 §4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY.
		dst = append(dst, " NOTIFY="...)
		for k, n := range r.Notify {
			n = strings.ToUpper(n)
			switch {
			case n == "NEVER" && len(r.Notify) > 1:
				return dst, fmt.Errorf("recipient %q: NOTIFY=NEVER combined with others: %w", r.Addr, ErrInvalidEnvelope)
			case n == "NEVER", n == "SUCCESS", n == "FAILURE", n == "DELAY":
			default:
				return dst, fmt.Errorf("recipient %q: NOTIFY %q: %w", r.Addr, n, ErrInvalidEnvelope)
			}
			if k > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, n...)
		}
	}
	if r.ORcpt != "" {
		dst = appendORcpt(dst, r.ORcpt)
	}
	return dst, nil
}

// appendORcpt appends the ORCPT parameter for addr (RFC 3461 §4.2): type
// rfc822 and xtext for an ASCII address; type utf-8 and utf-8-addr-xtext
// for any other (RFC 6533 §3). That form is ASCII too, so it goes out
// whether or not the transaction uses SMTPUTF8, and the server's DSN can
// name the address as it was given. An address that is not valid UTF-8,
// or holds an ASCII control character (no Mailbox of RFC 6531 does, and
// HEXPOINT has no form for most of them), has no utf-8 form: it goes
// without ORCPT, rather than with a value a server would refuse, and a
// bounce for it is matched on its Final-Recipient.
func appendORcpt(dst []byte, addr string) []byte {
	if isASCII(addr) {
		dst = append(dst, " ORCPT=rfc822;"...)
		return appendXtext(dst, addr)
	}
	if !utf8.ValidString(addr) {
		return dst
	}
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c < 0x20 || c == 0x7f {
			return dst
		}
	}
	dst = append(dst, " ORCPT=utf-8;"...)
	return appendUTF8AddrXtext(dst, addr)
}

// maxPathOctets is the longest reverse or forward path (RFC 5321
// §4.5.3.1.3: 256 octets including the angle brackets).
const maxPathOctets = 254

// validAddr rejects what could break out of "<...>" or the command line.
func validAddr(a string) bool {
	if len(a) > maxPathOctets {
		return false
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < 0x20 || c == 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// xtext encodes s per RFC 3461 §4: octets "!" to "~" except "+" and "="
// as themselves, everything else as "+" and two upper-case hex digits.
func xtext(s string) string { return string(appendXtext(nil, s)) }

func appendXtext(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			dst = append(dst, c)
			continue
		}
		dst = append(dst, '+', upperHex[c>>4], upperHex[c&0xf])
	}
	return dst
}

const upperHex = "0123456789ABCDEF"

// appendUTF8AddrXtext encodes the valid UTF-8 s as utf-8-addr-xtext (RFC
// 6533 §3): a QCHAR ("!" to "~" except "+", "=" and "\") as itself, any
// other character as EmbeddedUnicodeChar, "\x{" HEXPOINT "}", where
// HEXPOINT is the code point in upper-case hex, two digits at least and no
// leading zero beyond them ("\x{F6}", "\x{2B}", "\x{4F8B}").
func appendUTF8AddrXtext(dst []byte, s string) []byte {
	for _, r := range s {
		if r >= '!' && r <= '~' && r != '+' && r != '=' && r != '\\' {
			dst = append(dst, byte(r))
			continue
		}
		dst = append(dst, '\\', 'x', '{')
		n := 2 // hex digits
		for r>>(4*n) != 0 {
			n++
		}
		for shift := 4 * (n - 1); shift >= 0; shift -= 4 {
			dst = append(dst, upperHex[(r>>shift)&0xf])
		}
		dst = append(dst, '}')
	}
	return dst
}
