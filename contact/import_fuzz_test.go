package contact

import (
	"bytes"
	"io"
	"testing"
)

// FuzzImportRows runs the reading and validation half of Import (no
// database) over arbitrary input: it must never panic, every row must be
// either staged or rejected, staged rows must carry a valid address, and
// line numbers must grow.
func FuzzImportRows(f *testing.F) {
	for _, s := range []string{
		"email,name\nann@example.com,Ann\n",
		"\xef\xbb\xbfemail;name;city\r\nann@example.com;Ann;\"Oslo\r\nNorth\"\r\nbad;x;y\r\n",
		"email\n\"unterminated\n",
		"email,name\na@b.c,\"x\"y\"\n",
		"email|x\n\x00@example.com|\xff\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br, err := openCSV(bytes.NewReader(data))
		if err != nil {
			return
		}
		cr, err := newCSVReader(br, 0)
		if err != nil {
			t.Fatalf("newCSVReader with a detected delimiter: %v", err)
		}
		header, err := readHeader(cr, "fuzz")
		if err != nil {
			return
		}
		cols, err := mapColumns(header, nil, "fuzz")
		if err != nil {
			return
		}
		var lastLine int64
		opts := &ImportOptions{OnReject: func(r Reject) {
			if r.Line <= lastLine {
				t.Fatalf("reject at line %d after line %d", r.Line, lastLine)
			}
			lastLine = r.Line
		}}
		sum := &Summary{}
		src := &contactRows{cr: cr, header: header, cols: cols, sum: sum, opts: opts,
			rw: newRejectWriter(io.Discard, cr.Comma, opts.OnReject), vals: make([]any, 3, 4)}
		if len(cols.attrs) > 0 {
			src.attrs = make([]string, len(cols.attrs))
			src.vals = append(src.vals, src.attrs)
		}
		var staged int64
		for src.Next() {
			staged++
			line := src.vals[0].(int64)
			if line <= lastLine {
				t.Fatalf("row at line %d after line %d", line, lastLine)
			}
			lastLine = line
			email := src.vals[1].(string)
			if again, err := ParseAddress(email); err != nil || again != email {
				t.Fatalf("staged address %q does not parse to itself: %q, %v", email, again, err)
			}
		}
		if src.err == nil && staged+sum.Rejected != sum.Rows {
			t.Fatalf("rows %d, staged %d + rejected %d", sum.Rows, staged, sum.Rejected)
		}
	})
}
