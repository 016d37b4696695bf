package message

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"

	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
)

type header struct {
	from, to, subject string
}

// writeMIME writes the header and a text/plain, text/html or
// multipart/alternative body with go-message, which encodes headers per
// RFC 2047 and bodies as quoted-printable.
func writeMIME(w io.Writer, h header, text, html []byte, hasText, hasHTML bool) error {
	for _, v := range []string{h.from, h.to, h.subject} {
		if strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("header value %q contains a line break", v)
		}
	}
	var mh mail.Header
	mh.Set("From", h.from)
	mh.Set("To", h.to)
	mh.SetSubject(h.subject)
	mh.SetDate(time.Now())
	mh.Set("Message-Id", newMessageID(h.from))
	mh.Set("MIME-Version", "1.0")

	if hasText && hasHTML {
		mw, err := mail.CreateInlineWriter(w, mh)
		if err != nil {
			return fmt.Errorf("writing message header: %w", err)
		}
		if err := writePart(mw, "text/plain", text); err != nil {
			return err
		}
		if err := writePart(mw, "text/html", html); err != nil {
			return err
		}
		return mw.Close()
	}
	body, ctype := text, "text/plain"
	if hasHTML {
		body, ctype = html, "text/html"
	}
	mh.Set("Content-Type", ctype+"; charset=utf-8")
	mh.Set("Content-Transfer-Encoding", "quoted-printable")
	ew, err := gomessage.CreateWriter(w, mh.Header)
	if err != nil {
		return fmt.Errorf("writing message header: %w", err)
	}
	if _, err := ew.Write(body); err != nil {
		return fmt.Errorf("writing body: %w", err)
	}
	return ew.Close()
}

func writePart(mw *mail.InlineWriter, ctype string, body []byte) error {
	var ph mail.InlineHeader
	ph.Set("Content-Type", ctype+"; charset=utf-8")
	ph.Set("Content-Transfer-Encoding", "quoted-printable")
	pw, err := mw.CreatePart(ph)
	if err != nil {
		return fmt.Errorf("writing %s part: %w", ctype, err)
	}
	if _, err := pw.Write(body); err != nil {
		return fmt.Errorf("writing %s part: %w", ctype, err)
	}
	return pw.Close()
}

// newMessageID returns a unique Message-ID (RFC 5322 §3.6.4) in the
// From address's domain.
func newMessageID(from string) string {
	domain := "blaster.invalid"
	if i := strings.LastIndexByte(from, '@'); i >= 0 {
		domain = strings.Trim(from[i+1:], "> ")
	}
	var b [12]byte
	rand.Read(b[:])
	return "<" + hex.EncodeToString(b[:]) + "@" + domain + ">"
}
