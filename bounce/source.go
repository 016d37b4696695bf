package bounce

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// readLimited reads r whole up to max bytes; a longer message is cut there
// (its report comes first, the returned message after).
func readLimited(r io.Reader, max int64) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxMessageBytes
	}
	b, err := io.ReadAll(io.LimitReader(r, max))
	if err != nil {
		return nil, err
	}
	// Drain the rest so a pipe's writer is not left blocked.
	io.Copy(io.Discard, r)
	return b, nil
}

// ProcessReader processes one message read from r (stdin).
func (p *Processor) ProcessReader(ctx context.Context, r io.Reader, source string) (Summary, error) {
	var sum Summary
	raw, err := readLimited(r, DefaultMaxMessageBytes)
	if err != nil {
		return sum, fmt.Errorf("reading %s: %w", source, err)
	}
	res, err := p.Process(ctx, raw, nil, source)
	if err != nil {
		return sum, err
	}
	sum.Add(res)
	return sum, nil
}

// ProcessMaildir processes the messages of a Maildir (new/ and cur/) not
// yet processed, and marks each one processed by moving it to cur/ with the
// Seen flag ("S" in the ":2," info, as an IMAP server would mark it read):
// a second run reads none of them again (except those whose Result was
// Later, left for the next run). A message a mail reader marked
// seen first is skipped too, so the directory should be blaster's alone;
// were one read twice anyway, the bounce_events key counts it once. A
// database error stops the run with the message left unmarked.
func (p *Processor) ProcessMaildir(ctx context.Context, dir string) (Summary, error) {
	var sum Summary
	for _, sub := range []string{"new", "cur", "tmp"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
			return sum, fmt.Errorf("%s is not a Maildir: no %s/ directory", dir, sub)
		}
	}
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			return sum, fmt.Errorf("reading Maildir %s: %w", dir, err)
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
		for _, e := range entries {
			if ctx.Err() != nil {
				return sum, ctx.Err()
			}
			name := e.Name()
			if !e.Type().IsRegular() || strings.HasPrefix(name, ".") {
				continue
			}
			base, flags, _ := strings.Cut(name, ":2,")
			if sub == "cur" && strings.ContainsRune(flags, 'S') {
				continue
			}
			path := filepath.Join(dir, sub, name)
			f, err := os.Open(path)
			if errors.Is(err, os.ErrNotExist) {
				continue // taken by another reader meanwhile
			}
			if err != nil {
				return sum, fmt.Errorf("reading %s: %w", path, err)
			}
			raw, err := readLimited(f, DefaultMaxMessageBytes)
			f.Close()
			if err != nil {
				return sum, fmt.Errorf("reading %s: %w", path, err)
			}
			res, err := p.Process(ctx, raw, nil, path)
			if err != nil {
				return sum, err
			}
			sum.Add(res)
			if res.Later {
				continue // left as it is, for the next run
			}
			seen := filepath.Join(dir, "cur", base+":2,"+addFlag(flags, 'S'))
			if err := os.Rename(path, seen); errors.Is(err, os.ErrNotExist) {
				continue // taken by another reader meanwhile: applied once either way
			} else if err != nil {
				return sum, fmt.Errorf("marking %s processed: %w", path, err)
			}
		}
	}
	return sum, nil
}

// addFlag adds flag to a Maildir info's flags, kept in ASCII order as the
// Maildir specification asks.
func addFlag(flags string, flag rune) string {
	if strings.ContainsRune(flags, flag) {
		return flags
	}
	b := []byte(flags + string(flag))
	sort.Slice(b, func(i, j int) bool { return b[i] < b[j] })
	return string(b)
}

// mboxBuf is the read buffer of an mbox file. A longer line is read in
// pieces of this size: it is cut with its message (DefaultMaxMessageBytes),
// never an error that would stop this run, and every later one, there.
const mboxBuf = 64 << 10

// ProcessMbox processes every message of an mbox file (the mboxrd/mboxo
// family: a line starting with "From " begins a message; ">From " lines,
// any number of '>', lose one '>'). The file is not changed: run again, it
// counts nothing twice (bounce_events is keyed by message), and applies the
// messages that were Later. Messages are
// read one at a time; one over DefaultMaxMessageBytes is cut there.
func (p *Processor) ProcessMbox(ctx context.Context, r io.Reader, name string) (Summary, error) {
	var sum Summary
	br := bufio.NewReaderSize(r, mboxBuf)
	var msg bytes.Buffer
	line, start := 0, 0
	full := false // the message reached DefaultMaxMessageBytes: the rest is cut
	flush := func() error {
		if start == 0 {
			return nil
		}
		// The blank line before the next "From " belongs to the mbox.
		raw := bytes.TrimSuffix(msg.Bytes(), []byte("\n"))
		res, err := p.Process(ctx, raw, nil, fmt.Sprintf("%s:%d", name, start))
		if err != nil {
			return err
		}
		sum.Add(res)
		msg.Reset()
		full = false
		return nil
	}
	atLineStart := true
	for {
		b, err := br.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) && !errors.Is(err, io.EOF) {
			return sum, fmt.Errorf("%s:%d: %w", name, line+1, err)
		}
		if len(b) > 0 {
			lineStart := atLineStart
			atLineStart = b[len(b)-1] == '\n'
			if lineStart {
				line++
				if bytes.HasPrefix(b, []byte("From ")) {
					if err := flush(); err != nil {
						return sum, err
					}
					if ctx.Err() != nil {
						return sum, ctx.Err()
					}
					start = line
					// The rest of a long "From " line is the separator's too.
					for !atLineStart {
						if b, err = br.ReadSlice('\n'); len(b) > 0 {
							atLineStart = b[len(b)-1] == '\n'
						}
						if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
							break
						}
					}
					if err != nil && !errors.Is(err, bufio.ErrBufferFull) && !errors.Is(err, io.EOF) {
						return sum, fmt.Errorf("%s:%d: %w", name, line, err)
					}
					if errors.Is(err, io.EOF) {
						break
					}
					continue
				}
				if start == 0 {
					if len(bytes.TrimSpace(b)) == 0 && atLineStart {
						if errors.Is(err, io.EOF) {
							break
						}
						continue
					}
					return sum, fmt.Errorf("%s:%d: not an mbox file: it must start with a \"From \" line", name, line)
				}
				if q := bytes.TrimLeft(b, ">"); len(q) < len(b) && bytes.HasPrefix(q, []byte("From ")) {
					b = b[1:]
				}
			}
			// A message is cut at the first piece that does not fit, so it
			// never comes out with a hole in it.
			if !full && msg.Len()+len(b) <= DefaultMaxMessageBytes {
				msg.Write(b)
			} else {
				full = true
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
	}
	return sum, flush()
}
