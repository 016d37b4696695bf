package smtptest

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
)

// Options configure a Server. The zero value is a plain server on
// 127.0.0.1:0 without AUTH that accepts every message.
type Options struct {
	// Domain is the name in the greeting and the EHLO reply. Default
	// "mx.example.test".
	Domain string
	// Listen is the address to listen on. Default "127.0.0.1:0".
	Listen string
	// TLS, when set, is the server's TLS configuration (CA.ServerConfig):
	// STARTTLS is offered, or, with ImplicitTLS, every connection starts
	// with a TLS handshake (port 465 style).
	TLS         *tls.Config
	ImplicitTLS bool
	// User and Pass, when User is set, are the only credentials AUTH PLAIN
	// and LOGIN accept (offered only over TLS, as real servers do), and
	// MAIL is refused before a successful AUTH (RFC 4954 §6: 530 5.7.0).
	User, Pass string

	// GreetErr, when set, is returned for every new session: the reply to
	// EHLO. A server answering 421 at once, say.
	GreetErr error
	// MailErr, when set, is the reply to every (authenticated) MAIL.
	MailErr error
	// RcptErr, when set, is asked for each RCPT: a non-nil error is its
	// reply and the recipient is not recorded.
	RcptErr func(to string) error

	// DiscardBodies records only each message's size, not its body, so a
	// test can send large messages without the server holding them.
	DiscardBodies bool
	// OnMessage, when set, is called with each accepted message after it
	// was recorded, on the connection's goroutine.
	OnMessage func(Message)
}

// Message is one message a Server accepted.
type Message struct {
	From  string
	Opts  gosmtp.MailOptions // MAIL parameters (SIZE, BODY, SMTPUTF8, RET, ENVID)
	Rcpts []string           // accepted recipients, in order
	// RcptOpts are the RCPT parameters (NOTIFY, ORCPT) of each of Rcpts.
	RcptOpts []gosmtp.RcptOptions
	Body     string // as received after dot-unstuffing; "" with DiscardBodies
	Size     int64  // octets of the body
	TLS      bool   // the transaction ran over TLS
	User     string // the authenticated user; "" without AUTH
}

// Server is an in-process go-smtp server for tests: a modern MTA's
// extensions (PIPELINING, 8BITMIME, SIZE of 64 MiB, LIMITS RCPTMAX=200,
// SMTPUTF8, DSN, ENHANCEDSTATUSCODES, CHUNKING) and the behaviour Options
// script. It records the messages it accepted, counts its connections,
// successful logins and the commands it read, and stops when the test
// ends.
type Server struct {
	// Addr is the host:port the server listens on.
	Addr string

	opts Options

	mu       sync.Mutex
	accepted int
	conns    []net.Conn
	verbs    map[string]int
	logins   int
	msgs     []Message
}

// StartServer runs a Server until t ends.
func StartServer(t testing.TB, o Options) *Server {
	t.Helper()
	if o.Domain == "" {
		o.Domain = "mx.example.test"
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	s := &Server{opts: o, verbs: make(map[string]int)}
	srv := gosmtp.NewServer(gosmtp.BackendFunc(s.newSession))
	srv.Domain = o.Domain
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 200
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.TLSConfig = o.TLS
	srv.ErrorLog = discardLogger{}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		t.Fatalf("listening on %s: %v", o.Listen, err)
	}
	s.Addr = ln.Addr().String()
	var l net.Listener = &listener{Listener: ln, s: s, countVerbs: !o.ImplicitTLS}
	if o.ImplicitTLS {
		l = tls.NewListener(l, o.TLS)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return s
}

// Messages returns the messages accepted so far, in order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Connections returns how many connections the server accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Logins returns how many AUTH exchanges succeeded.
func (s *Server) Logins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins
}

// Count returns how many times the server read the command verb (upper
// case: "RSET", "NOOP", "QUIT"). Only commands read in clear text count:
// none on an ImplicitTLS server, none after STARTTLS.
func (s *Server) Count(verb string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verbs[verb]
}

// WaitCount polls until the server has read verb want times, for at most
// ten seconds, and fails t unless it then read it exactly want times.
func (s *Server) WaitCount(t testing.TB, verb string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Count(verb) < want {
		if time.Now().After(deadline) {
			t.Fatalf("server read %s %d times, want %d", verb, s.Count(verb), want)
		}
		time.Sleep(2 * time.Millisecond) // polling with a deadline
	}
	if got := s.Count(verb); got != want {
		t.Fatalf("server read %s %d times, want %d", verb, got, want)
	}
}

// CutAll closes every connection the server accepted, from its side, as a
// server restart or a NAT timeout would.
func (s *Server) CutAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		_ = c.Close()
	}
}

func (s *Server) newSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	if s.opts.GreetErr != nil {
		return nil, s.opts.GreetErr
	}
	_, isTLS := c.TLSConnectionState()
	return &session{s: s, tls: isTLS}, nil
}

// session is one SMTP session: go-smtp starts a new one after STARTTLS.
type session struct {
	s    *Server
	tls  bool
	user string
	cur  Message
}

func (ss *session) AuthMechanisms() []string {
	if ss.s.opts.User == "" {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.s.opts.User == "" {
		return nil, gosmtp.ErrAuthUnsupported
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return ss.login(user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: ss.login}, nil
	}
	return nil, gosmtp.ErrAuthUnknownMechanism
}

// login checks credentials (RFC 4954 §6: 535 5.7.8 for wrong ones).
func (ss *session) login(user, pass string) error {
	if user != ss.s.opts.User || pass != ss.s.opts.Pass {
		return &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 8}, Message: "authentication credentials invalid"}
	}
	ss.user = user
	ss.s.mu.Lock()
	ss.s.logins++
	ss.s.mu.Unlock()
	return nil
}

func (ss *session) Mail(from string, opts *gosmtp.MailOptions) error {
	if ss.s.opts.User != "" && ss.user == "" {
		return &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	}
	if ss.s.opts.MailErr != nil {
		return ss.s.opts.MailErr
	}
	ss.cur = Message{From: from, TLS: ss.tls, User: ss.user}
	if opts != nil {
		ss.cur.Opts = *opts
	}
	return nil
}

func (ss *session) Rcpt(to string, opts *gosmtp.RcptOptions) error {
	if ss.s.opts.RcptErr != nil {
		if err := ss.s.opts.RcptErr(to); err != nil {
			return err
		}
	}
	ss.cur.Rcpts = append(ss.cur.Rcpts, to)
	var o gosmtp.RcptOptions
	if opts != nil {
		o = *opts
	}
	ss.cur.RcptOpts = append(ss.cur.RcptOpts, o)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	m := ss.cur
	if ss.s.opts.DiscardBodies {
		n, err := io.Copy(io.Discard, r)
		if err != nil {
			return err
		}
		m.Size = n
	} else {
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		m.Body, m.Size = string(b), int64(len(b))
	}
	m.Rcpts = append([]string(nil), m.Rcpts...)
	m.RcptOpts = append([]gosmtp.RcptOptions(nil), m.RcptOpts...)
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, m)
	ss.s.mu.Unlock()
	if ss.s.opts.OnMessage != nil {
		ss.s.opts.OnMessage(m)
	}
	return nil
}

func (ss *session) Reset()        { ss.cur = Message{} }
func (ss *session) Logout() error { return nil }

// loginServer is the server side of LOGIN, which go-sasl lacks.
type loginServer struct {
	check func(user, pass string) error
	user  *string
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch {
	case l.user == nil && resp == nil:
		return []byte("Username:"), false, nil
	case l.user == nil:
		u := string(resp)
		l.user = &u
		return []byte("Password:"), false, nil
	}
	return nil, true, l.check(*l.user, string(resp))
}

// listener counts and keeps the connections it accepts, and wraps them
// in a commandCounter when countVerbs.
type listener struct {
	net.Listener
	s          *Server
	countVerbs bool
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.mu.Lock()
	l.s.accepted++
	l.s.conns = append(l.s.conns, c)
	l.s.mu.Unlock()
	if !l.countVerbs {
		return c, nil
	}
	return &commandCounter{Conn: c, s: l.s, stopAtTLS: l.s.opts.TLS != nil}, nil
}

// commandCounter counts the command verbs in what the server reads,
// skipping message content (from DATA to the lone "."). It keeps only the
// start of the current line, so a large body costs no allocation. It
// stops at STARTTLS when the server offers TLS: the rest is ciphertext.
type commandCounter struct {
	net.Conn
	s         *Server
	stopAtTLS bool
	stopped   bool
	inData    bool
	head      [16]byte // the first octets of the current line
	kept      int      // octets of head in use
	length    int      // octets of the current line so far
}

func (c *commandCounter) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	p := b[:n]
	for len(p) > 0 && !c.stopped {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.add(p)
			break
		}
		c.add(p[:i])
		p = p[i+1:]
		c.endLine()
	}
	return n, err
}

func (c *commandCounter) add(p []byte) {
	c.kept += copy(c.head[c.kept:], p)
	c.length += len(p)
}

func (c *commandCounter) endLine() {
	line, whole := c.head[:c.kept], c.length == c.kept
	c.kept, c.length = 0, 0
	if whole {
		line = bytes.TrimSuffix(line, []byte("\r"))
	}
	if c.inData {
		c.inData = !whole || string(line) != "."
		return
	}
	verb, _, _ := bytes.Cut(line, []byte(" "))
	v := strings.ToUpper(string(verb))
	c.inData = v == "DATA"
	c.stopped = c.stopAtTLS && v == "STARTTLS"
	c.s.mu.Lock()
	c.s.verbs[v]++
	c.s.mu.Unlock()
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// ClosedAddr returns a loopback host:port where nothing listens: a port
// that was free a moment ago, so dialing it is refused.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
