// Package sink is a local SMTP server for trying blaster out and for tests:
// it accepts every message on loopback (emersion/go-smtp's server), counts
// messages and recipients, and optionally writes each message to a
// directory. It is not an MTA: it relays nothing.
package sink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	gosmtp "github.com/emersion/go-smtp"
)

// Config configures a Sink.
type Config struct {
	// Dir, if set, receives each message as a unique .eml file.
	Dir string
	// Record keeps a count per recipient address, for Received. Off by
	// default: it grows with the number of distinct recipients.
	Record bool
	// Domain is the name in the greeting. Default "sink.blaster.test".
	Domain string
	// MaxRecipients per transaction; 0 means no limit (go-smtp's default).
	MaxRecipients int
	// Timeline keeps how many recipients were accepted in each second of
	// the wall clock, for Timeline: the rate a server saw, to check a
	// sender's throttle against. Off by default.
	Timeline bool
}

// Second is the recipients accepted in one second (Unix time).
type Second struct {
	Unix       int64 `json:"unix"`
	Recipients int64 `json:"recipients"`
}

// Stats are the counts since start.
type Stats struct {
	Connections int64 `json:"connections"`
	Messages    int64 `json:"messages"`
	Recipients  int64 `json:"recipients"`
	Bytes       int64 `json:"bytes"`
}

// Sink is a running server. Start it with Listen, stop it with Close.
type Sink struct {
	cfg    Config
	server *gosmtp.Server
	ln     net.Listener
	done   chan struct{}

	conns, msgs, rcpts, bytes atomic.Int64

	mu       sync.Mutex
	received map[string]int
	timeline map[int64]int64 // Unix second → recipients accepted
}

// New returns a sink that is not listening yet.
func New(cfg Config) *Sink {
	if cfg.Domain == "" {
		cfg.Domain = "sink.blaster.test"
	}
	s := &Sink{cfg: cfg, received: map[string]int{}, timeline: map[int64]int64{}, done: make(chan struct{})}
	srv := gosmtp.NewServer(s)
	srv.Domain = cfg.Domain
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxMessageBytes = 0
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = 5 * time.Minute
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	s.server = srv
	return s
}

// Listen starts serving on addr (e.g. "127.0.0.1:2525", or port 0 for any)
// and returns at once.
func (s *Sink) Listen(addr string) error {
	if s.cfg.Dir != "" {
		if err := os.MkdirAll(s.cfg.Dir, 0o755); err != nil {
			return fmt.Errorf("creating sink directory: %w", err)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("sink listening on %s: %w", addr, err)
	}
	s.ln = ln
	go func() {
		defer close(s.done)
		s.server.Serve(ln)
	}()
	return nil
}

// Addr is the address the sink listens on.
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// Close stops the sink and waits for its connections to end.
func (s *Sink) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.server.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.server.Close() // clients still connected: cut them off
	}
	<-s.done
	if errors.Is(err, gosmtp.ErrServerClosed) {
		err = nil
	}
	return err
}

// Stats returns the counts so far.
func (s *Sink) Stats() Stats {
	return Stats{Connections: s.conns.Load(), Messages: s.msgs.Load(), Recipients: s.rcpts.Load(), Bytes: s.bytes.Load()}
}

// Received returns how many messages each recipient got (Config.Record).
func (s *Sink) Received() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.received))
	for k, v := range s.received {
		out[k] = v
	}
	return out
}

// Timeline returns the recipients accepted per second (Config.Timeline),
// oldest first, with the seconds in between that saw none.
func (s *Sink) Timeline() []Second {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.timeline) == 0 {
		return nil
	}
	first, last := int64(math.MaxInt64), int64(math.MinInt64)
	for sec := range s.timeline {
		first, last = min(first, sec), max(last, sec)
	}
	out := make([]Second, 0, last-first+1)
	for sec := first; sec <= last; sec++ {
		out = append(out, Second{Unix: sec, Recipients: s.timeline[sec]})
	}
	return out
}

// NewSession implements gosmtp.Backend.
func (s *Sink) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	s.conns.Add(1)
	return &session{sink: s}, nil
}

type session struct {
	sink  *Sink
	from  string
	rcpts []string
}

func (ss *session) Mail(from string, _ *gosmtp.MailOptions) error {
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	s := ss.sink
	var n int64
	var err error
	if s.cfg.Dir != "" {
		n, err = ss.writeFile(r)
	} else {
		n, err = io.Copy(io.Discard, r)
	}
	if err != nil {
		return err
	}
	s.msgs.Add(1)
	s.rcpts.Add(int64(len(ss.rcpts)))
	s.bytes.Add(n)
	if s.cfg.Record || s.cfg.Timeline {
		s.mu.Lock()
		if s.cfg.Record {
			for _, r := range ss.rcpts {
				s.received[r]++
			}
		}
		if s.cfg.Timeline {
			s.timeline[time.Now().Unix()] += int64(len(ss.rcpts))
		}
		s.mu.Unlock()
	}
	return nil
}

// writeFile stores the message atomically: a temporary name, then rename.
func (ss *session) writeFile(r io.Reader) (int64, error) {
	var b [8]byte
	rand.Read(b[:])
	name := fmt.Sprintf("%d-%s.eml", time.Now().UnixNano(), hex.EncodeToString(b[:]))
	tmp := filepath.Join(ss.sink.cfg.Dir, "."+name+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return 0, fmt.Errorf("sink: %w", err)
	}
	fmt.Fprintf(f, "X-Sender: %s\r\n", ss.from)
	for _, r := range ss.rcpts {
		fmt.Fprintf(f, "X-Receiver: %s\r\n", r)
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(ss.sink.cfg.Dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("sink: writing message: %w", err)
	}
	return n, nil
}

func (ss *session) Reset() {
	ss.from = ""
	ss.rcpts = ss.rcpts[:0]
}

func (ss *session) Logout() error { return nil }
