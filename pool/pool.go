package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Conn is what the pool needs of a connection. *smtp.Client implements it.
type Conn interface {
	// Reset aborts any transaction in progress (SMTP RSET, RFC 5321 §4.1.1.5).
	Reset(ctx context.Context) error
	// Noop checks that the server still answers (RFC 5321 §4.1.1.9).
	Noop(ctx context.Context) error
	// Quit ends the session politely (RFC 5321 §4.1.1.10) and closes it.
	Quit(ctx context.Context) error
	// Close closes the connection without a word to the server.
	Close() error
	// Broken reports that the connection is unusable (an I/O error or a
	// protocol desynchronization happened on it).
	Broken() bool
}

// ErrClosed is returned by Get once Close has been called.
var ErrClosed = errors.New("pool closed")

// Defaults applied by Config.WithDefaults.
const (
	DefaultMaxConns       = 4
	DefaultMaxMessages    = 1000
	DefaultIdleTimeout    = 60 * time.Second
	DefaultCheckAfter     = 5 * time.Second
	DefaultCommandTimeout = 30 * time.Second
)

// Config configures a Pool. The zero value of every field but Dial means its
// default; a negative duration or count disables what it limits.
type Config[C Conn] struct {
	// Dial opens a new connection, greeted and ready for a transaction
	// (EHLO, STARTTLS and AUTH done). Required. It is called without the
	// pool's lock held, so several dials can be under way at once, each
	// counted against MaxConns.
	Dial func(ctx context.Context) (C, error)

	// MaxConns is the most connections open at once, idle, in use or being
	// dialed. Get blocks when it is reached. Default DefaultMaxConns (4).
	// It must be positive once defaults are applied.
	MaxConns int

	// MaxMessages retires a connection (QUIT) after it has been handed back
	// this many times: one Put counts as one message, PutSent as many as it
	// says. Many servers limit messages per connection (Postfix's
	// smtpd_client_message_rate_limit, Exchange's 20 by default) and recycling
	// spreads load across a relay's nodes. Default DefaultMaxMessages (1000:
	// ten personalized batches, so a connection outlives the batch that
	// opened it; Postfix's client sets no count limit at all); negative
	// means no limit.
	MaxMessages int

	// IdleTimeout retires a connection that has been idle for longer than
	// this. It should be shorter than servers' own idle timeout (RFC 5321
	// §4.5.3.2.7: at least 5 minutes). Default DefaultIdleTimeout (60s);
	// negative means never.
	IdleTimeout time.Duration

	// CheckAfter makes Get send a NOOP before handing out a connection that
	// has been idle for longer than this, and discard the connection (and
	// try another) if the NOOP fails. Default DefaultCheckAfter (5s);
	// negative means never check.
	CheckAfter time.Duration

	// CommandTimeout bounds the RSET that Put sends and the QUITs the pool
	// sends when it retires connections or closes. (NOOP on Get uses the
	// caller's ctx.) Default DefaultCommandTimeout (30s).
	CommandTimeout time.Duration

	// NowFunc returns the current time; tests inject a clock. Default
	// time.Now.
	NowFunc func() time.Time
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config[C]) WithDefaults() Config[C] {
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxMessages == 0 {
		c.MaxMessages = DefaultMaxMessages
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.CheckAfter == 0 {
		c.CheckAfter = DefaultCheckAfter
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = DefaultCommandTimeout
	}
	if c.NowFunc == nil {
		c.NowFunc = time.Now
	}
	return c
}

func (c Config[C]) validate() error {
	if c.Dial == nil {
		return errors.New("pool config: Dial is required")
	}
	if c.MaxConns < 1 {
		return fmt.Errorf("pool config: MaxConns must be at least 1, got %d", c.MaxConns)
	}
	return nil
}

// Stats is a snapshot of a pool's counters.
type Stats struct {
	Open    int   // connections established: Idle + InUse
	Idle    int   // open and waiting in the pool
	InUse   int   // handed out by Get and not yet Put back
	Dialing int   // dials under way (they count against MaxConns)
	Waiting int   // Get calls blocked at the cap
	Created int64 // connections successfully dialed since New
	Reused  int64 // Gets served by an idle connection
	Retired int64 // connections closed since New, for any reason
}

type entry[C Conn] struct {
	conn     C
	messages int       // uses so far
	lastUsed time.Time // when it was last put back (or dialed)
}

// Pool is a bounded pool of connections of type C. C must be comparable
// (a pointer type such as *smtp.Client): Put finds its bookkeeping by it.
// A Pool is safe for concurrent use.
type Pool[C Conn] struct {
	cfg Config[C]

	mu      sync.Mutex
	idle    []*entry[C]       // most recently used last
	inUse   map[any]*entry[C] // keyed by the C handed out
	dialing int
	waiting int
	closed  bool
	changed chan struct{} // closed and replaced whenever a slot or an idle conn frees up
	stats   Stats

	quitting int           // background QUITs under way
	quitDone chan struct{} // closed and replaced when quitting drops to 0
}

// New returns a pool. It dials nothing until the first Get.
func New[C Conn](cfg Config[C]) (*Pool[C], error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Pool[C]{
		cfg:      cfg,
		inUse:    make(map[any]*entry[C]),
		changed:  make(chan struct{}),
		quitDone: make(chan struct{}),
	}, nil
}

// Get returns a connection ready for a transaction: an idle one if there is
// one (checked with NOOP if it was idle longer than CheckAfter), else a new
// one when fewer than MaxConns are open. At the cap it blocks until a
// connection is put back or discarded, or ctx ends. A dial error is
// returned as is (wrapped), without retrying.
func (p *Pool[C]) Get(ctx context.Context) (C, error) {
	var zero C
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return zero, ErrClosed
		}
		now := p.cfg.NowFunc()
		p.reapLocked(now)
		if n := len(p.idle); n > 0 {
			e := p.idle[n-1]
			p.idle[n-1] = nil
			p.idle = p.idle[:n-1]
			p.inUse[any(e.conn)] = e
			p.mu.Unlock()
			if err := p.check(ctx, e, now); err != nil {
				if ctxErr := ctx.Err(); ctxErr != nil {
					return zero, ctxErr
				}
				continue
			}
			p.mu.Lock()
			p.stats.Reused++
			p.mu.Unlock()
			return e.conn, nil
		}
		if p.dialing+len(p.inUse) < p.cfg.MaxConns {
			p.dialing++
			p.mu.Unlock()
			return p.dial(ctx)
		}
		wake := p.changed
		p.waiting++
		p.mu.Unlock()
		select {
		case <-wake:
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
		case <-ctx.Done():
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
			return zero, fmt.Errorf("waiting for a connection (%d open, the cap): %w", p.cfg.MaxConns, ctx.Err())
		}
	}
}

// check runs the liveness check on an idle connection taken for reuse. On
// failure the connection is closed and its slot freed.
func (p *Pool[C]) check(ctx context.Context, e *entry[C], now time.Time) error {
	var err error
	switch {
	case e.conn.Broken():
		err = errors.New("connection broken")
	case p.cfg.CheckAfter >= 0 && now.Sub(e.lastUsed) > p.cfg.CheckAfter:
		err = e.conn.Noop(ctx)
	}
	if err != nil {
		_ = e.conn.Close()
		p.mu.Lock()
		delete(p.inUse, any(e.conn))
		p.stats.Retired++
		p.signalLocked()
		p.mu.Unlock()
	}
	return err
}

func (p *Pool[C]) dial(ctx context.Context) (C, error) {
	c, err := p.cfg.Dial(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing--
	if err != nil {
		p.signalLocked()
		var zero C
		return zero, err
	}
	p.stats.Created++
	if p.closed {
		p.signalLocked()
		p.stats.Retired++
		p.quitLater(c)
		var zero C
		return zero, ErrClosed
	}
	p.inUse[any(c)] = &entry[C]{conn: c, lastUsed: p.cfg.NowFunc()}
	return c, nil
}

// Put hands c back after one message. It is PutSent(c, 1, err).
func (p *Pool[C]) Put(c C, err error) {
	p.PutSent(c, 1, err)
}

// PutSent hands c back after it carried messages transactions; err is the
// last error the caller saw on it, if any. A broken connection is closed. A
// connection that reached MaxMessages, or comes back after Close, is QUIT
// (in the background; Close waits for it). Otherwise it is RSET, since an
// error may have left a transaction half done, and kept if the RSET
// succeeds: a reply error (a rejected recipient, a 4xx after DATA) leaves a
// healthy connection, and reusing it saves a handshake.
//
// Putting a connection that Get did not hand out, or putting one twice,
// panics: it would corrupt the count of open connections.
func (p *Pool[C]) PutSent(c C, messages int, err error) {
	p.mu.Lock()
	e, ok := p.inUse[any(c)]
	if !ok {
		p.mu.Unlock()
		panic("pool: Put of a connection that is not in use")
	}
	e.messages += messages
	closed := p.closed
	p.mu.Unlock()

	switch {
	case c.Broken():
		_ = c.Close()
		p.retire(e, false)
		return
	case closed, p.cfg.MaxMessages > 0 && e.messages >= p.cfg.MaxMessages:
		p.retire(e, true)
		return
	}
	_ = err // the RSET below decides whether the connection survived err
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.CommandTimeout)
	rerr := c.Reset(ctx)
	cancel()
	if rerr != nil || c.Broken() {
		_ = c.Close()
		p.retire(e, false)
		return
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.inUse, any(c))
	if p.closed {
		p.stats.Retired++
		p.quitLater(c)
		p.signalLocked()
		return
	}
	e.lastUsed = p.cfg.NowFunc()
	p.idle = append(p.idle, e)
	p.signalLocked()
}

// retire frees e's slot; when quit is set it also sends QUIT in the
// background.
func (p *Pool[C]) retire(e *entry[C], quit bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.inUse, any(e.conn))
	p.stats.Retired++
	if quit {
		p.quitLater(e.conn)
	}
	p.signalLocked()
}

// Reap retires the connections idle for longer than IdleTimeout. Get and
// Put reap too; Reap is for an owner that wants idle connections closed
// while the pool is not used. It returns how many connections remain open,
// so such an owner can drop a pool that went empty.
func (p *Pool[C]) Reap() (open int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reapLocked(p.cfg.NowFunc())
	return len(p.idle) + len(p.inUse) + p.dialing
}

// reapLocked retires idle connections past IdleTimeout. Idle is ordered by
// lastUsed, oldest first, so the expired ones are a prefix.
func (p *Pool[C]) reapLocked(now time.Time) {
	if p.cfg.IdleTimeout < 0 {
		return
	}
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].lastUsed) > p.cfg.IdleTimeout {
		p.quitLater(p.idle[n].conn)
		p.idle[n] = nil
		n++
	}
	if n == 0 {
		return
	}
	p.idle = append(p.idle[:0], p.idle[n:]...)
	p.stats.Retired += int64(n)
	p.signalLocked()
}

// quitLater sends QUIT on c in a goroutine that Close waits for. The
// caller holds p.mu.
func (p *Pool[C]) quitLater(c C) {
	p.quitting++
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.CommandTimeout)
		if err := c.Quit(ctx); err != nil {
			_ = c.Close()
		}
		cancel()
		p.mu.Lock()
		p.quitting--
		if p.quitting == 0 {
			close(p.quitDone)
			p.quitDone = make(chan struct{})
		}
		p.mu.Unlock()
	}()
}

// signalLocked wakes every Get waiting at the cap.
func (p *Pool[C]) signalLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool[C]) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Idle = len(p.idle)
	s.InUse = len(p.inUse)
	s.Open = s.Idle + s.InUse
	s.Dialing = p.dialing
	s.Waiting = p.waiting
	return s
}

// Close QUITs every idle connection, makes Get fail with ErrClosed and wakes
// the Gets waiting, and waits for the QUITs to finish. Connections in use
// are QUIT when they are put back (waited for by a later Close call, if
// any). Close is idempotent and always returns nil; QUIT failures only mean
// the connection was already gone.
func (p *Pool[C]) Close() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		for i, e := range p.idle {
			p.quitLater(e.conn)
			p.idle[i] = nil
		}
		p.stats.Retired += int64(len(p.idle))
		p.idle = nil
		p.signalLocked()
	}
	for p.quitting > 0 {
		done := p.quitDone
		p.mu.Unlock()
		<-done
		p.mu.Lock()
	}
	p.mu.Unlock()
	return nil
}
