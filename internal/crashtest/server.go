// Package crashtest proves blaster's delivery guarantee end to end: a
// campaign is sent to an SMTP server that injects faults (a 421 greeting,
// 451 to RCPT, 451 after DATA, 550 for some addresses, connections dropped
// before and after the final reply) while the worker process is killed with
// SIGKILL and restarted; then the server's own record of what it accepted
// is reconciled with blaster's ledger recipient by recipient.
//
// The CI test (cmd/blaster, TestCrashFaults) runs it at 5,000 recipients;
// bench/crash runs it at 200,000 with 20 kills.
package crashtest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gosmtp "github.com/emersion/go-smtp"
)

// Fault is what the server does to one recipient's attempt.
type Fault int

const (
	// Accept: the recipient is accepted (recorded) and answered 250.
	Accept Fault = iota
	// Reject550: 550 to RCPT, on every attempt (a mailbox that does not
	// exist).
	Reject550
	// Defer451Rcpt: 451 to RCPT.
	Defer451Rcpt
	// Defer451Data: 451 to the final ".": the transaction is not accepted.
	Defer451Data
	// DropBeforeAccept: the connection is closed after the final "."
	// without a reply and without accepting: the message is lost.
	DropBeforeAccept
	// DropAfterAccept: the message is accepted (recorded), then the
	// connection is closed before the reply goes out: the server has it,
	// the client cannot know.
	DropAfterAccept
	// DropAfterReply: accepted and answered 250; the connection is closed
	// at the next command on it.
	DropAfterReply
)

func (f Fault) String() string {
	return [...]string{"accept", "550", "451-rcpt", "451-data", "drop-before-accept", "drop-after-accept", "drop-after-reply"}[f]
}

// Plan decides the fault for an address's n-th attempt (n from 1, as the
// server counts RCPTs for it) from a hash of the address alone, so a run is
// reproducible: 2% of addresses are rejected with 550 every time; on a
// first attempt 4% get 451 to RCPT, 2% 451 after DATA, 1.5% each a
// connection dropped before accepting, after accepting, and after the
// reply. Later attempts are accepted.
func Plan(addr string, attempt int) Fault {
	h := fnv.New32a()
	io.WriteString(h, strings.ToLower(addr))
	v := h.Sum32() % 1000
	switch {
	case v < 20:
		return Reject550
	case attempt > 1:
		return Accept
	case v < 60:
		return Defer451Rcpt
	case v < 80:
		return Defer451Data
	case v < 95:
		return DropBeforeAccept
	case v < 110:
		return DropAfterAccept
	case v < 125:
		return DropAfterReply
	}
	return Accept
}

// GreetingFaultEvery: every n-th connection is greeted with 421 and closed.
const GreetingFaultEvery = 13

// Server is an in-process SMTP server (emersion/go-smtp) that injects the
// faults of Plan and records, per address, how many times it accepted a
// message and which faults it injected.
type Server struct {
	srv  *gosmtp.Server
	ln   net.Listener
	done chan struct{}

	conns    atomic.Int64
	greeting atomic.Int64 // connections refused with 421

	mu       sync.Mutex
	attempts map[string]int     // RCPTs seen per address
	accepted map[string]int     // messages accepted per address
	lost     map[string][]Fault // lost-reply faults injected per address
	total    int64
}

// Listen starts a server on addr ("127.0.0.1:0").
func Listen(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fault server listening on %s: %w", addr, err)
	}
	s := &Server{done: make(chan struct{}), attempts: map[string]int{}, accepted: map[string]int{}, lost: map[string][]Fault{}}
	s.ln = &greetingFaults{Listener: ln, s: s}
	srv := gosmtp.NewServer(s)
	srv.Domain = "faults.blaster.test"
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.MaxRecipients = 0
	// Connections reset by a killed worker are the point, not news.
	srv.ErrorLog = log.New(io.Discard, "", 0)
	s.srv = srv
	go func() {
		defer close(s.done)
		srv.Serve(s.ln)
	}()
	return s, nil
}

// Addr is the server's address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, cutting clients off.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	if errors.Is(err, gosmtp.ErrServerClosed) {
		err = nil
	}
	return err
}

// Accepted returns how many messages the server accepted per address.
func (s *Server) Accepted() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.accepted))
	for k, v := range s.accepted {
		out[k] = v
	}
	return out
}

// Total is the number of recipients accepted so far, repeats included.
func (s *Server) Total() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// Lost returns, per address, the lost-reply faults (DropBeforeAccept,
// DropAfterAccept) injected into its transactions: the cases blaster
// cannot know the outcome of.
func (s *Server) Lost() map[string][]Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]Fault, len(s.lost))
	for k, v := range s.lost {
		out[k] = append([]Fault(nil), v...)
	}
	return out
}

// GreetingFaults is the number of connections refused with 421.
func (s *Server) GreetingFaults() int64 { return s.greeting.Load() }

// greetingFaults refuses every GreetingFaultEvery-th connection with a 421
// greeting (RFC 5321 §3.1) before go-smtp sees it.
type greetingFaults struct {
	net.Listener
	s *Server
}

func (l *greetingFaults) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.s.conns.Add(1)%GreetingFaultEvery == 0 {
			l.s.greeting.Add(1)
			c.SetWriteDeadline(time.Now().Add(time.Second))
			io.WriteString(c, "421 4.3.2 faults.blaster.test service not available, try later\r\n")
			c.Close()
			continue
		}
		return c, nil
	}
}

// NewSession implements gosmtp.Backend.
func (s *Server) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	return &session{s: s, conn: c.Conn()}, nil
}

type session struct {
	s     *Server
	conn  net.Conn
	rcpts []string
	fault Fault // the transaction's data-phase fault: its first accepted recipient's
	drop  bool  // close the connection at the next command
}

func (ss *session) dropNow() error {
	ss.conn.Close()
	return &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 4, 2}, Message: "connection dropped"}
}

func (ss *session) Reset() {
	ss.rcpts, ss.fault = ss.rcpts[:0], Accept
	if ss.drop {
		ss.conn.Close()
	}
}

func (ss *session) Logout() error { return nil }

func (ss *session) Mail(string, *gosmtp.MailOptions) error {
	if ss.drop {
		return ss.dropNow()
	}
	return nil
}

func (ss *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s := ss.s
	s.mu.Lock()
	s.attempts[to]++
	f := Plan(to, s.attempts[to])
	s.mu.Unlock()
	switch f {
	case Reject550:
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such mailbox"}
	case Defer451Rcpt:
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "local error in processing"}
	}
	if len(ss.rcpts) == 0 {
		ss.fault = f
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	s := ss.s
	switch ss.fault {
	case Defer451Data:
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "queue write failed"}
	case DropBeforeAccept:
		s.note(ss.rcpts, DropBeforeAccept, false)
		return ss.dropNow()
	case DropAfterAccept:
		s.note(ss.rcpts, DropAfterAccept, true)
		return ss.dropNow()
	case DropAfterReply:
		ss.drop = true
	}
	s.note(ss.rcpts, Accept, true)
	return nil
}

// note records a transaction's recipients as accepted (or not) and its
// lost-reply fault.
func (s *Server) note(rcpts []string, f Fault, accepted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rcpts {
		if accepted {
			s.accepted[r]++
			s.total++
		}
		if f == DropBeforeAccept || f == DropAfterAccept {
			s.lost[r] = append(s.lost[r], f)
		}
	}
}

var _ gosmtp.Backend = (*Server)(nil)

// waitCtx sleeps for d or until ctx ends.
func waitCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
