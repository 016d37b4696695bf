package message

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// DefaultSpoolOver is the size past which a message being built leaves
// memory for a temporary file (WithSpool).
const DefaultSpoolOver = 1 << 20

// spool holds a message being built: in a pooled buffer up to over bytes,
// then in a temporary file, so memory stays bounded whatever the size.
type spool struct {
	dir  string
	over int
	buf  *bytes.Buffer
	f    *os.File
	fw   *bufio.Writer
	n    int64 // bytes written to f
	err  error
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func newSpool(dir string, over int) *spool {
	return &spool{dir: dir, over: over, buf: bufPool.Get().(*bytes.Buffer)}
}

func (s *spool) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.f == nil && s.buf.Len()+len(p) > s.over {
		var err error
		if s.f, err = os.CreateTemp(s.dir, "blaster-msg-*.eml"); err != nil {
			s.err = fmt.Errorf("spooling message: %w", err)
			return 0, s.err
		}
		s.fw = bufio.NewWriterSize(s.f, 64<<10)
		n, err := s.fw.Write(s.buf.Bytes())
		s.n += int64(n)
		if err != nil {
			s.err = fmt.Errorf("spooling message: %w", err)
			return 0, s.err
		}
		s.buf.Reset()
	}
	if s.f != nil {
		n, err := s.fw.Write(p)
		s.n += int64(n)
		if err != nil {
			s.err = fmt.Errorf("spooling message: %w", err)
		}
		return n, s.err
	}
	return s.buf.Write(p)
}

// writeTo copies the whole spooled message to w; it may be called again.
func (s *spool) writeTo(w io.Writer) error {
	if s.err != nil {
		return s.err
	}
	if s.f == nil {
		_, err := w.Write(s.buf.Bytes())
		return err
	}
	if err := s.fw.Flush(); err != nil {
		return fmt.Errorf("spooling message: %w", err)
	}
	if _, err := io.Copy(w, io.NewSectionReader(s.f, 0, s.n)); err != nil {
		return fmt.Errorf("reading spooled message: %w", err)
	}
	return nil
}

// body hands the spooled message over to a Body led by head (a
// DKIM-Signature field, or nil). The spool is finished either way.
func (s *spool) body(head []byte) (*Body, error) {
	if s.err == nil && s.f != nil {
		if err := s.fw.Flush(); err != nil {
			s.err = fmt.Errorf("spooling message: %w", err)
		}
	}
	if s.err != nil {
		s.close()
		return nil, s.err
	}
	b := &Body{head: head}
	if s.f != nil {
		b.f, b.size = s.f, s.n
		s.f = nil
		s.close()
	} else {
		b.buf, b.size = s.buf, int64(s.buf.Len())
	}
	b.refs.Store(1)
	return b, nil
}

// close removes the file, if any, and returns the buffer to the pool.
func (s *spool) close() {
	if s.f != nil {
		name := s.f.Name()
		s.f.Close()
		os.Remove(name)
		s.f = nil
	}
	putBuf(s.buf)
}

func putBuf(b *bytes.Buffer) {
	if b.Cap() <= 2*DefaultSpoolOver { // don't keep rare huge buffers alive
		b.Reset()
		bufPool.Put(b)
	}
}

// Body is one built message, ready to go out any number of times and in any
// number of transactions at once: in memory when it is at most WithSpool's
// threshold, else in a temporary file that every reader reads through its
// own io.SectionReader, so N concurrent transactions of a 20 MB message
// hold no copy of it. A Body is reference counted: whoever gets one from
// Build or Shared calls Release once when done with it, and the file is
// removed when the last holder has released it.
type Body struct {
	head []byte        // written first: the DKIM-Signature field, or nil
	buf  *bytes.Buffer // the message in memory, or nil
	f    *os.File      // the message in a spool file, or nil
	size int64         // of buf or f
	refs atomic.Int32
}

// Size is the message's length in octets (for SMTP SIZE, RFC 1870).
func (b *Body) Size() int64 { return int64(len(b.head)) + b.size }

// Spooled reports whether the message is in a file rather than in memory.
func (b *Body) Spooled() bool { return b.f != nil }

// Reader returns a new reader of the whole message, independent of any
// other reader of the same Body. It is valid until Release.
func (b *Body) Reader() io.Reader {
	var rest io.Reader
	if b.f != nil {
		rest = io.NewSectionReader(b.f, 0, b.size)
	} else {
		rest = bytes.NewReader(b.buf.Bytes())
	}
	if len(b.head) == 0 {
		return rest
	}
	return io.MultiReader(bytes.NewReader(b.head), rest)
}

// WriteTo writes the whole message to w.
func (b *Body) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, b.Reader())
}

// Bytes returns the whole message in a new slice, for tests and small
// messages; it reads a spooled one into memory.
func (b *Body) Bytes() ([]byte, error) {
	out := bytes.NewBuffer(make([]byte, 0, b.Size()))
	if _, err := b.WriteTo(out); err != nil {
		return nil, fmt.Errorf("reading spooled message: %w", err)
	}
	return out.Bytes(), nil
}

// retain adds a holder.
func (b *Body) retain() *Body {
	b.refs.Add(1)
	return b
}

// Release drops the caller's hold; the last one frees the buffer or
// removes the file. No reader of the Body may be used after it.
func (b *Body) Release() {
	if b == nil || b.refs.Add(-1) != 0 {
		return
	}
	if b.f != nil {
		name := b.f.Name()
		b.f.Close()
		os.Remove(name)
	}
	if b.buf != nil {
		putBuf(b.buf)
	}
}
