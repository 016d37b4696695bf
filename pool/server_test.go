package pool_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
)

// sinkServer is an in-process go-smtp server on 127.0.0.1:0 that counts the
// connections it accepted and the commands it read, and can cut every
// connection from its side.
type sinkServer struct {
	addr string

	mu       sync.Mutex
	conns    []net.Conn
	accepted int
	verbs    map[string]int
	messages int
}

func startSink(t *testing.T) *sinkServer {
	t.Helper()
	s := &sinkServer{verbs: make(map[string]int)}
	be := gosmtp.BackendFunc(func(*gosmtp.Conn) (gosmtp.Session, error) {
		return &sinkSession{s: s}, nil
	})
	srv := gosmtp.NewServer(be)
	srv.Domain = "sink.example.test"
	srv.ErrorLog = discardLogger{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	s.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(&countingListener{Listener: ln, s: s})
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return s
}

// count returns how many times the server read verb.
func (s *sinkServer) count(verb string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verbs[verb]
}

func (s *sinkServer) connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

func (s *sinkServer) delivered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.messages
}

// cutAll closes every accepted connection from the server's side.
func (s *sinkServer) cutAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		_ = c.Close()
	}
}

// waitCount polls until the server has read verb want times, or fails.
func (s *sinkServer) waitCount(t *testing.T, verb string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.count(verb) < want {
		if time.Now().After(deadline) {
			t.Fatalf("server read %s %d times, want %d", verb, s.count(verb), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if got := s.count(verb); got != want {
		t.Fatalf("server read %s %d times, want %d", verb, got, want)
	}
}

type countingListener struct {
	net.Listener
	s *sinkServer
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.mu.Lock()
	l.s.accepted++
	l.s.conns = append(l.s.conns, c)
	l.s.mu.Unlock()
	return &countingConn{Conn: c, s: l.s}, nil
}

// countingConn counts the command verbs in what the server reads.
type countingConn struct {
	net.Conn
	s       *sinkServer
	partial []byte
	inData  bool
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.partial = append(c.partial, b[:n]...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimRight(string(c.partial[:i]), "\r")
		c.partial = c.partial[i+1:]
		if c.inData {
			c.inData = line != "."
			continue
		}
		verb, _, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		c.inData = verb == "DATA"
		c.s.mu.Lock()
		c.s.verbs[verb]++
		c.s.mu.Unlock()
	}
	return n, err
}

type sinkSession struct{ s *sinkServer }

func (*sinkSession) Reset()                                 {}
func (*sinkSession) Logout() error                          { return nil }
func (*sinkSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (*sinkSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (ss *sinkSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	ss.s.mu.Lock()
	ss.s.messages++
	ss.s.mu.Unlock()
	return nil
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// client adapts go-smtp's client to pool.Conn: a real client, independent
// of blaster's own, so the pool is tested on its own.
type client struct {
	c      *gosmtp.Client
	mu     sync.Mutex
	broken bool
}

func dialClient(addr string) func(context.Context) (*client, error) {
	return func(ctx context.Context) (*client, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		c := gosmtp.NewClient(nc)
		if err := c.Hello("client.example.test"); err != nil {
			_ = c.Close()
			return nil, err
		}
		if ok, _ := c.Extension("PIPELINING"); !ok { // runs the greeting and EHLO
			_ = c.Close()
			return nil, errors.New("server does not offer PIPELINING")
		}
		return &client{c: c}, nil
	}
}

func (c *client) note(err error) error {
	var se *gosmtp.SMTPError
	if err != nil && !errors.As(err, &se) {
		c.mu.Lock()
		c.broken = true
		c.mu.Unlock()
	}
	return err
}

func (c *client) send(t *testing.T) {
	t.Helper()
	err := c.c.SendMail("from@example.test", []string{"to@example.test"},
		strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	if c.note(err) != nil {
		t.Errorf("sending: %v", err)
	}
}

func (c *client) Reset(context.Context) error { return c.note(c.c.Reset()) }
func (c *client) Noop(context.Context) error  { return c.note(c.c.Noop()) }
func (c *client) Quit(context.Context) error  { return c.note(c.c.Quit()) }
func (c *client) Close() error                { return c.c.Close() }
func (c *client) Broken() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}

// clock is a settable clock for NowFunc.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
