package transport

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blaster-mail/blaster/smtp"
)

// PickupOptions configures a Pickup transport.
type PickupOptions struct {
	// NoSync skips the fsync of each file and of the directory after the
	// rename. Faster, but a crash may lose or truncate files that were
	// reported written. Default false: every message is on disk before Send
	// returns.
	NoSync bool
	// NowFunc gives the time in file names; default time.Now.
	NowFunc func() time.Time
}

// Pickup writes each message as a file into a pickup directory, the way
// IIS's and Exchange's pickup directories (and the seeds' fastest local
// path) take mail: the envelope travels in X-Sender and X-Receiver header
// lines (one per recipient) in front of the message itself.
//
// Each file is written in DIR/tmp, fsynced, then renamed into DIR under a
// unique name ending in .eml, so a program watching DIR never sees a
// partial message (the tmp-then-rename idea is Maildir's). The body is
// streamed from the reader, never held whole.
type Pickup struct {
	dir, tmp string
	opts     PickupOptions
	prefix   string // random per Pickup, so two processes never collide
	seq      atomic.Uint64
}

var _ Transport = (*Pickup)(nil)

// NewPickup returns a Pickup writing into dir, creating dir and dir/tmp if
// they are missing.
func NewPickup(dir string, opts PickupOptions) (*Pickup, error) {
	if dir == "" {
		return nil, errors.New("pickup directory: empty path")
	}
	if opts.NowFunc == nil {
		opts.NowFunc = time.Now
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o750); err != nil {
		return nil, fmt.Errorf("creating pickup directory: %w", err)
	}
	var id [8]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails
	return &Pickup{dir: dir, tmp: tmp, opts: opts, prefix: hex.EncodeToString(id[:])}, nil
}

// Session returns a writer of pickup files; it never blocks.
func (p *Pickup) Session(ctx context.Context, _ string) (Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return pickupSession{p}, nil
}

// Route is "pickup:DIR" for every domain.
func (p *Pickup) Route(string) string { return "pickup:" + p.dir }

// Close has nothing to end: every Send finished its file.
func (p *Pickup) Close() error { return nil }

type pickupSession struct{ p *Pickup }

func (s pickupSession) Send(ctx context.Context, env *smtp.Envelope, body io.Reader) (*smtp.Result, error) {
	name, err := s.p.write(ctx, env, body)
	if err != nil {
		return nil, err
	}
	res := &smtp.Result{Rcpts: make([]*smtp.Reply, len(env.Rcpts))}
	for i := range res.Rcpts {
		res.Rcpts[i] = &smtp.Reply{Code: 250, Enhanced: smtp.EnhancedCode{2, 1, 5}, Text: "recipient ok"}
	}
	res.Data = &smtp.Reply{Code: 250, Enhanced: smtp.EnhancedCode{2, 0, 0}, Text: "written as " + name}
	return res, nil
}

func (pickupSession) Release(error) {}

// write writes one message and returns its file name (within the pickup
// directory).
func (p *Pickup) write(ctx context.Context, env *smtp.Envelope, body io.Reader) (name string, err error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if len(env.Rcpts) == 0 {
		return "", errors.New("pickup: envelope has no recipients")
	}
	if err := headerSafe("sender", env.From); err != nil {
		return "", err
	}
	for i, r := range env.Rcpts {
		if err := headerSafe(fmt.Sprintf("recipient %d", i+1), r.Addr); err != nil {
			return "", err
		}
	}

	name = p.prefix + "." + strconv.FormatInt(p.opts.NowFunc().UnixNano(), 10) + "." +
		strconv.FormatUint(p.seq.Add(1), 10) + ".eml"
	tmpPath := filepath.Join(p.tmp, name)
	f, err := os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return "", fmt.Errorf("creating pickup file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmpPath)
		}
	}()

	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(f)
	defer func() {
		bw.Reset(nil)
		writerPool.Put(bw)
	}()
	from := env.From
	if from == "" {
		from = "<>"
	}
	bw.WriteString("X-Sender: " + from + "\r\n")
	for _, r := range env.Rcpts {
		bw.WriteString("X-Receiver: " + r.Addr + "\r\n")
	}
	if _, err := io.Copy(bw, ctxReader{ctx, body}); err != nil {
		return "", fmt.Errorf("writing pickup file %s: %w", tmpPath, err)
	}
	if err := bw.Flush(); err != nil {
		return "", fmt.Errorf("writing pickup file %s: %w", tmpPath, err)
	}
	if !p.opts.NoSync {
		if err := f.Sync(); err != nil {
			return "", fmt.Errorf("syncing pickup file %s: %w", tmpPath, err)
		}
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("closing pickup file %s: %w", tmpPath, err)
	}
	if err := os.Rename(tmpPath, filepath.Join(p.dir, name)); err != nil {
		return "", fmt.Errorf("moving pickup file into %s: %w", p.dir, err)
	}
	if !p.opts.NoSync {
		if err := syncDir(p.dir); err != nil {
			return name, fmt.Errorf("syncing pickup directory %s: %w", p.dir, err)
		}
	}
	return name, nil
}

// writerPool recycles the 64 KiB write buffers: one per message would be
// most of what a Send allocates.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

// headerSafe refuses a value that would end its header line early (and so
// inject headers) or is not text.
func headerSafe(what, v string) error {
	if i := strings.IndexAny(v, "\r\n\x00"); i >= 0 {
		return fmt.Errorf("pickup: %s %q: control character at offset %d", what, v, i)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}
