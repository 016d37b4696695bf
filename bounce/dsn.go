package bounce

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // DSNs come in every charset
	"github.com/emersion/go-message/textproto"
)

// Class is how a recipient's bounce is counted.
type Class string

const (
	// Hard is a permanent failure (Action: failed with a 5.x.x status):
	// the delivery is marked bounced and the address suppressed.
	Hard Class = "hard"
	// Soft is a transient one (a 4.x.x status, Action: delayed, or a bounce
	// without a status): counted, nothing suppressed.
	Soft Class = "soft"
	// None is not a bounce: a success notification (delivered, relayed,
	// expanded).
	None Class = ""
)

// Report is what a bounce message says.
type Report struct {
	// MessageID is the bounce's own Message-ID, without angle brackets; ""
	// if it has none.
	MessageID string
	// Subject is the bounce's Subject, for logs.
	Subject string
	// DeliveryStatus is true when the message holds an RFC 3464
	// message/delivery-status part (or RFC 6533's global form); false when
	// Recipients were read from its text (a non-standard bounce).
	DeliveryStatus bool
	// ReportingMTA is the per-message Reporting-MTA field (RFC 3464 §2.2.2).
	ReportingMTA string
	// EnvelopeID is the per-message Original-Envelope-Id field (RFC 3464
	// §2.2.1): the ENVID the sender gave (RFC 3461 §4.4), xtext decoded;
	// "" when absent.
	EnvelopeID string
	// Recipients are the per-recipient blocks (RFC 3464 §2.3). For a
	// non-standard bounce, at most one entry per X-Failed-Recipients
	// address (or one without an address), with the status found in the
	// text.
	Recipients []Recipient
	// DeliveredTo are the addresses the bounce was delivered to, as the
	// delivering MTA recorded them (Delivered-To, X-Original-To,
	// Envelope-To, X-Envelope-To), then its To addresses: where a signed
	// return path is looked for when the envelope is not at hand.
	DeliveredTo []string
	// AutoReply is true for an automatic reply, not a bounce: a message
	// without a delivery-status part or a status in its text that has a
	// vacation/out-of-office subject, or Auto-Submitted: auto-replied (RFC
	// 3834 §5) and a From that is no mailer daemon.
	AutoReply bool
}

// Recipient is one recipient's delivery status.
type Recipient struct {
	// FinalRecipient is the address the reporting MTA tried (RFC 3464
	// §2.3.2), lower-cased; "" when unknown.
	FinalRecipient string
	// OriginalRecipient is the address as the sender gave it (ORCPT, RFC
	// 3464 §2.3.1), lower-cased; usually "".
	OriginalRecipient string
	// Action is failed, delayed, delivered, relayed or expanded (RFC 3464
	// §2.3.3), lower-cased.
	Action string
	// Status is the enhanced status code, e.g. "5.1.1" (RFC 3463); "" when
	// none was found.
	Status string
	// RemoteMTA is the MTA that gave the diagnostic (RFC 3464 §2.3.5).
	RemoteMTA string
	// Diagnostic is the remote MTA's reply (the text after "smtp;" of
	// Diagnostic-Code, RFC 3464 §2.3.6), unfolded, or the line of a
	// non-standard bounce's text that held the status.
	Diagnostic string
	// Code is the SMTP reply code at the start of Diagnostic; 0 if none.
	Code int
}

// Address is the recipient's address as blaster knew it: the original
// recipient when reported, else the final one.
func (r Recipient) Address() string {
	if r.OriginalRecipient != "" {
		return r.OriginalRecipient
	}
	return r.FinalRecipient
}

// Class classifies the recipient's status: Hard for a failure with a 5.x.x
// status (or, without a status, a 5xx reply), Soft for any other failure or
// delay, None for success notifications. A failure with a 4.x.x status (a
// message that expired in a queue, 4.4.7) is Soft: the address may be
// fine.
func (r Recipient) Class() Class {
	switch r.Action {
	case "delivered", "relayed", "expanded":
		return None
	case "delayed":
		return Soft
	}
	switch {
	case strings.HasPrefix(r.Status, "5."):
		return Hard
	case strings.HasPrefix(r.Status, "4."):
		return Soft
	case r.Status == "" && r.Code >= 500 && r.Code < 600:
		return Hard
	case strings.HasPrefix(r.Status, "2."):
		return None
	}
	return Soft
}

// Limits on what Parse reads.
const (
	// maxStatusBytes bounds a delivery-status part: a few hundred bytes per
	// recipient; 1 MiB holds thousands.
	maxStatusBytes = 1 << 20
	// maxTextBytes is how much of the human-readable text is searched for a
	// status when there is no delivery-status part.
	maxTextBytes = 16 << 10
	// maxRecipients bounds the recipients taken from one report.
	maxRecipients = 1000
	// maxMIMEDepth bounds how deep in nested multiparts a report is looked
	// for: a DSN's is one level down (RFC 6522 §3), a forwarded one a few
	// more. Walking N levels costs N² (go-message copies the part path for
	// each part and reads it through every enclosing multipart reader).
	maxMIMEDepth = 16
)

// errTooDeep ends the walk of a message nested past maxMIMEDepth.
var errTooDeep = errors.New("MIME parts nested too deep")

// ErrNotMessage is returned (wrapped) for input that is not an RFC 5322
// message at all.
var ErrNotMessage = errors.New("not a mail message")

// Parse reads one message and returns what it says as a bounce. A message
// that is no bounce at all (spam to the return path, an auto-reply) parses
// without error and yields no Recipients, or AutoReply. The error is for
// input whose header cannot be read.
func Parse(r io.Reader) (*Report, error) {
	e, err := message.Read(r)
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return nil, fmt.Errorf("%w: %w", ErrNotMessage, err)
	}
	rep := &Report{}
	h := e.Header
	rep.MessageID = strings.TrimSpace(strings.Trim(strings.TrimSpace(h.Get("Message-Id")), "<>"))
	rep.Subject, _ = h.Text("Subject")
	for _, k := range []string{"Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To"} {
		for _, v := range h.Values(k) {
			rep.DeliveredTo = append(rep.DeliveredTo, addresses(v)...)
		}
	}
	var failed []string
	for _, v := range h.Values("X-Failed-Recipients") { // Exim's
		failed = append(failed, addresses(v)...)
	}

	var text string
	// A broken MIME structure ends the walk; what was read by then counts.
	_ = e.Walk(func(path []int, part *message.Entity, err error) error {
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			return err
		}
		if len(path) > maxMIMEDepth {
			return errTooDeep
		}
		t, _, _ := part.Header.ContentType()
		switch {
		case t == "message/delivery-status" || t == "message/global-delivery-status":
			if rep.DeliveryStatus {
				return nil // one per report (RFC 6522 §3)
			}
			rep.DeliveryStatus = true
			return parseDeliveryStatus(part.Body, rep)
		case t == "text/plain" || (t == "" && path == nil):
			if text == "" {
				b, _ := io.ReadAll(io.LimitReader(part.Body, maxTextBytes))
				text = string(b)
			}
		}
		// message/rfc822 and text/rfc822-headers (the returned message) are
		// leaves to Walk: their text is never read as the bounce's.
		return nil
	})
	if rep.DeliveryStatus {
		// DSNs carry Auto-Submitted: auto-replied too (RFC 3834 §5): the
		// report decides.
		return rep, nil
	}
	if vacationSubject(rep.Subject) {
		rep.AutoReply = true
		return rep, nil
	}
	// A non-standard bounce: the status from its text, for the recipients
	// it names in X-Failed-Recipients (or none, for the return path to say).
	st, code, line := statusFromText(text)
	if st == "" && code != 0 && len(failed) == 0 && !fromMailer(h) {
		// A line that merely starts with three digits ("550 Market
		// Street" in an auto-response's signature) is a reply code only
		// in a mail system's message: never suppress on a guess.
		st, code, line = "", 0, ""
	}
	if st == "" && code == 0 {
		rep.AutoReply = autoReplied(h)
		return rep, nil
	}
	action := "failed"
	if strings.HasPrefix(st, "4.") || (st == "" && code < 500) {
		action = "delayed"
	}
	if len(failed) == 0 {
		failed = []string{""}
	}
	for _, a := range failed {
		rep.Recipients = append(rep.Recipients, Recipient{FinalRecipient: a, Action: action, Status: st, Code: code, Diagnostic: line})
	}
	return rep, nil
}

// vacationSubject reports the subject of a vacation or out-of-office
// reply.
func vacationSubject(subject string) bool {
	subj := strings.ToLower(subject)
	for _, s := range []string{"out of office", "out of the office", "autoreply", "auto-reply", "automatic reply", "vacation"} {
		if strings.Contains(subj, s) {
			return true
		}
	}
	return false
}

// autoReplied reports an automatic reply (RFC 3834 §5: Auto-Submitted:
// auto-replied) not sent by a mailer daemon, whose bounces carry the same
// field.
func autoReplied(h message.Header) bool {
	as := strings.ToLower(strings.TrimSpace(h.Get("Auto-Submitted")))
	return strings.HasPrefix(as, "auto-replied") && !fromMailer(h)
}

// fromMailer reports a message from a mail system (a mailer daemon or a
// postmaster) rather than from a person or their auto-responder.
func fromMailer(h message.Header) bool {
	from := strings.ToLower(h.Get("From"))
	return strings.Contains(from, "mailer-daemon") || strings.Contains(from, "postmaster")
}

// parseDeliveryStatus reads the field blocks of a delivery-status body
// (RFC 3464 §2.1): the per-message block, then one block per recipient,
// separated by blank lines. Header syntax, so go-message's textproto reads
// each block; a malformed line is skipped rather than losing the rest of
// its block.
func parseDeliveryStatus(body io.Reader, rep *Report) error {
	br := bufio.NewReader(io.LimitReader(body, maxStatusBytes))
	var blocks []textproto.Header
	var cur []textproto.Header // parts of one block split by malformed lines
	flush := func() {
		if len(cur) == 0 {
			return
		}
		merged := textproto.Header{}
		for _, h := range cur {
			for f := h.Fields(); f.Next(); {
				merged.Add(f.Key(), f.Value())
			}
		}
		if merged.Len() > 0 {
			blocks = append(blocks, merged)
		}
		cur = nil
	}
	for len(blocks) <= maxRecipients {
		if cur == nil && skipBlankLines(br) != nil {
			break
		}
		// ReadHeader consumes at least one line per call: the loop ends.
		h, err := textproto.ReadHeader(br)
		cur = append(cur, h)
		if err == nil {
			flush()
			continue
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		// A malformed line: ReadHeader consumed it; the block goes on.
	}
	flush()
	if len(blocks) == 0 {
		return nil
	}
	rep.ReportingMTA = typedValue(blocks[0].Get("Reporting-Mta"))
	rep.EnvelopeID = decodeXtext(strings.TrimSpace(blocks[0].Get("Original-Envelope-Id")))
	for i, b := range blocks {
		if !b.Has("Final-Recipient") && !b.Has("Original-Recipient") && !b.Has("Action") {
			continue // the per-message block
		}
		if i == 0 && b.Has("Reporting-Mta") && !b.Has("Action") {
			continue
		}
		rcpt := Recipient{
			FinalRecipient:    recipientAddress(b.Get("Final-Recipient")),
			OriginalRecipient: recipientAddress(b.Get("Original-Recipient")),
			Action:            strings.ToLower(firstWord(b.Get("Action"))),
			Status:            statusCode(firstWord(b.Get("Status"))),
			RemoteMTA:         collapseSpace(typedValue(b.Get("Remote-Mta"))),
			Diagnostic:        collapseSpace(typedValue(b.Get("Diagnostic-Code"))),
		}
		rcpt.Code = leadingCode(rcpt.Diagnostic)
		if rcpt.Status == "" {
			rcpt.Status = statusCode(enhancedIn(rcpt.Diagnostic))
		}
		rep.Recipients = append(rep.Recipients, rcpt)
		if len(rep.Recipients) == maxRecipients {
			break
		}
	}
	return nil
}

// decodeXtext undoes RFC 3461 §4's xtext ("+" and two upper-case hex
// digits for a byte); a malformed escape is kept as it is.
func decodeXtext(s string) string {
	if !strings.Contains(s, "+") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '+' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// recipientAddress returns the address of a Final-Recipient or
// Original-Recipient field (RFC 3464 §2.3.1, §2.3.2), lower-cased. A value
// of RFC 6533's utf-8 type (§3: "utf-8; j\x{F6}rg@example.test" in a
// message/global-delivery-status part, or raw UTF-8) has its \x{HEX}
// escapes decoded, so it names the address as blaster sent it in ORCPT
// and the bounce matches the delivery; an rfc822 value is used as it is.
func recipientAddress(field string) string {
	a := bareAddress(typedValue(field))
	if typ, _, ok := strings.Cut(field, ";"); ok && strings.EqualFold(strings.TrimSpace(typ), "utf-8") {
		// Before lower-casing, which would touch the hex digits.
		a = decodeUTF8AddrXtext(a)
	}
	return strings.ToLower(a)
}

// decodeUTF8AddrXtext undoes the EmbeddedUnicodeChar escapes ("\x{"
// HEXPOINT "}") of RFC 6533 §3's utf-8-addr-xtext and utf-8-addr-unitext;
// other characters, raw UTF-8 included, are kept. It is lenient where
// reading costs nothing (lower-case hex digits, leading zeros) and keeps
// s as it is when an escape is malformed, names no Unicode scalar value,
// or names an ASCII control character: no address blaster sends holds one,
// and a NUL would make PostgreSQL refuse the lookup. A backslash not
// followed by "x{" is literal (a quoted local part of the raw form).
func decodeUTF8AddrXtext(s string) string {
	if !strings.Contains(s, `\x{`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if !strings.HasPrefix(s[i:], `\x{`) {
			b.WriteByte(s[i])
			continue
		}
		end := strings.IndexByte(s[i+3:], '}')
		if end < 1 || end > 6 {
			return s
		}
		v, err := strconv.ParseUint(s[i+3:i+3+end], 16, 32)
		r := rune(v)
		if err != nil || !utf8.ValidRune(r) || r < 0x20 || r == 0x7f {
			return s
		}
		b.WriteRune(r)
		i += 3 + end // at the "}"
	}
	return b.String()
}

// skipBlankLines consumes empty lines; it returns io.EOF at the end.
func skipBlankLines(br *bufio.Reader) error {
	for {
		b, err := br.Peek(1)
		if err != nil {
			return io.EOF
		}
		switch b[0] {
		case '\n':
			br.Discard(1)
		case '\r':
			b, err := br.Peek(2)
			if err != nil || b[1] != '\n' {
				return nil
			}
			br.Discard(2)
		default:
			return nil
		}
	}
}

// typedValue returns the value of an "address-type; value" or
// "diagnostic-type; text" field without its type (RFC 3464 §2.1.2), and
// without a trailing comment of a Remote-MTA.
func typedValue(v string) string {
	v = strings.TrimSpace(v)
	if _, after, ok := strings.Cut(v, ";"); ok {
		v = strings.TrimSpace(after)
	}
	return v
}

// bareAddress strips angle brackets and whatever surrounds them.
func bareAddress(v string) string {
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j > 0 {
			return strings.TrimSpace(v[i+1 : i+j])
		}
	}
	if f := strings.Fields(v); len(f) > 0 {
		return f[0]
	}
	return ""
}

func firstWord(v string) string {
	if f := strings.Fields(v); len(f) > 0 {
		return f[0]
	}
	return ""
}

var statusRe = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// statusCode returns s if it is an RFC 3463 status code, else "".
func statusCode(s string) string {
	s = strings.Trim(s, "()#,;")
	if statusRe.MatchString(s) {
		return s
	}
	return ""
}

var (
	enhancedRe = regexp.MustCompile(`\b[245]\.[0-9]{1,3}\.[0-9]{1,3}\b`)
	leadRe     = regexp.MustCompile(`^([245][0-9][0-9])(?:[ -]|$)`)
	// A reply quoted in a bounce's text: "550 5.1.1 ...", "550-5.1.1 ...".
	replyRe = regexp.MustCompile(`\b([45][0-9][0-9])[ -]([245]\.[0-9]{1,3}\.[0-9]{1,3})\b`)
	// qmail's "(#5.1.1)".
	qmailRe = regexp.MustCompile(`#([45]\.[0-9]{1,3}\.[0-9]{1,3})\b`)
	// A line that starts with a reply code and text: "550 No such user".
	codeLineRe = regexp.MustCompile(`(?m)^\s*([45][0-9][0-9])[ -][A-Za-z<]`)
	// Where a non-standard bounce starts quoting the returned message.
	returnedRe = regexp.MustCompile(`(?im)^\s*-+\s*(this is a copy|below this line|original message|the original message)`)
)

func enhancedIn(s string) string { return enhancedRe.FindString(s) }

func leadingCode(s string) int {
	m := leadRe.FindStringSubmatch(s)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// statusFromText finds a status in a non-standard bounce's text, before
// the returned message: a quoted reply with an enhanced code first, then
// qmail's (#x.y.z), then a line that starts with a reply code. It returns
// the line it was found on.
func statusFromText(text string) (status string, code int, line string) {
	if loc := returnedRe.FindStringIndex(text); loc != nil {
		text = text[:loc[0]]
	}
	lineAt := func(i int) string {
		start := strings.LastIndexByte(text[:i], '\n') + 1
		end := strings.IndexByte(text[i:], '\n')
		if end < 0 {
			end = len(text) - i
		}
		return truncate(collapseSpace(text[start:i+end]), 200)
	}
	if m := replyRe.FindStringSubmatchIndex(text); m != nil {
		code, _ = strconv.Atoi(text[m[2]:m[3]])
		return text[m[4]:m[5]], code, lineAt(m[0])
	}
	if m := qmailRe.FindStringSubmatchIndex(text); m != nil {
		return text[m[2]:m[3]], 0, lineAt(m[0])
	}
	if m := codeLineRe.FindStringSubmatchIndex(text); m != nil {
		code, _ = strconv.Atoi(text[m[2]:m[3]])
		return "", code, lineAt(m[2])
	}
	return "", 0, ""
}

// addresses returns the bare addresses of an address-list header value,
// lower-cased; entries it cannot read are skipped.
func addresses(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		a := strings.ToLower(bareAddress(f))
		if strings.Count(a, "@") >= 1 {
			out = append(out, a)
		}
	}
	return out
}

func collapseSpace(s string) string { return strings.Join(strings.Fields(s), " ") }

// truncate cuts s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8Start(s[n]) {
		n--
	}
	return s[:n]
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// ParseBytes is Parse over a byte slice.
func ParseBytes(b []byte) (*Report, error) { return Parse(bytes.NewReader(b)) }
