package pool_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blaster-mail/blaster/internal/fakeclock"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/pool"
)

func newPool(t *testing.T, cfg pool.Config[*client]) *pool.Pool[*client] {
	t.Helper()
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestReuseOneConnection(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	p := newPool(t, pool.Config[*client]{Dial: dialClient(srv.Addr), MaxConns: 2, CheckAfter: -1})
	ctx := context.Background()
	for range 10 {
		c, err := p.Get(ctx)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		c.send(t)
		p.Put(c, nil)
	}
	if got := srv.Connections(); got != 1 {
		t.Errorf("server saw %d connections, want 1 (reused)", got)
	}
	if got := len(srv.Messages()); got != 10 {
		t.Errorf("server got %d messages, want 10", got)
	}
	if got := srv.Count("RSET"); got != 10 {
		t.Errorf("server read RSET %d times, want 10 (one per Put)", got)
	}
	s := p.Stats()
	if s.Created != 1 || s.Reused != 9 || s.Open != 1 || s.Idle != 1 || s.InUse != 0 {
		t.Errorf("stats = %+v, want Created 1, Reused 9, Open 1, Idle 1", s)
	}
}

func TestCapRespectedUnderConcurrentGets(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	const maxConns = 3
	p := newPool(t, pool.Config[*client]{Dial: dialClient(srv.Addr), MaxConns: maxConns})
	var inUse, peak atomic.Int32
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			for range 5 {
				c, err := p.Get(context.Background())
				if err != nil {
					t.Errorf("Get: %v", err)
					return
				}
				n := inUse.Add(1)
				for {
					old := peak.Load()
					if n <= old || peak.CompareAndSwap(old, n) {
						break
					}
				}
				c.send(t)
				inUse.Add(-1)
				p.Put(c, nil)
			}
		})
	}
	wg.Wait()
	if got := peak.Load(); got > maxConns {
		t.Errorf("%d connections in use at once, cap %d", got, maxConns)
	}
	if got := srv.Connections(); got > maxConns {
		t.Errorf("server saw %d connections, cap %d", got, maxConns)
	}
	if got := len(srv.Messages()); got != 60 {
		t.Errorf("server got %d messages, want 60", got)
	}
	if s := p.Stats(); s.Open > maxConns || s.InUse != 0 || s.Waiting != 0 {
		t.Errorf("stats after the run = %+v", s)
	}
}

func TestGetBlocksAtCapUntilPutOrCancel(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	p := newPool(t, pool.Config[*client]{Dial: dialClient(srv.Addr), MaxConns: 1})
	first, err := p.Get(context.Background())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}

	// A Get at the cap ends with its ctx.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := p.Get(ctx)
		errc <- err
	}()
	waitStats(t, p, func(s pool.Stats) bool { return s.Waiting == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("blocked Get returned %v, want context.Canceled", err)
	}

	// A Get at the cap gets the connection that is put back.
	got := make(chan *client, 1)
	go func() {
		c, err := p.Get(context.Background())
		if err != nil {
			t.Errorf("Get: %v", err)
		}
		got <- c
	}()
	waitStats(t, p, func(s pool.Stats) bool { return s.Waiting == 1 })
	p.Put(first, nil)
	second := <-got
	if second != first {
		t.Errorf("waiting Get got a new connection, want the one put back")
	}
	p.Put(second, nil)
	if n := srv.Connections(); n != 1 {
		t.Errorf("server saw %d connections, want 1", n)
	}
}

func TestRetireAfterMaxMessages(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	p := newPool(t, pool.Config[*client]{Dial: dialClient(srv.Addr), MaxConns: 1, MaxMessages: 3})
	for range 7 {
		c, err := p.Get(context.Background())
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		c.send(t)
		p.Put(c, nil)
	}
	if got := srv.Connections(); got != 3 {
		t.Errorf("server saw %d connections for 7 messages at 3 per connection, want 3", got)
	}
	srv.WaitCount(t, "QUIT", 2)
	if s := p.Stats(); s.Created != 3 || s.Retired != 2 || s.Open != 1 {
		t.Errorf("stats = %+v, want Created 3, Retired 2, Open 1", s)
	}
}

func TestPutSentCountsMessages(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	p := newPool(t, pool.Config[*client]{Dial: dialClient(srv.Addr), MaxConns: 1, MaxMessages: 5})
	c, err := p.Get(context.Background())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	p.PutSent(c, 5, nil)
	srv.WaitCount(t, "QUIT", 1)
	if s := p.Stats(); s.Open != 0 || s.Retired != 1 {
		t.Errorf("stats = %+v, want the connection retired", s)
	}
}

func TestLivenessCheckBeforeReuse(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	clk := fakeclock.New()
	p := newPool(t, pool.Config[*client]{
		Dial: dialClient(srv.Addr), MaxConns: 1,
		CheckAfter: 10 * time.Second, IdleTimeout: time.Hour, NowFunc: clk.Now,
	})
	get := func() *client {
		t.Helper()
		c, err := p.Get(context.Background())
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		return c
	}

	c := get()
	p.Put(c, nil)
	clk.Advance(5 * time.Second)
	p.Put(get(), nil)
	if n := srv.Count("NOOP"); n != 0 {
		t.Errorf("NOOP sent %d times on a connection idle for less than CheckAfter", n)
	}

	clk.Advance(11 * time.Second)
	p.Put(get(), nil)
	if n := srv.Count("NOOP"); n != 1 {
		t.Errorf("NOOP sent %d times on a connection idle for more than CheckAfter, want 1", n)
	}

	// The server drops the connection while it is idle: the NOOP fails,
	// the pool discards it and dials a new one.
	srv.CutAll()
	clk.Advance(11 * time.Second)
	fresh := get()
	if fresh == c {
		t.Errorf("Get handed out the dead connection")
	}
	fresh.send(t)
	p.Put(fresh, nil)
	if s := p.Stats(); s.Created != 2 || s.Retired != 1 {
		t.Errorf("stats = %+v, want Created 2, Retired 1", s)
	}
}

func TestIdleTimeoutRetires(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	clk := fakeclock.New()
	p := newPool(t, pool.Config[*client]{
		Dial: dialClient(srv.Addr), MaxConns: 2, IdleTimeout: time.Minute, NowFunc: clk.Now,
	})
	a, _ := p.Get(context.Background())
	b, _ := p.Get(context.Background())
	p.Put(a, nil)
	clk.Advance(50 * time.Second)
	p.Put(b, nil)
	clk.Advance(20 * time.Second) // a idle 70s, b idle 20s

	if open := p.Reap(); open != 1 {
		t.Errorf("Reap left %d open, want 1", open)
	}
	srv.WaitCount(t, "QUIT", 1)
	c, err := p.Get(context.Background())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if c != b {
		t.Errorf("Get did not hand out the connection still within IdleTimeout")
	}
	p.Put(c, nil)
	if s := p.Stats(); s.Retired != 1 || s.Created != 2 {
		t.Errorf("stats = %+v, want Retired 1, Created 2", s)
	}
}

func TestCloseQuitsEverything(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	p, err := pool.New(pool.Config[*client]{Dial: dialClient(srv.Addr), MaxConns: 3})
	if err != nil {
		t.Fatal(err)
	}
	var held []*client
	for range 3 {
		c, err := p.Get(context.Background())
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		held = append(held, c)
	}
	p.Put(held[0], nil)
	p.Put(held[1], nil)

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close waited for the QUIT replies, so the server has read them.
	if n := srv.Count("QUIT"); n != 2 {
		t.Errorf("after Close the server read QUIT %d times, want 2 (the idle ones)", n)
	}
	if _, err := p.Get(context.Background()); !errors.Is(err, pool.ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}

	// The connection in use is QUIT when it comes back; a second Close is
	// harmless and waits for that QUIT.
	p.Put(held[2], nil)
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := srv.Count("QUIT"); n != 3 {
		t.Errorf("server read QUIT %d times, want 3", n)
	}
	if s := p.Stats(); s.Open != 0 || s.Retired != 3 {
		t.Errorf("stats = %+v, want nothing open, 3 retired", s)
	}
}

func TestCloseReleasesWaitingGet(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	p := newPool(t, pool.Config[*client]{Dial: dialClient(srv.Addr), MaxConns: 1})
	c, err := p.Get(context.Background())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := p.Get(context.Background())
		errc <- err
	}()
	waitStats(t, p, func(s pool.Stats) bool { return s.Waiting == 1 })
	_ = p.Close()
	if err := <-errc; !errors.Is(err, pool.ErrClosed) {
		t.Errorf("waiting Get = %v, want ErrClosed", err)
	}
	p.Put(c, nil)
}

func TestDialErrorFreesTheSlot(t *testing.T) {
	addr := smtptest.ClosedAddr(t) // connection refused

	p := newPool(t, pool.Config[*client]{Dial: dialClient(addr), MaxConns: 1})
	for range 3 { // a leaked slot would make the second Get block forever
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := p.Get(ctx)
		cancel()
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Get on a closed port = %v, want a dial error", err)
		}
	}
	if s := p.Stats(); s.Open != 0 || s.Dialing != 0 || s.Created != 0 {
		t.Errorf("stats = %+v, want nothing open", s)
	}
}

func TestBrokenConnectionIsDiscarded(t *testing.T) {
	srv := smtptest.StartServer(t, smtptest.Options{})
	p := newPool(t, pool.Config[*client]{Dial: dialClient(srv.Addr), MaxConns: 1})
	c, _ := p.Get(context.Background())
	srv.CutAll()
	if err := c.Noop(context.Background()); err == nil {
		t.Fatal("NOOP on a cut connection succeeded")
	}
	p.Put(c, errors.New("connection reset"))
	if s := p.Stats(); s.Open != 0 || s.Retired != 1 {
		t.Errorf("stats = %+v, want the broken connection retired", s)
	}
	d, err := p.Get(context.Background())
	if err != nil {
		t.Fatalf("Get after discard: %v", err)
	}
	d.send(t)
	p.Put(d, nil)
}

func TestConfigValidation(t *testing.T) {
	if _, err := pool.New(pool.Config[*client]{}); err == nil {
		t.Error("New without Dial succeeded")
	}
	if _, err := pool.New(pool.Config[*client]{Dial: dialClient("127.0.0.1:1"), MaxConns: -1}); err == nil {
		t.Error("New with MaxConns -1 succeeded")
	}
	cfg := pool.Config[*client]{}.WithDefaults()
	if cfg.MaxConns != pool.DefaultMaxConns || cfg.MaxMessages != pool.DefaultMaxMessages ||
		cfg.IdleTimeout != pool.DefaultIdleTimeout || cfg.CheckAfter != pool.DefaultCheckAfter || cfg.NowFunc == nil {
		t.Errorf("WithDefaults = %+v", cfg)
	}
}

// waitStats polls the pool's stats until cond holds, or fails.
func waitStats(t *testing.T, p *pool.Pool[*client], cond func(pool.Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(p.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("stats never reached the expected state: %+v", p.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}
