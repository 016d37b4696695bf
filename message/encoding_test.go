package message

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// crlf normalizes every line ending (CRLF, LF, a bare CR) to CRLF, as
// both transfer encodings deliver a text body.
func crlf(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// checkWire checks that every line of msg ends in CRLF (no bare CR or LF)
// and fits in 998 octets.
func checkWire(t *testing.T, msg []byte) {
	t.Helper()
	s := string(msg)
	if strings.Count(s, "\n") != strings.Count(s, "\r\n") || strings.Count(s, "\r") != strings.Count(s, "\r\n") {
		t.Fatalf("bare CR or LF in the message:\n%q", s)
	}
	for i, line := range strings.Split(s, "\r\n") {
		if len(line) > 998 {
			t.Fatalf("line %d is %d octets", i+1, len(line))
		}
	}
}

var encodingCases = []struct {
	name, body, want string // want: the Content-Transfer-Encoding
}{
	{"plain", "Hello Ann\nsecond line\n", "7bit"},
	{"CRLF", "Hello\r\nAnn\r\n", "7bit"},
	{"no final newline", "Hello Ann", "7bit"},
	{"empty lines", "\n\n\nx\n\n", "7bit"},
	{"trailing blanks", "tab\t\nspace \n", "7bit"},
	{"998 octets", strings.Repeat("a", 998) + "\n" + strings.Repeat("b", 998), "7bit"},
	{"998 octets CRLF", strings.Repeat("a", 998) + "\r\nb", "7bit"},
	{"999 octets", "x\n" + strings.Repeat("a", 999) + "\nend", "quoted-printable"},
	{"long last line", strings.Repeat("a", 2000), "quoted-printable"},
	{"non-ASCII", "Hello Zürich\n", "quoted-printable"},
	{"non-ASCII at the end of a word", strings.Repeat("abcdefg", 3) + "é", "quoted-printable"},
	{"invalid UTF-8", "a\xffb", "quoted-printable"},
	{"bare CR", "a\rb\n", "quoted-printable"},
	{"bare CR at the end", "ab\r", "quoted-printable"},
	{"CR CR LF", "a\r\r\nb", "quoted-printable"},
	{"NUL", "a\x00b", "quoted-printable"},
	{"DEL", "abcdefgh\x7fijklmnop", "quoted-printable"},
	{"form feed", "a\fb", "quoted-printable"},
	{"leading dots", ".\n..leading dots\n.\n. \nend", "7bit"},
	{"From line", "Hi\nFrom the editor\n", "quoted-printable"},
	{"From first", "From here", "quoted-printable"},
	{"From inside a line", "News From Oslo\nFrom: not a separator\nfrom here\n", "7bit"},
	{"boundary-like", "--\n--b\n-- \n", "7bit"},
}

// TestTransferEncoding renders bodies as text/plain (text/template, so the
// contact data reaches the body as it is) alone and in
// multipart/alternative, checks the chosen encoding and that the body
// reads back as written, line ends aside.
func TestTransferEncoding(t *testing.T) {
	for _, tc := range encodingCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, html := range []string{"", "<p>x</p>"} {
				tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", Text: "{{.Name}}", HTML: html})
				if err != nil {
					t.Fatal(err)
				}
				var buf bytes.Buffer
				if err := tmpl.Render(&buf, "ann@example.test", &Data{Email: "ann@example.test", Name: tc.body}); err != nil {
					t.Fatal(err)
				}
				checkWire(t, buf.Bytes())
				h, parts := readBack(t, buf.Bytes())
				enc := h.Get("Content-Transfer-Encoding")
				if html != "" {
					if len(parts) != 2 {
						t.Fatalf("%d parts, want 2", len(parts))
					}
					enc = parts[0].encoding
					if parts[1].encoding != "7bit" || parts[1].body != "<p>x</p>" {
						t.Errorf("HTML part %+v", parts[1])
					}
				}
				if enc != tc.want {
					t.Errorf("Content-Transfer-Encoding %q, want %q", enc, tc.want)
				}
				if got, want := parts[0].body, crlf(tc.body); got != want {
					t.Errorf("body reads back as\n%q, want\n%q", got, want)
				}
			}
		})
	}
}

// TestTransferEncodingHTML checks the HTML part's choice: html/template's
// escaping leaves non-ASCII text as it is.
func TestTransferEncodingHTML(t *testing.T) {
	tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", HTML: "<p>{{.Name}}</p>\n<p>{{.Attrs.city}}</p>"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, city, want, body string }{
		{"Ann <b>", "Oslo", "7bit", "<p>Ann &lt;b&gt;</p>\r\n<p>Oslo</p>"},
		{"Ann", "Zürich", "quoted-printable", "<p>Ann</p>\r\n<p>Zürich</p>"},
		{"Ann", strings.Repeat("x", 995), "quoted-printable", "<p>Ann</p>\r\n<p>" + strings.Repeat("x", 995) + "</p>"},
	} {
		var buf bytes.Buffer
		if err := tmpl.Render(&buf, "ann@example.test", &Data{Email: "ann@example.test", Name: c.name, Attrs: map[string]string{"city": c.city}}); err != nil {
			t.Fatal(err)
		}
		checkWire(t, buf.Bytes())
		h, parts := readBack(t, buf.Bytes())
		if enc := h.Get("Content-Transfer-Encoding"); enc != c.want {
			t.Errorf("%q: Content-Transfer-Encoding %q, want %q", c.city, enc, c.want)
		}
		if parts[0].body != c.body {
			t.Errorf("%q: body %q, want %q", c.city, parts[0].body, c.body)
		}
	}
}

// TestTransferEncodingSignedOverSMTP signs every case with DKIM, sends it
// through a real SMTP exchange (dot-stuffing and CRLF on the wire) and
// checks that what the server received verifies and reads back.
func TestTransferEncodingSignedOverSMTP(t *testing.T) {
	be, ln := startSinkServer(t)
	key := testEd25519Key(t)
	tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", Text: "{{.Name}}",
		DKIM: &DKIM{Domain: "example.test", Selector: "s1", Key: key}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range encodingCases {
		var buf bytes.Buffer
		if err := tmpl.Render(&buf, "ann@example.test", &Data{Email: "ann@example.test", Name: tc.body}); err != nil {
			t.Fatal(err)
		}
		checkWire(t, buf.Bytes())
		if err := c.SendMail("bounce@example.test", []string{"ann@example.test"}, &buf); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if len(be.msgs) != len(encodingCases) {
		t.Fatalf("server received %d messages, want %d", len(be.msgs), len(encodingCases))
	}
	for i, msg := range be.msgs {
		tc := encodingCases[i]
		if err := verifyDKIM(t, msg, key.Public()); err != nil {
			t.Errorf("%s: DKIM verification failed after SMTP: %v", tc.name, err)
		}
		h, parts := readBack(t, msg)
		if enc := h.Get("Content-Transfer-Encoding"); enc != tc.want {
			t.Errorf("%s: Content-Transfer-Encoding %q, want %q", tc.name, enc, tc.want)
		}
		// SMTP ends the data with a line end the body may not have had.
		if got, want := parts[0].body, crlf(tc.body); got != want && got != want+"\r\n" {
			t.Errorf("%s: body reads back as\n%q, want\n%q", tc.name, got, want)
		}
	}
}

// sevenBitRef is sevenBit written the obvious way, byte by byte.
func sevenBitRef(b []byte) bool {
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		if i < len(lines)-1 {
			line = strings.TrimSuffix(line, "\r") // a CRLF; a bare CR fails below
		}
		if len(line) > 998 || strings.HasPrefix(line, "From ") {
			return false
		}
		for i := 0; i < len(line); i++ {
			if c := line[i]; (c < 0x20 && c != '\t') || c > 0x7e {
				return false
			}
		}
	}
	return true
}

// TestPrintableASCII puts every byte value at every position of a word.
func TestPrintableASCII(t *testing.T) {
	for pos := 0; pos < 17; pos++ {
		for c := 0; c < 256; c++ {
			p := []byte(strings.Repeat("abcdefgh", 3)[:17])
			p[pos] = byte(c)
			want := (c >= 0x20 && c < 0x7f) || c == '\t'
			if got := printableASCII(p); got != want {
				t.Fatalf("printableASCII with %#x at %d = %v, want %v", c, pos, got, want)
			}
		}
	}
}

// FuzzSevenBit checks sevenBit against sevenBitRef, and that a text body
// of that content reads back as written.
func FuzzSevenBit(f *testing.F) {
	for _, tc := range encodingCases {
		f.Add(tc.body)
	}
	tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", Text: "{{.Name}}"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string) {
		if got, want := sevenBit([]byte(body)), sevenBitRef([]byte(body)); got != want {
			t.Fatalf("sevenBit(%q) = %v, want %v", body, got, want)
		}
		var buf bytes.Buffer
		if err := tmpl.Render(&buf, "ann@example.test", &Data{Email: "ann@example.test", Name: body}); err != nil {
			t.Fatal(err)
		}
		checkWire(t, buf.Bytes())
		_, parts := readBack(t, buf.Bytes())
		if got, want := parts[0].body, crlf(body); got != want {
			t.Fatalf("body reads back as\n%q, want\n%q", got, want)
		}
	})
}
