package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// EnhancedCode is an enhanced mail system status code (RFC 3463 §2):
// class.subject.detail, e.g. 5.1.1 "bad destination mailbox address".
// The zero value means the reply carried none.
type EnhancedCode [3]int

// String formats the code as "5.1.1", or "" for the zero value.
func (e EnhancedCode) String() string {
	if e == (EnhancedCode{}) {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2])
}

// Reply is one SMTP reply (RFC 5321 §4.2): a three-digit code, the
// enhanced status code when the server sends them (RFC 2034), and the text.
type Reply struct {
	// Code is the reply code, 200 to 599.
	Code int
	// Enhanced is the RFC 3463 code found at the start of the text, or zero.
	Enhanced EnhancedCode
	// Text is the reply text without code and enhanced code; the lines of a
	// multi-line reply are joined by "\n".
	Text string
}

// String formats the reply as one line: "550 5.1.1 user unknown".
func (r *Reply) String() string {
	if r == nil {
		return "<no reply>"
	}
	var b strings.Builder
	b.WriteString(strconv.Itoa(r.Code))
	if r.Enhanced != (EnhancedCode{}) {
		b.WriteByte(' ')
		b.WriteString(r.Enhanced.String())
	}
	if r.Text != "" {
		b.WriteByte(' ')
		b.WriteString(strings.ReplaceAll(r.Text, "\n", " / "))
	}
	return b.String()
}

// Positive reports whether the reply is a positive completion (2xx).
func (r *Reply) Positive() bool { return r != nil && r.Code/100 == 2 }

// Error is the one SMTP reply error type: a server's negative (or
// unexpected) reply to a command, as an error. Its shape follows
// emersion/go-smtp's SMTPError.
type Error struct {
	Reply
	// Command names the protocol step the reply answered: "greeting",
	// "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA" (the 354
	// stage), "." (the end of the message data), "RSET", "NOOP", "QUIT".
	Command string
	// Server is the address the client talks to (host:port).
	Server string
}

// Error reads "smtp relay.example.test:587: MAIL: 451 4.3.0 try later".
func (e *Error) Error() string {
	return fmt.Sprintf("smtp %s: %s: %s", e.Server, e.Command, e.Reply.String())
}

// Temporary reports whether the reply is a transient negative completion
// (4xx, RFC 5321 §4.2.1): the same command may succeed later.
func (e *Error) Temporary() bool { return e.Code/100 == 4 }

// errProtocol marks a reply that is not valid SMTP: the client and server
// are out of step and the connection cannot be reused.
var errProtocol = errors.New("smtp: malformed reply")

// maxReplyLines bounds a multi-line reply; a server sending more is broken
// or hostile. RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets; the
// reader's buffer (4096 octets) is the hard per-line bound, lenient on purpose.
const maxReplyLines = 256

// replyCache remembers the last single-line reply read on a connection.
// Pipelined replies are mostly the same line ("250 2.1.5 Ok" a hundred
// times); an identical line is answered with the same *Reply, without
// parsing or allocating. Replies are therefore shared and read-only.
type replyCache struct {
	raw   []byte
	reply *Reply
}

// readReply reads one possibly multi-line reply (RFC 5321 §4.2.1: every
// line but the last has "-" after the code). Lines end in CRLF; a bare LF
// is accepted, as textproto does. trace, when not nil, sees each line.
func readReply(br *bufio.Reader, trace func(string)) (*Reply, error) {
	return readReplyCached(br, trace, nil)
}

func readReplyCached(br *bufio.Reader, trace func(string), cache *replyCache) (*Reply, error) {
	var (
		code  int
		lines []string
	)
	if cache != nil && cache.reply != nil && br.Buffered() >= len(cache.raw) {
		// Peek what is already buffered, never wait: on a miss the loop
		// below reads the line.
		if raw, err := br.Peek(len(cache.raw)); err == nil && bytes.Equal(raw, cache.raw) {
			br.Discard(len(raw))
			if trace != nil {
				trace(strings.TrimRight(string(raw), "\r\n"))
			}
			return cache.reply, nil
		}
	}
	for i := 0; ; i++ {
		if i == maxReplyLines {
			return nil, fmt.Errorf("reply longer than %d lines: %w", maxReplyLines, errProtocol)
		}
		raw, err := br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return nil, fmt.Errorf("reply line longer than %d octets: %w", br.Size(), errProtocol)
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("reading reply: %w", err)
		}
		line := strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r")
		// A CR inside a line is not SMTP; keep it out of Text, logs and
		// the ledger.
		line = strings.ReplaceAll(line, "\r", " ")
		if trace != nil {
			trace(line)
		}
		c, more, text, err := parseReplyLine(line)
		if err != nil {
			return nil, err
		}
		if i > 0 && c != code {
			return nil, fmt.Errorf("reply line %q: code %d differs from %d: %w", line, c, code, errProtocol)
		}
		code = c
		lines = append(lines, text)
		if !more {
			if i == 0 && cache != nil {
				r := newReply(code, lines)
				cache.raw = append(cache.raw[:0], raw...)
				cache.reply = r
				return r, nil
			}
			break
		}
	}
	return newReply(code, lines), nil
}

// parseReplyLine splits "250-text", "250 text" or "250".
func parseReplyLine(line string) (code int, more bool, text string, err error) {
	if len(line) < 3 {
		return 0, false, "", fmt.Errorf("reply line %q: too short: %w", line, errProtocol)
	}
	for i := 0; i < 3; i++ {
		if line[i] < '0' || line[i] > '9' {
			return 0, false, "", fmt.Errorf("reply line %q: no reply code: %w", line, errProtocol)
		}
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	// RFC 5321 §4.2: the first digit is 2 to 5, the second 0 to 5.
	if code < 200 || code > 599 || line[1] > '5' {
		return 0, false, "", fmt.Errorf("reply line %q: code %d out of range: %w", line, code, errProtocol)
	}
	if len(line) == 3 {
		return code, false, "", nil
	}
	switch line[3] {
	case '-':
		more = true
	case ' ':
	default:
		return 0, false, "", fmt.Errorf("reply line %q: expected ' ' or '-' after the code: %w", line, errProtocol)
	}
	return code, more, line[4:], nil
}

// newReply builds a Reply, taking the enhanced code (RFC 2034 §4: every
// line of the reply starts with it) out of each line whose class matches
// the reply code's class.
func newReply(code int, lines []string) *Reply {
	r := &Reply{Code: code}
	for i, l := range lines {
		ec, rest, ok := cutEnhancedCode(l)
		if !ok || ec[0] != code/100 {
			continue
		}
		if i == 0 {
			r.Enhanced = ec
		}
		lines[i] = rest
	}
	r.Text = strings.Join(lines, "\n")
	return r
}

// cutEnhancedCode parses "5.1.1 rest" (RFC 3463 §2: class "2"/"4"/"5",
// subject and detail of 1 to 3 digits). It runs for every reply, so it
// scans by hand rather than split and convert.
func cutEnhancedCode(s string) (EnhancedCode, string, bool) {
	var ec EnhancedCode
	i := 0
	for part := 0; part < 3; part++ {
		start := i
		n := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' && i-start < 3 {
			n = n*10 + int(s[i]-'0')
			i++
		}
		digits := i - start
		if digits == 0 || (part == 0 && digits != 1) {
			return EnhancedCode{}, "", false
		}
		ec[part] = n
		if part < 2 {
			if i >= len(s) || s[i] != '.' {
				return EnhancedCode{}, "", false
			}
			i++
		}
	}
	switch {
	case i == len(s):
	case s[i] == ' ':
		i++
	default:
		return EnhancedCode{}, "", false
	}
	if ec[0] != 2 && ec[0] != 4 && ec[0] != 5 {
		return EnhancedCode{}, "", false
	}
	return ec, s[i:], true
}
