package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/transport"
)

// probeOptions is one `blaster probe` run. The lookups and the dialer are
// fields so tests point them at loopback servers.
type probeOptions struct {
	target             string // HOST[:PORT]; "" with mx
	mx                 string // domain whose MX hosts are probed
	port               int    // port for --mx targets and a HOST without one; 0: by mode
	startTLS, implicit bool
	user, auth         string
	passwordFile       string
	sendTo, from       string
	caFile, serverName string
	insecureSkipVerify bool
	localName          string
	timeout            time.Duration

	getenv     func(string) string
	lookupMX   func(ctx context.Context, domain string) ([]*net.MX, error)
	lookupHost func(ctx context.Context, host string) ([]string, error)
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
}

func newProbeCmd(a *app) *cobra.Command {
	o := probeOptions{getenv: os.Getenv}
	cmd := &cobra.Command{
		Use:   "probe HOST[:PORT] | probe --mx DOMAIN",
		Short: "Diagnose an SMTP server: conversation, capabilities, TLS, certificates, AUTH, timings",
		Long: `probe talks to an SMTP server the way a person would with telnet, and prints
the whole conversation (credentials masked), the capabilities, the TLS version,
cipher and certificate chain with its verification result, the AUTH result and
the time of each step: "is it my code or the server?".

Without a port: 465 with --tls, 587 with --starttls or --user, else 25.
With --mx, DOMAIN's MX hosts are resolved and each is probed in preference
order, on port 25 (or --port).
The password comes from $BLASTER_RELAY_PASSWORD or --password-file, never argv.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.target = args[0]
			}
			if (o.target == "") == (o.mx == "") {
				return errors.New("give either HOST[:PORT] or --mx DOMAIN")
			}
			if o.startTLS && o.implicit {
				return errors.New("give --starttls or --tls, not both")
			}
			return runProbe(cmd.Context(), a.stdout, o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.startTLS, "starttls", false, "require STARTTLS (RFC 3207); without --starttls or --tls, STARTTLS is used when offered")
	f.BoolVar(&o.implicit, "tls", false, "implicit TLS from the first byte (RFC 8314, port 465)")
	f.StringVar(&o.user, "user", "", "authenticate as this user (password from $BLASTER_RELAY_PASSWORD or --password-file)")
	f.StringVar(&o.auth, "auth", "", "SASL mechanism: plain, login, cram-md5, xoauth2, oauthbearer (default: the best offered)")
	f.StringVar(&o.passwordFile, "password-file", "", "file holding the password")
	f.StringVar(&o.mx, "mx", "", "probe each MX host of this domain, in preference order")
	f.IntVar(&o.port, "port", 0, "port for --mx hosts and for a HOST given without one")
	f.StringVar(&o.sendTo, "send-to", "", "send a short test message to this address")
	f.StringVar(&o.from, "from", "", "reverse path of the test message (default probe@ the EHLO name)")
	f.StringVar(&o.caFile, "ca", "", "PEM file of CA certificates to verify the server with (default the system's)")
	f.StringVar(&o.serverName, "server-name", "", "name the certificate must be valid for (default the host)")
	f.BoolVar(&o.insecureSkipVerify, "insecure-skip-verify", false, "go on when the certificate does not verify (the result is still printed)")
	f.StringVar(&o.localName, "helo", "", "name to send in EHLO (default the host name)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "time allowed for each protocol step")
	return cmd
}

// runProbe probes o.target, or each MX host of o.mx, writing a report to
// out. It returns an error when no server could be probed successfully.
func runProbe(ctx context.Context, out io.Writer, o probeOptions) error {
	if o.getenv == nil {
		o.getenv = os.Getenv
	}
	if o.lookupMX == nil {
		o.lookupMX = net.DefaultResolver.LookupMX
	}
	if o.lookupHost == nil {
		o.lookupHost = net.DefaultResolver.LookupHost
	}
	if o.dial == nil {
		var d net.Dialer
		o.dial = d.DialContext
	}
	if o.localName == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			o.localName = h
		} else {
			o.localName = "localhost"
		}
	}
	password, err := probePassword(o)
	if err != nil {
		return err
	}
	w := &stampWriter{w: out, start: time.Now()}

	if o.mx == "" {
		host, port, err := splitTarget(o.target, o.defaultPort())
		if err != nil {
			return err
		}
		return probeOne(ctx, w, o, host, net.JoinHostPort(host, port), password)
	}

	port := o.port
	if port == 0 {
		port = transport.DefaultMXPort
	}
	hosts, err := probeResolveMX(ctx, w, o)
	if err != nil {
		return err
	}
	var errs []error
	ok := false
	for _, h := range hosts {
		addrs, err := o.lookupHost(ctx, h)
		if err != nil {
			w.printf("MX %s: resolving: %v", h, err)
			errs = append(errs, fmt.Errorf("MX %s: %w", h, err))
			continue
		}
		w.printf("MX %s has addresses %s", h, strings.Join(addrs, ", "))
		for _, addr := range addrs {
			oo := o
			if ok { // the test message goes once, through the first MX that works
				oo.sendTo = ""
			}
			if err := probeOne(ctx, w, oo, h, net.JoinHostPort(addr, strconv.Itoa(port)), password); err != nil {
				errs = append(errs, err)
				continue
			}
			ok = true
		}
	}
	if !ok {
		return fmt.Errorf("probe: no MX host of %s could be probed: %w", o.mx, errors.Join(errs...))
	}
	return nil
}

// probePassword reads the password for --user from --password-file, else
// from $BLASTER_RELAY_PASSWORD: never from argv.
func probePassword(o probeOptions) (string, error) {
	if o.user == "" {
		return "", nil
	}
	if o.passwordFile != "" {
		b, err := os.ReadFile(o.passwordFile)
		if err != nil {
			return "", fmt.Errorf("probe: reading --password-file: %w", err)
		}
		if p := strings.TrimRight(string(b), "\r\n"); p != "" {
			return p, nil
		}
		return "", fmt.Errorf("probe: --password-file %s is empty", o.passwordFile)
	}
	if p := o.getenv(transport.PasswordEnv); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("probe: --user %s needs a password: set %s or give --password-file", o.user, transport.PasswordEnv)
}

func (o probeOptions) defaultPort() int {
	switch {
	case o.port != 0:
		return o.port
	case o.implicit:
		return transport.SubmissionsPort
	case o.startTLS || o.user != "":
		return transport.SubmissionPort
	}
	return transport.DefaultMXPort
}

// splitTarget splits HOST[:PORT], adding the default port.
func splitTarget(target string, defPort int) (host, port string, err error) {
	if h, p, err := net.SplitHostPort(target); err == nil {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", "", fmt.Errorf("probe %s: port %q: want 1 to 65535", target, p)
		}
		return h, p, nil
	}
	host = strings.TrimSuffix(strings.TrimPrefix(target, "["), "]")
	if host == "" {
		return "", "", fmt.Errorf("probe %q: no host", target)
	}
	return host, strconv.Itoa(defPort), nil
}

// probeResolveMX prints and returns o.mx's MX hosts in preference order
// (ties in DNS order: a probe shows, it does not balance load).
func probeResolveMX(ctx context.Context, w *stampWriter, o probeOptions) ([]string, error) {
	mxs, err := o.lookupMX(ctx, o.mx)
	var de *net.DNSError
	if len(mxs) == 0 {
		if err != nil && !(errors.As(err, &de) && de.IsNotFound) {
			return nil, fmt.Errorf("probe: MX lookup for %s: %w", o.mx, err)
		}
		w.printf("%s has no MX record: its own address is the implicit MX (RFC 5321 §5.1)", o.mx)
		return []string{o.mx}, nil
	}
	slices.SortStableFunc(mxs, func(a, b *net.MX) int { return cmp.Compare(a.Pref, b.Pref) })
	var hosts []string
	for _, mx := range mxs {
		h := strings.TrimSuffix(mx.Host, ".")
		w.printf("MX %d %s", mx.Pref, mx.Host)
		if h != "" {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("probe: %s has a null MX (RFC 7505): it accepts no mail", o.mx)
	}
	return hosts, nil
}

// probeOne probes one server at addr, whose name (for the certificate and
// the report) is host.
func probeOne(ctx context.Context, w *stampWriter, o probeOptions, host, addr, password string) error {
	mode := smtp.TLSOpportunistic
	switch {
	case o.implicit:
		mode = smtp.TLSImplicit
	case o.startTLS:
		mode = smtp.TLSRequired
	}
	serverName := cmp.Or(o.serverName, host)
	w.printf("== %s (%s), TLS %s, certificate name %s", addr, host, mode, serverName)

	tv, err := newTLSVerifier(serverName, o.caFile, o.insecureSkipVerify)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	cfg := smtp.Config{
		LocalName: o.localName,
		TLS:       mode,
		TLSConfig: tv.config(),
		Trace:     w,
		Timeouts: smtp.Timeouts{Greeting: o.timeout, Mail: o.timeout, Rcpt: o.timeout, Data: o.timeout,
			DataBlock: o.timeout, DataEnd: o.timeout, Command: o.timeout},
		DialFunc: func(ctx context.Context, network, a string) (net.Conn, error) {
			w.printf("connecting to %s", a)
			c, err := o.dial(ctx, network, a)
			if err == nil {
				w.printf("connected (TCP) from %s", c.LocalAddr())
			}
			return c, err
		},
	}
	if o.user != "" {
		cfg.Auth = smtp.NewAuth(o.auth, o.user, password)
	}

	c, err := smtp.Dial(ctx, addr, cfg)
	tv.report(w)
	if err != nil {
		var re *smtp.RouteError
		if errors.As(err, &re) && strings.HasPrefix(re.Op, "AUTH") {
			w.printf("auth as %s: FAILED: %v", o.user, re.Err)
		}
		w.printf("FAILED: %v", err)
		return err
	}
	defer c.Close()
	probeCaps(w, c.Caps())
	if cs, ok := c.TLSState(); ok {
		w.printf("TLS: %s, cipher %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
	} else {
		w.printf("TLS: none: the conversation is in plain text")
	}
	if o.user != "" {
		w.printf("auth as %s: ok", o.user)
	}

	if o.sendTo != "" {
		if err := probeSend(ctx, w, c, o); err != nil {
			w.printf("FAILED: %v", err)
			return err
		}
	}
	if err := c.Quit(ctx); err != nil {
		w.printf("QUIT: %v", err)
	}
	w.printf("done")
	return nil
}

func probeCaps(w *stampWriter, caps smtp.Caps) {
	if !caps.ESMTP {
		w.printf("capabilities: none (HELO: the server does not speak ESMTP)")
		return
	}
	var list []string
	add := func(on bool, name string) {
		if on {
			list = append(list, name)
		}
	}
	add(caps.Pipelining, "PIPELINING")
	add(caps.EightBitMIME, "8BITMIME")
	add(caps.SMTPUTF8, "SMTPUTF8")
	add(caps.DSN, "DSN")
	add(caps.EnhancedStatusCodes, "ENHANCEDSTATUSCODES")
	add(caps.StartTLS, "STARTTLS")
	add(caps.Chunking, "CHUNKING")
	if caps.Size > 0 {
		list = append(list, "SIZE "+strconv.FormatInt(caps.Size, 10))
	}
	if len(caps.Auth) > 0 {
		list = append(list, "AUTH "+strings.Join(caps.Auth, " "))
	}
	w.printf("capabilities: %s", strings.Join(list, ", "))
}

func probeSend(ctx context.Context, w *stampWriter, c *smtp.Client, o probeOptions) error {
	from := cmp.Or(o.from, "probe@"+o.localName)
	msg := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: blaster probe\r\nDate: %s\r\n"+
		"Message-ID: <probe.%d@%s>\r\n\r\nA test message sent by blaster probe.\r\n",
		from, o.sendTo, time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), o.localName)
	env := &smtp.Envelope{From: from, Rcpts: []smtp.Recipient{{Addr: o.sendTo}}, Size: int64(len(msg))}
	res, err := c.Send(ctx, env, strings.NewReader(msg))
	if res != nil {
		for i, r := range res.Rcpts {
			w.printf("recipient %s: %s", env.Rcpts[i].Addr, r)
		}
		if res.Data != nil {
			w.printf("message: %s", res.Data)
		}
	}
	if err != nil {
		return err
	}
	if res == nil || !res.Data.Positive() {
		return fmt.Errorf("test message to %s not accepted", o.sendTo)
	}
	w.printf("test message to %s accepted", o.sendTo)
	return nil
}

// tlsVerifier verifies the server's chain itself (the documented
// VerifyConnection pattern), so the chain and the verification result can
// be printed even when verification fails. Unless insecure is set, a
// failure still aborts the handshake: nothing is sent to an unverified
// server.
type tlsVerifier struct {
	serverName string
	roots      *x509.CertPool // nil: the system's
	insecure   bool

	mu     sync.Mutex
	seen   bool
	chain  []*x509.Certificate
	result error
}

func newTLSVerifier(serverName, caFile string, insecure bool) (*tlsVerifier, error) {
	tv := &tlsVerifier{serverName: serverName, insecure: insecure}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		tv.roots = x509.NewCertPool()
		if !tv.roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", caFile)
		}
	}
	return tv, nil
}

func (tv *tlsVerifier) config() *tls.Config {
	return &tls.Config{
		ServerName: tv.serverName,
		MinVersion: tls.VersionTLS12,
		// Verification is done in VerifyConnection, with the same rules
		// as crypto/tls's own (x509.Certificate.Verify for the name).
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			err := tv.verify(cs.PeerCertificates)
			tv.mu.Lock()
			tv.seen, tv.chain, tv.result = true, cs.PeerCertificates, err
			tv.mu.Unlock()
			if err != nil && !tv.insecure {
				return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
			}
			return nil
		},
	}
}

func (tv *tlsVerifier) verify(chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("the server sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		DNSName:       tv.serverName,
		Roots:         tv.roots,
		Intermediates: inter,
	})
	return err
}

// report prints the chain and the verification result, if TLS started.
func (tv *tlsVerifier) report(w *stampWriter) {
	tv.mu.Lock()
	defer tv.mu.Unlock()
	if !tv.seen {
		return
	}
	for i, c := range tv.chain {
		w.printf("certificate %d: subject %q, issuer %q, valid %s to %s",
			i, c.Subject.String(), c.Issuer.String(),
			c.NotBefore.UTC().Format(time.DateOnly), c.NotAfter.UTC().Format(time.DateOnly))
		if len(c.DNSNames) > 0 || len(c.IPAddresses) > 0 {
			names := slices.Clone(c.DNSNames)
			for _, ip := range c.IPAddresses {
				names = append(names, ip.String())
			}
			w.printf("certificate %d: names %s", i, strings.Join(names, ", "))
		}
	}
	switch {
	case tv.result == nil:
		w.printf("certificate verification: ok for %s", tv.serverName)
	case tv.insecure:
		w.printf("certificate verification: FAILED for %s: %v (going on: --insecure-skip-verify)", tv.serverName, tv.result)
	default:
		w.printf("certificate verification: FAILED for %s: %v", tv.serverName, tv.result)
	}
}

// stampWriter prefixes each line with the time since the probe started:
// the time of each step.
type stampWriter struct {
	w     io.Writer
	start time.Time

	mu      sync.Mutex
	partial []byte
}

func (s *stampWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(s.w, "%9.1fms  %s\n", float64(time.Since(s.start).Microseconds())/1000, s.partial[:i])
		s.partial = s.partial[i+1:]
	}
	return len(p), nil
}

func (s *stampWriter) printf(format string, args ...any) {
	fmt.Fprintf(s, format+"\n", args...)
}
