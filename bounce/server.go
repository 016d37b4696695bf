package bounce

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"
)

// ServerConfig configures the bounce receiver.
type ServerConfig struct {
	// Processor applies what arrives; required.
	Processor *Processor
	// Domain is the name in the greeting. Default "bounces.blaster.test".
	Domain string
	// MaxMessageBytes refuses larger messages (552, RFC 1870 SIZE is
	// announced). Default DefaultMaxMessageBytes.
	MaxMessageBytes int64
	// MaxRecipients per transaction. Default 10: a bounce goes to one
	// return path.
	MaxRecipients int
	// MaxConnections bounds the connections served at once; one more is
	// answered 421 4.7.0 and closed (RFC 5321 §3.8, §4.2.3), and the MTA
	// tries again later. Each connection may hold a message of up to
	// MaxMessageBytes in memory, so this bounds the receiver's memory too.
	// Default 32.
	MaxConnections int
	// Timeout bounds each read and write (RFC 5321 §4.5.3.2 asks servers
	// to wait 5 minutes for commands; bounces come from MTAs, which are
	// quick). Default 2 minutes.
	Timeout time.Duration
	// TLSConfig, when set, makes the receiver offer STARTTLS (RFC 3207) in
	// its EHLO reply. MTAs delivering bounces use TLS opportunistically
	// (RFC 7435): they start it when it is offered and go on in clear when
	// it is not, so without a certificate the receiver offers no TLS at
	// all, and with one it never requires it (RFC 3207 §4: a public server
	// MUST NOT). It must hold a certificate (Certificates, GetCertificate
	// or GetConfigForClient); NewServer clones it. MinVersion is the
	// caller's (Go's default for a server is TLS 1.2). The handshake is
	// bounded by Timeout. Default nil: no STARTTLS.
	TLSConfig *tls.Config
}

// WithDefaults returns c with every zero field set to its default.
func (c ServerConfig) WithDefaults() ServerConfig {
	if c.Domain == "" {
		c.Domain = "bounces.blaster.test"
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.MaxRecipients <= 0 {
		c.MaxRecipients = 10
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Minute
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = 32
	}
	return c
}

// Server is a small SMTP server (emersion/go-smtp) for the return-path
// domain: it accepts mail only for validly signed return paths (550 5.1.1
// for any other address) and processes each message as it arrives. A
// message the database could not take, or whose delivery a worker is still
// recording (Result.Later), is answered 451, so the sending MTA tries again
// later. With ServerConfig.TLSConfig it offers STARTTLS. It is not an MTA:
// it relays nothing.
type Server struct {
	cfg    ServerConfig
	server *gosmtp.Server
	ln     net.Listener
	done   chan struct{}

	mu  sync.Mutex
	sum Summary
}

// NewServer returns a server that is not listening yet.
func NewServer(cfg ServerConfig) (*Server, error) {
	cfg = cfg.WithDefaults()
	if cfg.Processor == nil || cfg.Processor.Signer == nil || cfg.Processor.Pool == nil {
		return nil, errors.New("bounce server: a Processor with Pool and Signer is required")
	}
	if tc := cfg.TLSConfig; tc != nil {
		// Without a certificate every STARTTLS would fail at the handshake,
		// after the receiver had offered it: refuse to start instead.
		if len(tc.Certificates) == 0 && tc.GetCertificate == nil && tc.GetConfigForClient == nil {
			return nil, errors.New("bounce server: TLSConfig has no certificate")
		}
		// Cloned, so a caller changing its config later races with nothing.
		cfg.TLSConfig = tc.Clone()
	}
	s := &Server{cfg: cfg, done: make(chan struct{})}
	srv := gosmtp.NewServer(s)
	srv.Domain = cfg.Domain
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.ReadTimeout = cfg.Timeout
	srv.WriteTimeout = cfg.Timeout
	srv.EnableSMTPUTF8 = true
	srv.TLSConfig = cfg.TLSConfig // nil: go-smtp offers no STARTTLS
	srv.ErrorLog = slogAdapter{s}
	s.server = srv
	return s, nil
}

// slogAdapter sends go-smtp's error log to the processor's logger.
type slogAdapter struct{ s *Server }

func (a slogAdapter) Printf(format string, v ...any) {
	a.s.cfg.Processor.logger().Warn(fmt.Sprintf(format, v...))
}

func (a slogAdapter) Println(v ...any) { a.s.cfg.Processor.logger().Warn(fmt.Sprint(v...)) }

// Listen starts serving on addr and returns at once.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("bounce server listening on %s: %w", addr, err)
	}
	ln = &limitListener{Listener: ln, sem: make(chan struct{}, s.cfg.MaxConnections)}
	s.ln = ln
	go func() {
		defer close(s.done)
		s.server.Serve(ln)
	}()
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Summary returns the counts of what arrived so far.
func (s *Server) Summary() Summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sum
}

// Close stops accepting, lets transactions in flight finish for up to
// ctx's deadline, then cuts the rest off.
func (s *Server) Close(ctx context.Context) error {
	err := s.server.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		err = s.server.Close()
	}
	<-s.done
	if errors.Is(err, gosmtp.ErrServerClosed) {
		err = nil
	}
	return err
}

// NewSession implements gosmtp.Backend.
func (s *Server) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	return &session{s: s, peer: c.Conn().RemoteAddr().String()}, nil
}

type session struct {
	s     *Server
	peer  string
	rcpts []string
}

var errNoSuchReturnPath = &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1},
	Message: "no such return path"}

func (ss *session) Mail(string, *gosmtp.MailOptions) error { return nil }

func (ss *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	if _, err := ss.s.cfg.Processor.Signer.Verify(to); err != nil {
		ss.s.cfg.Processor.logger().Info("refused recipient", "peer", ss.peer, "rcpt", to, "err", err)
		return errNoSuchReturnPath
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r) // bounded by MaxMessageBytes
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.Timeout)
	defer cancel()
	res, err := ss.s.cfg.Processor.Process(ctx, raw, ss.rcpts, "smtp:"+ss.peer)
	if err != nil {
		ss.s.cfg.Processor.logger().Error("processing bounce", "peer", ss.peer, "err", err)
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0},
			Message: "cannot record the bounce now, try again later"}
	}
	ss.s.mu.Lock()
	ss.s.sum.Add(res)
	ss.s.mu.Unlock()
	if res.Later {
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0},
			Message: "the delivery is still being recorded, try again later"}
	}
	return nil
}

func (ss *session) Reset()        { ss.rcpts = nil }
func (ss *session) Logout() error { return nil }

// limitListener hands out at most cap(sem) connections at once and answers
// any more 421 at once, as golang.org/x/net/netutil.LimitListener bounds
// them (which makes them wait instead, unanswered, in the accept queue).
type limitListener struct {
	net.Listener
	sem chan struct{}
}

var tooMany = []byte("421 4.7.0 Too many connections, try again later\r\n")

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			// A short reply to a fresh socket fits its send buffer; the
			// deadline is for a peer that never reads.
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(tooMany)
			c.Close()
		}
	}
}

// limitConn gives its slot back once, on the first Close.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
