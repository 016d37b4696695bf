package message

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unicode/utf8"

	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// HeaderError reports a header value that would break the message's
// header: a control character (CR or LF would start a new header field —
// header injection), invalid UTF-8, or a malformed address. Such a value is
// never written.
type HeaderError struct {
	Field string // header field name, e.g. "Subject"
	Value string // the offending value
	// Reason says what is wrong, e.g. "control character U+000A at byte 3".
	Reason string
}

func (e *HeaderError) Error() string {
	return fmt.Sprintf("message: %s header %q: %s", e.Field, e.Value, e.Reason)
}

// checkHeader rejects control characters (all of C0 but tab, and DEL:
// RFC 5322 §2.2 allows only printable characters and WSP in a field body,
// and CR LF ends the field) and invalid UTF-8 (the header is declared
// UTF-8 through RFC 2047 encoded words).
func checkHeader(field, v string) error {
	for i, r := range v {
		if r == utf8.RuneError && !strings.HasPrefix(v[i:], "\uFFFD") {
			return &HeaderError{Field: field, Value: v, Reason: fmt.Sprintf("invalid UTF-8 at byte %d", i)}
		}
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return &HeaderError{Field: field, Value: v, Reason: fmt.Sprintf("control character %U at byte %d", r, i)}
		}
	}
	return nil
}

// header builds the message header for one recipient, fields in the
// conventional order: From, To, Subject, Date, Message-Id, MIME-Version,
// List-Unsubscribe, List-Unsubscribe-Post, Content-Type,
// Content-Transfer-Encoding. (go-message
// writes fields last-added first, so they are added in reverse.)
func (t *Template) header(to string, v *view) (mail.Header, error) {
	var h mail.Header
	var b strings.Builder
	if err := t.subject.Execute(&b, v); err != nil {
		return h, fmt.Errorf("rendering subject for %s: %w", recipient(to, v), err)
	}
	subject := b.String()
	if err := checkHeader("Subject", subject); err != nil {
		return h, fmt.Errorf("rendering subject for %s: %w", recipient(to, v), err)
	}
	toValue, err := formatTo(to)
	if err != nil {
		return h, err
	}
	listUnsub, err := t.unsub.header(v)
	if err != nil {
		return h, err
	}
	// The bodies are rendered before the header is built: a single part's
	// Content-Transfer-Encoding depends on what its template produced.
	if err := t.renderBodies(v); err != nil {
		return h, err
	}

	ctype, params := t.topType()
	if !strings.HasPrefix(ctype, "multipart/") {
		body := v.text
		if t.html != nil {
			body = v.html
		}
		h.Set("Content-Transfer-Encoding", transferEncoding(body.Bytes()))
	}
	h.SetContentType(ctype, params)
	if listUnsub != "" {
		if t.unsub.OneClick {
			h.Set("List-Unsubscribe-Post", "List-Unsubscribe=One-Click") // RFC 8058 §3.1
		}
		h.Set("List-Unsubscribe", listUnsub)
	}
	h.Set("MIME-Version", "1.0")
	h.Set("Message-Id", newMessageID(t.domain))
	h.SetDate(t.opts.now())
	if longestWord(subject) > maxWord {
		h.Set("Subject", bEncodeWords(subject))
	} else {
		h.SetSubject(subject) // RFC 2047 Q-encoded when not plain ASCII
	}
	h.Set("To", toValue)
	h.SetAddressList("From", []*mail.Address{t.from})
	return h, nil
}

// topType is the message's top-level media type. A multipart type gets its
// boundary here so that go-message keeps the field where it is.
func (t *Template) topType() (string, map[string]string) {
	switch {
	case len(t.attachments) > 0:
		return "multipart/mixed", map[string]string{"boundary": newBoundary()}
	case t.text != nil && t.html != nil:
		return "multipart/alternative", map[string]string{"boundary": newBoundary()}
	}
	return t.singleType(), map[string]string{"charset": "utf-8"}
}

// newBoundary returns a random multipart boundary (RFC 2046 §5.1.1: at
// most 70 characters, not occurring in the content: 120 random bits make
// that certain in practice; quoted-printable and base64 output cannot
// contain "--" followed by it).
func newBoundary() string {
	var b [15]byte
	rand.Read(b[:])
	return "b" + hex.EncodeToString(b[:])
}

// maxWord is the longest run of non-blank characters a header value may
// have before it is written as encoded words: go-message folds only at
// blanks, and past the 998-octet line limit (RFC 5322 §2.1.1) it would
// have to insert a blank into the value.
const maxWord = 900

// longestWord returns the length in bytes of s's longest blank-free run.
func longestWord(s string) int {
	longest, run := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' || s[i] == '\t' {
			run = 0
			continue
		}
		run++
		longest = max(longest, run)
	}
	return longest
}

// bEncodeWords writes s as RFC 2047 "B" encoded words of at most 45 bytes
// of UTF-8 each (75 characters encoded, RFC 2047 §2), split at rune
// boundaries and separated by blanks, which decoders drop between encoded
// words (RFC 2047 §6.2); so any value folds without change.
func bEncodeWords(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		n := min(len(s), 45)
		for n < len(s) && n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("=?utf-8?b?")
		b.WriteString(base64.StdEncoding.EncodeToString([]byte(s[:n])))
		b.WriteString("?=")
		s = s[n:]
	}
	return b.String()
}

// recipient names the recipient in an error.
func recipient(to string, v *view) string {
	if v.Email != "" {
		return v.Email
	}
	return to
}

// GroupAddress returns the To of a message sent to many: an empty group
// (RFC 5322 §3.4) named after name, e.g. "newsletter:;". Characters a group
// name may not hold here (anything but ASCII letters, digits, space, '.',
// '-' and '_') are left out; "undisclosed-recipients:;" when none is left.
func GroupAddress(name string) string {
	name = strings.Map(func(r rune) rune {
		if r < utf8.RuneSelf && (r == ' ' || r == '.' || r == '-' || r == '_' ||
			'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			return r
		}
		return -1
	}, name)
	if strings.TrimSpace(name) == "" {
		name = "undisclosed-recipients"
	}
	return name + ":;"
}

// formatTo formats To: one address, or an empty group ("name:;", RFC
// 5322 §3.4) whose display name must be plain atoms and spaces.
func formatTo(to string) (string, error) {
	if err := checkHeader("To", to); err != nil {
		return "", err
	}
	if name, ok := strings.CutSuffix(to, ":;"); ok {
		if name == "" || strings.TrimLeft(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .-_") != "" {
			return "", &HeaderError{Field: "To", Value: to, Reason: "a group name must be letters, digits, space, '.', '-' or '_'"}
		}
		return to, nil
	}
	a, err := mail.ParseAddress(to)
	if err != nil {
		return "", &HeaderError{Field: "To", Value: to, Reason: err.Error()}
	}
	if len(a.Address) > 254 { // RFC 5321 §4.5.3.1.3: a path is at most 256 octets with "<>"
		return "", &HeaderError{Field: "To", Value: to, Reason: fmt.Sprintf("address is %d octets, more than 254", len(a.Address))}
	}
	return a.String(), nil
}

// writeMIME writes h and the body with go-message, streaming the templates'
// output and the attachments through the encoders into w:
//
//	text or HTML only:         text/plain | text/html
//	text and HTML:             multipart/alternative (text, html)
//	with attachments:          multipart/mixed (the above, files...)
//
// Text parts are rendered first (renderBodies) and go out 7bit when they
// are short-lined printable ASCII, else quoted-printable (transferEncoding);
// attachments are base64 (RFC 2045 §6.8).
func (t *Template) writeMIME(w io.Writer, h mail.Header, v *view) error {
	if _, ok := w.(*bytes.Buffer); ok { // buffering again would only copy
		return t.writeEntity(w, h, v)
	}
	bw := bufioPool.Get().(*bufio.Writer)
	bw.Reset(w)
	defer func() {
		bw.Reset(nil)
		bufioPool.Put(bw)
	}()
	if err := t.writeEntity(bw, h, v); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing message for %s: %w", v.Email, err)
	}
	return nil
}

// bufioPool holds the writers that turn go-message's many small writes
// into few large ones on a file or connection.
var bufioPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

func (t *Template) writeEntity(w io.Writer, h mail.Header, v *view) error {
	if len(t.attachments) == 0 && (t.text == nil || t.html == nil) {
		return t.writeSingle(w, h, v)
	}
	top, err := gomessage.CreateWriter(w, h.Header)
	if err != nil {
		return fmt.Errorf("writing message header: %w", err)
	}
	switch {
	case len(t.attachments) > 0:
		body := top
		if t.text != nil && t.html != nil {
			var ah gomessage.Header
			ah.SetContentType("multipart/alternative", nil)
			if body, err = top.CreatePart(ah); err != nil {
				return fmt.Errorf("writing multipart/alternative part: %w", err)
			}
			if err := t.writeAlternative(body, v); err != nil {
				return err
			}
		} else if err := t.writePart(top, v, t.html != nil); err != nil {
			return err
		}
		for _, a := range t.attachments {
			if err := a.write(top); err != nil {
				return err
			}
		}
	case t.text != nil && t.html != nil:
		if err := t.writeAlternative(top, v); err != nil {
			return err
		}
		return nil
	}
	if err := top.Close(); err != nil {
		return fmt.Errorf("closing message: %w", err)
	}
	return nil
}

// writeSingle writes a message of one text or HTML part: what
// gomessage.CreateWriter and Write would (the header, then the body through
// the encoder its Content-Transfer-Encoding names), without go-message's
// 7bit line wrapper, which looks at each byte to cut lines that a 7bit
// body (sevenBit) never has.
func (t *Template) writeSingle(w io.Writer, h mail.Header, v *view) error {
	if err := textproto.WriteHeader(w, h.Header.Header); err != nil {
		return fmt.Errorf("writing message header: %w", err)
	}
	body := v.text
	if t.html != nil {
		body = v.html
	}
	if h.Get("Content-Transfer-Encoding") == "7bit" {
		if err := writeCRLF(w, body.Bytes()); err != nil {
			return fmt.Errorf("writing %s body: %w", t.singleType(), err)
		}
		return nil
	}
	qp := quotedprintable.NewWriter(w)
	if _, err := qp.Write(body.Bytes()); err != nil {
		return fmt.Errorf("writing %s body: %w", t.singleType(), err)
	}
	if err := qp.Close(); err != nil {
		return fmt.Errorf("writing %s body: %w", t.singleType(), err)
	}
	return nil
}

// writeCRLF writes b, whose line ends are LF or CRLF, with CRLF line ends.
func writeCRLF(w io.Writer, b []byte) error {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			_, err := w.Write(b)
			return err
		}
		if i > 0 && b[i-1] == '\r' {
			if _, err := w.Write(b[:i+1]); err != nil {
				return err
			}
		} else {
			if _, err := w.Write(b[:i]); err != nil {
				return err
			}
			if _, err := io.WriteString(w, "\r\n"); err != nil {
				return err
			}
		}
		b = b[i+1:]
	}
	return nil
}

func (t *Template) singleType() string {
	if t.html != nil {
		return "text/html"
	}
	return "text/plain"
}

// writeAlternative writes the text and HTML parts into mw and closes it.
func (t *Template) writeAlternative(mw *gomessage.Writer, v *view) error {
	if err := t.writePart(mw, v, false); err != nil {
		return err
	}
	if err := t.writePart(mw, v, true); err != nil {
		return err
	}
	if err := mw.Close(); err != nil {
		return fmt.Errorf("closing multipart/alternative: %w", err)
	}
	return nil
}

// writePart adds an inline text or HTML part, already rendered into v, to
// mw.
func (t *Template) writePart(mw *gomessage.Writer, v *view, html bool) error {
	ctype, body := "text/plain", v.text
	if html {
		ctype, body = "text/html", v.html
	}
	var ph gomessage.Header
	ph.SetContentType(ctype, map[string]string{"charset": "utf-8"})
	ph.Set("Content-Transfer-Encoding", transferEncoding(body.Bytes()))
	pw, err := mw.CreatePart(ph)
	if err != nil {
		return fmt.Errorf("writing %s part: %w", ctype, err)
	}
	if _, err := pw.Write(body.Bytes()); err != nil {
		return fmt.Errorf("writing %s part: %w", ctype, err)
	}
	if err := pw.Close(); err != nil {
		return fmt.Errorf("closing %s part: %w", ctype, err)
	}
	return nil
}

// renderBodies runs the text and HTML templates into pooled buffers in v
// (released by v.release), so that each part's transfer encoding can be
// chosen from its content.
func (t *Template) renderBodies(v *view) error {
	if t.text != nil {
		v.text = bufPool.Get().(*bytes.Buffer)
		if err := t.text.Execute(v.text, v); err != nil {
			return fmt.Errorf("rendering text body for %s: %w", v.Email, err)
		}
	}
	if t.html != nil {
		v.html = bufPool.Get().(*bytes.Buffer)
		if t.htmlPlan != nil {
			if err := t.htmlPlan.execute(v.html, v); err == nil {
				return nil
			}
			v.html.Reset() // render again the ordinary way, for its error
		}
		if err := t.html.Execute(v.html, v); err != nil {
			return fmt.Errorf("rendering HTML body for %s: %w", v.Email, err)
		}
	}
	return nil
}

// release returns v's body buffers to the pool.
func (v *view) release() {
	if v == nil {
		return
	}
	if v.text != nil {
		putBuf(v.text)
		v.text = nil
	}
	if v.html != nil {
		putBuf(v.html)
		v.html = nil
	}
}

// maxLine7bit is the longest line, in octets without its CRLF, that a
// 7bit body may have (RFC 5322 §2.1.1, RFC 2045 §2.7; RFC 5321 §4.5.3.1.6).
const maxLine7bit = 998

// transferEncoding returns the Content-Transfer-Encoding for a rendered
// text body: "7bit", written as it is (go-message only turns its LF line
// ends into CRLF), when that is safe, else "quoted-printable" (safe for any
// line length and 8-bit text, RFC 2045 §6.7). 7bit needs (RFC 2045 §2.7):
// US-ASCII only, no NUL, CR only before LF, lines of at most 998 octets.
// It is also refused for control characters other than tab (some relays
// mangle them) and for a line starting with "From " (an mbox delivery
// would turn it into ">From ", changing the text and breaking the DKIM
// body hash; quoted-printable is what it was before, unchanged). A line
// starting with "." is fine: the SMTP client dot-stuffs it on the wire
// and the receiver removes the stuffing, so DKIM, which hashes the
// unstuffed body, still verifies.
func transferEncoding(b []byte) string {
	if sevenBit(b) {
		return "7bit"
	}
	return "quoted-printable"
}

// sevenBit reports whether b can go out as a 7bit body (transferEncoding).
func sevenBit(b []byte) bool {
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
			line = bytes.TrimSuffix(line, []byte{'\r'}) // CRLF; a bare CR fails below
		} else {
			line, b = b, nil
		}
		if len(line) > maxLine7bit || bytes.HasPrefix(line, []byte("From ")) || !printableASCII(line) {
			return false
		}
	}
	return true
}

// printableASCII reports whether p holds only printable US-ASCII (0x20 to
// 0x7e) and tabs, eight bytes at a time.
func printableASCII(p []byte) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	for len(p) >= 8 {
		x := binary.LittleEndian.Uint64(p)
		if x&hi != 0 {
			return false // not ASCII
		}
		// A byte below 0x20 or equal to 0x7f (exact for bytes below 0x80).
		if (x-0x20*lo)&^x&hi != 0 || ((x^0x7f*lo)-lo)&^(x^0x7f*lo)&hi != 0 {
			if !printableBytes(p[:8]) {
				return false
			}
		}
		p = p[8:]
	}
	return printableBytes(p)
}

func printableBytes(p []byte) bool {
	for _, c := range p {
		if (c < 0x20 && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// Attachment is a file attached to every message under a name and media
// type of its own.
type Attachment struct {
	// Path is the file, opened and streamed at each build. Required; it must
	// be a regular file when Parse runs.
	Path string
	// Name is the filename in Content-Disposition (RFC 2183), RFC 2231
	// encoded when it is not plain ASCII; it must pass CheckFilename.
	// Default: the base name of Path.
	Name string
	// MediaType is the part's Content-Type, e.g. "application/pdf". Default:
	// from Name's extension, else application/octet-stream.
	MediaType string
}

// attachment is a checked Attachment.
type attachment struct {
	path, name, mediaType string
	params                map[string]string
}

func newAttachment(path string) (attachment, error) {
	return Attachment{Path: path}.check()
}

func (f Attachment) check() (attachment, error) {
	fi, err := os.Stat(f.Path)
	if err != nil {
		return attachment{}, fmt.Errorf("attachment: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return attachment{}, fmt.Errorf("attachment %s: not a regular file", f.Path)
	}
	a := attachment{path: f.Path, name: f.Name, mediaType: "application/octet-stream"}
	if a.name == "" {
		a.name = filepath.Base(f.Path)
	}
	if err := CheckFilename(a.name); err != nil {
		return attachment{}, fmt.Errorf("attachment %s: %w", f.Path, err)
	}
	mt := f.MediaType
	if mt == "" {
		mt = mime.TypeByExtension(filepath.Ext(a.name))
	}
	if mt != "" {
		t, params, err := mime.ParseMediaType(mt)
		if err != nil && f.MediaType != "" {
			return attachment{}, fmt.Errorf("attachment %s: media type %q: %w", f.Path, f.MediaType, err)
		}
		if err == nil {
			a.mediaType, a.params = t, params
		}
	}
	return a, nil
}

// MaxFilename is the longest attachment file name accepted, in octets
// (most file systems' limit, and far below what fits a header).
const MaxFilename = 255

// CheckFilename checks an attachment's file name for Content-Disposition:
// not empty, at most MaxFilename octets, valid UTF-8 without control
// characters (no header injection), no path separator and not "." or
// "..", so a receiver that saves it under that name stays in its
// directory. Non-ASCII names are fine: go-message writes them RFC 2231
// encoded (filename*=utf-8”...).
func CheckFilename(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("file name %q: not a file name", name)
	case len(name) > MaxFilename:
		return fmt.Errorf("file name %q: %d octets, more than %d", name, len(name), MaxFilename)
	case strings.ContainsAny(name, `/\`):
		return fmt.Errorf("file name %q: contains a path separator", name)
	}
	if err := checkHeader("Content-Disposition", name); err != nil {
		return fmt.Errorf("file name: %w", err)
	}
	if mime.FormatMediaType("attachment", map[string]string{"filename": name}) == "" {
		return fmt.Errorf("file name %q: cannot be written as a Content-Disposition parameter", name)
	}
	return nil
}

// write streams the file into a base64 attachment part.
func (a attachment) write(mw *gomessage.Writer) error {
	f, err := os.Open(a.path)
	if err != nil {
		return fmt.Errorf("attachment: %w", err)
	}
	defer f.Close()
	var ah mail.AttachmentHeader
	ah.SetContentType(a.mediaType, a.params)
	// RFC 2183 with an RFC 2231 encoded name when it is not ASCII
	// (filename*=utf-8''...), as mime.FormatMediaType writes it. go-message's
	// SetFilename and SetContentDisposition would write RFC 2047 encoded
	// words, which RFC 2047 §5 does not allow in a parameter; its reader
	// decodes either. A name of MaxFilename octets, all escaped, stays
	// within the 998-octet line (RFC 5322 §2.1.1).
	ah.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": a.name}))
	ah.Set("Content-Transfer-Encoding", "base64")
	pw, err := mw.CreatePart(ah.Header)
	if err != nil {
		return fmt.Errorf("writing attachment %s: %w", a.path, err)
	}
	if _, err := io.Copy(pw, f); err != nil {
		return fmt.Errorf("writing attachment %s: %w", a.path, err)
	}
	if err := pw.Close(); err != nil {
		return fmt.Errorf("writing attachment %s: %w", a.path, err)
	}
	return nil
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newMessageID returns a unique Message-ID (RFC 5322 §3.6.4): 120 random
// bits in base32 at the From address's domain.
func newMessageID(domain string) string {
	var b [15]byte
	rand.Read(b[:])
	return "<" + strings.ToLower(idEncoding.EncodeToString(b[:])) + "@" + domain + ">"
}
