package smtp

import (
	"bufio"
	"bytes"
)

// maxLineOctets is the longest text line without its CRLF (RFC 5321
// §4.5.3.1.6: 1000 octets including the CRLF).
const maxLineOctets = 998

// dotWriter encodes a message body for the DATA phase as it streams by,
// after net/textproto's dotWriter:
//
//   - every line ending (CRLF, a lone LF, a lone CR) becomes CRLF, so no
//     bare CR or LF reaches the wire and "\n.\n" or "\r\n.\n" in a body
//     cannot end the data early (the SMTP smuggling of CVE-2023-51766);
//   - a line starting with "." gets another "." (RFC 5321 §4.5.2);
//   - a line longer than maxLineOctets fails with ErrLineTooLong;
//   - close ends the data with CRLF "." CRLF.
//
// It holds no more of the body than the chunk it is given.
type dotWriter struct {
	w     *bufio.Writer
	start bool // at the start of a line
	cr    bool // a CR was read and its line ending not yet written
	line  int  // octets of the current line written so far
	lines int  // lines ended so far
	n     int64
}

func newDotWriter(w *bufio.Writer) *dotWriter {
	return &dotWriter{w: w, start: true}
}

var crlf = []byte("\r\n")

func (d *dotWriter) endLine() error {
	d.start, d.line = true, 0
	d.lines++
	d.n += 2
	_, err := d.w.Write(crlf)
	return err
}

// Write implements io.Writer. It returns the number of input octets
// consumed; on ErrLineTooLong the output is incomplete and the caller must
// not end the data.
func (d *dotWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := p[0]
		switch {
		case d.cr:
			d.cr = false
			if err := d.endLine(); err != nil {
				return n, err
			}
			if c == '\n' {
				p, n = p[1:], n+1
			}
			continue
		case c == '\r':
			d.cr = true
			p, n = p[1:], n+1
			continue
		case c == '\n':
			if err := d.endLine(); err != nil {
				return n, err
			}
			p, n = p[1:], n+1
			continue
		}
		end := lineEnd(p)
		run := p[:end]
		if d.line+len(run) > maxLineOctets {
			return n, ErrLineTooLong
		}
		if d.start && run[0] == '.' {
			if err := d.w.WriteByte('.'); err != nil {
				return n, err
			}
			d.n++
		}
		d.start = false
		if _, err := d.w.Write(run); err != nil {
			return n, err
		}
		d.line += len(run)
		d.n += int64(len(run))
		p, n = p[end:], n+end
	}
	return n, nil
}

// close ends the last line if needed and writes the final "." line. It
// does not flush.
func (d *dotWriter) close() error {
	if d.cr || !d.start {
		d.cr = false
		if err := d.endLine(); err != nil {
			return err
		}
	}
	_, err := d.w.WriteString(".\r\n")
	return err
}

// lineEnd returns the index of the first CR or LF in p, or len(p): two
// IndexByte scans (vectorized) beat one IndexAny.
func lineEnd(p []byte) int {
	end := bytes.IndexByte(p, '\n')
	if end < 0 {
		end = len(p)
	}
	if cr := bytes.IndexByte(p[:end], '\r'); cr >= 0 {
		end = cr
	}
	return end
}
