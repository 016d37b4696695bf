package contact

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Reject is one input row left out of an import, with the reason.
type Reject struct {
	Line      int64  // file line where the row starts (1-based)
	Reason    string // why it was left out
	Raw       string // the row as read, re-encoded as CSV ("" when it could not be parsed)
	Duplicate bool   // the address appeared earlier in the file; the first occurrence was kept
}

// delimiters are the field separators Import detects, in order of
// preference on a tie.
const delimiters = ",;\t|"

// openCSV returns a reader over r's decompressed text: gzip input is
// recognized by its magic bytes (RFC 1952 §2.3.1: 0x1f 0x8b) and a UTF-8
// byte order mark is dropped.
func openCSV(r io.Reader) (*bufio.Reader, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("opening gzip input: %w", err)
		}
		br = bufio.NewReaderSize(gz, 256<<10)
	}
	if bom, _ := br.Peek(3); bytes.Equal(bom, []byte("\xef\xbb\xbf")) {
		br.Discard(3)
	}
	return br, nil
}

// detectDelimiter guesses the field separator from the first line: the one
// of , ; TAB | that occurs most often outside quotes (ties go to the earlier
// in that list), ',' when none does. A header line is the best sample there
// is: its names rarely hold separators.
func detectDelimiter(br *bufio.Reader) rune {
	sample, _ := br.Peek(64 << 10) // a short file returns what there is
	if i := bytes.IndexByte(sample, '\n'); i >= 0 {
		sample = sample[:i]
	}
	var counts [len(delimiters)]int
	quoted := false
	for _, c := range sample {
		if c == '"' {
			quoted = !quoted
			continue
		}
		if !quoted {
			if i := strings.IndexByte(delimiters, c); i >= 0 {
				counts[i]++
			}
		}
	}
	best := 0
	for i := range counts {
		if counts[i] > counts[best] {
			best = i
		}
	}
	return rune(delimiters[best])
}

// newCSVReader returns a csv.Reader set up for streaming untrusted input:
// strict quotes (RFC 4180 §2), a varying field count (checked per row, so
// a short row is rejected rather than fatal) and a reused record slice.
func newCSVReader(br *bufio.Reader, delim rune) (*csv.Reader, error) {
	if delim == 0 {
		delim = detectDelimiter(br)
	}
	if delim == '"' || delim == '\r' || delim == '\n' || delim == utf8.RuneError || !utf8.ValidRune(delim) {
		return nil, fmt.Errorf("delimiter %q is not usable", delim)
	}
	cr := csv.NewReader(br)
	cr.Comma = delim
	cr.LazyQuotes = false
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	return cr, nil
}

// readHeader reads the header row and returns its trimmed names, checking
// that they are usable as attribute keys.
func readHeader(cr *csv.Reader, source string) ([]string, error) {
	rec, err := cr.Read()
	if err == io.EOF {
		return nil, fmt.Errorf("%s: empty input, expected a header row with an email column", source)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: reading header: %w", source, err)
	}
	return readHeaderFrom(rec, source)
}

// readHeaderFrom checks a header row's names (trimmed, UTF-8, non-empty,
// distinct case-insensitively) and returns them.
func readHeaderFrom(rec []string, source string) ([]string, error) {
	names := make([]string, len(rec))
	seen := make(map[string]int, len(rec))
	for i, f := range rec {
		f = strings.TrimSpace(f)
		if !utf8.ValidString(f) || strings.IndexByte(f, 0) >= 0 {
			return nil, fmt.Errorf("%s:1: header column %d is not valid UTF-8 text", source, i+1)
		}
		if f == "" {
			return nil, fmt.Errorf("%s:1: header column %d has no name; name it or remove the column", source, i+1)
		}
		key := strings.ToLower(f)
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("%s:1: header columns %d and %d are both named %q", source, j+1, i+1, f)
		}
		seen[key] = i
		names[i] = f
	}
	return names, nil
}

// columnIndex returns the index of the header column named name
// (case-insensitively), or -1.
func columnIndex(header []string, name string) int {
	for i, h := range header {
		if strings.EqualFold(h, strings.TrimSpace(name)) {
			return i
		}
	}
	return -1
}

// rowReason checks what every field of a row must be for PostgreSQL to take
// it: valid UTF-8 without NUL bytes (a text value can hold neither, and one
// such value would fail the whole COPY).
func rowReason(header []string, rec []string) string {
	if len(rec) != len(header) {
		return fmt.Sprintf("has %d fields, the header has %d", len(rec), len(header))
	}
	for i, f := range rec {
		if !utf8.ValidString(f) {
			return fmt.Sprintf("column %q is not valid UTF-8", header[i])
		}
		if strings.IndexByte(f, 0) >= 0 {
			return fmt.Sprintf("column %q contains a NUL byte", header[i])
		}
	}
	return ""
}

// parseErrorReason describes a csv.ParseError without its position, which
// the Reject carries.
func parseErrorReason(pe *csv.ParseError) string {
	reason := "malformed CSV: " + pe.Err.Error()
	if pe.Line != pe.StartLine {
		reason += " (at line " + strconv.Itoa(pe.Line) + ")"
	}
	return reason
}

// rejectWriter writes rejects as CSV (line,reason,raw), with the header
// written before the first reject, so that no rejects means no output.
type rejectWriter struct {
	w        *csv.Writer
	started  bool
	onReject func(Reject) // the caller's OnReject, or nil

	raw   bytes.Buffer
	rawCW *csv.Writer
}

func newRejectWriter(w io.Writer, delim rune, onReject func(Reject)) *rejectWriter {
	rw := &rejectWriter{onReject: onReject}
	if w != nil {
		rw.w = csv.NewWriter(w)
	}
	rw.rawCW = csv.NewWriter(&rw.raw)
	rw.rawCW.Comma = delim
	return rw
}

// encode re-encodes a record as one CSV row in the input's delimiter.
func (rw *rejectWriter) encode(rec []string) string {
	rw.raw.Reset()
	rw.rawCW.Write(rec)
	rw.rawCW.Flush()
	return strings.TrimSuffix(rw.raw.String(), "\n")
}

// write queues one reject and hands it to the OnReject callback; errors of
// the underlying writer show at flush.
func (rw *rejectWriter) write(r Reject) {
	if rw.onReject != nil {
		rw.onReject(r)
	}
	if rw.w == nil {
		return
	}
	if !rw.started {
		rw.started = true
		rw.w.Write([]string{"line", "reason", "raw"})
	}
	rw.w.Write([]string{strconv.FormatInt(r.Line, 10), r.Reason, r.Raw})
}

func (rw *rejectWriter) flush() error {
	if rw.w == nil {
		return nil
	}
	rw.w.Flush()
	if err := rw.w.Error(); err != nil {
		return fmt.Errorf("writing rejects: %w", err)
	}
	return nil
}

// isParseError reports whether err is a per-row CSV syntax error (after which
// reading goes on at the next row) and returns it.
func isParseError(err error) (*csv.ParseError, bool) {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return pe, true
	}
	return nil, false
}
