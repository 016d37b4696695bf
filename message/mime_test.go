package message

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	nettextproto "net/textproto"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/blaster-mail/blaster/unsubscribe"
)

var testUnsubKey = []byte("0123456789abcdef0123456789abcdef")

func ann() *Data {
	return &Data{Email: "ann@example.test", Name: "Ann", Attrs: map[string]string{"city": "Oslo"}, CampaignID: 3, ContactID: 9}
}

// part is one leaf of a parsed message.
type part struct {
	contentType, encoding, disposition, filename string
	body                                         string
}

// readBack parses msg with go-message and returns its header and leaves,
// failing the test if it does not parse.
func readBack(t *testing.T, msg []byte) (mail.Header, []part) {
	t.Helper()
	mr, err := mail.CreateReader(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("message does not parse: %v\n%s", err, msg)
	}
	var parts []part
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading part: %v", err)
		}
		b, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatalf("reading part body: %v", err)
		}
		var pt part
		pt.contentType, _, _ = p.Header.(interface {
			ContentType() (string, map[string]string, error)
		}).ContentType()
		pt.body = string(b)
		switch h := p.Header.(type) {
		case *mail.InlineHeader:
			pt.encoding = h.Get("Content-Transfer-Encoding")
			pt.disposition = "inline"
		case *mail.AttachmentHeader:
			pt.encoding = h.Get("Content-Transfer-Encoding")
			pt.disposition = "attachment"
			pt.filename, _ = h.Filename()
		}
		parts = append(parts, pt)
	}
	return mr.Header, parts
}

func attachmentBytes(t *testing.T, msg []byte) []byte {
	t.Helper()
	_, parts := readBack(t, msg)
	for _, p := range parts {
		if p.disposition == "attachment" {
			return []byte(p.body)
		}
	}
	t.Fatal("no attachment")
	return nil
}

// headerKeys returns the message's top-level header field names, sorted,
// one entry per field.
func headerKeys(t *testing.T, msg []byte) []string {
	t.Helper()
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(msg)))
	if err != nil {
		t.Fatalf("reading header: %v", err)
	}
	var keys []string
	for f := h.Fields(); f.Next(); {
		keys = append(keys, nettextproto.CanonicalMIMEHeaderKey(f.Key()))
	}
	slices.Sort(keys)
	return keys
}

func TestRenderStructure(t *testing.T) {
	dir := t.TempDir()
	pdf := filepath.Join(dir, "Prospectus été.pdf")
	os.WriteFile(pdf, []byte("%PDF-1.4\x00\xff binary"), 0o600)
	csv := filepath.Join(dir, "data.csv")
	os.WriteFile(csv, []byte("a,b\n1,2\n"), 0o600)

	text, html := "Hello {{.Name}} from {{.Attrs.city}}", "<p>Hello {{.Name}}</p>"
	for _, tc := range []struct {
		name        string
		text, html  string
		attachments []string
		top         string
		want        []part // bodies compared by substring
	}{
		{"text only", text, "", nil, "text/plain",
			[]part{{contentType: "text/plain", encoding: "7bit", body: "Hello Ann <b> from Oslo"}}},
		{"html only", "", html, nil, "text/html",
			[]part{{contentType: "text/html", encoding: "7bit", body: "<p>Hello Ann &lt;b&gt;</p>"}}},
		{"alternative", text, html, nil, "multipart/alternative", []part{
			{contentType: "text/plain", encoding: "7bit", disposition: "inline", body: "Hello Ann <b> from Oslo"},
			{contentType: "text/html", encoding: "7bit", disposition: "inline", body: "<p>Hello Ann &lt;b&gt;</p>"},
		}},
		{"text with attachments", text, "", []string{pdf, csv}, "multipart/mixed", []part{
			{contentType: "text/plain", encoding: "7bit", disposition: "inline", body: "Hello Ann <b> from Oslo"},
			{contentType: "application/pdf", encoding: "base64", disposition: "attachment", filename: "Prospectus été.pdf", body: "%PDF-1.4\x00\xff binary"},
			{contentType: "text/csv", encoding: "base64", disposition: "attachment", filename: "data.csv", body: "a,b\n1,2\n"},
		}},
		{"alternative with attachment", text, html, []string{pdf}, "multipart/mixed", []part{
			{contentType: "text/plain", encoding: "7bit", disposition: "inline", body: "Hello Ann <b> from Oslo"},
			{contentType: "text/html", encoding: "7bit", disposition: "inline", body: "<p>Hello Ann &lt;b&gt;</p>"},
			{contentType: "application/pdf", encoding: "base64", disposition: "attachment", filename: "Prospectus été.pdf", body: "%PDF-1.4\x00\xff binary"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			tmpl, err := Parse(Content{From: "Néws Désk <news@example.test>", Subject: "Hi {{.Name}} – news", Text: tc.text, HTML: tc.html, Attachments: tc.attachments},
				WithNowFunc(func() time.Time { return now }))
			if err != nil {
				t.Fatal(err)
			}
			d := ann()
			d.Name = "Ann <b>"
			var buf bytes.Buffer
			if err := tmpl.Render(&buf, d.Email, d); err != nil {
				t.Fatal(err)
			}
			h, parts := readBack(t, buf.Bytes())
			if ct, _, _ := h.ContentType(); ct != tc.top {
				t.Errorf("top-level Content-Type %q, want %q", ct, tc.top)
			}
			if s, _ := h.Subject(); s != "Hi Ann <b> – news" {
				t.Errorf("Subject %q", s)
			}
			if from, _ := h.AddressList("From"); len(from) != 1 || from[0].Name != "Néws Désk" || from[0].Address != "news@example.test" {
				t.Errorf("From %v", from)
			}
			if date, _ := h.Date(); !date.Equal(now) {
				t.Errorf("Date %v, want %v", date, now)
			}
			if id, _ := h.MessageID(); !strings.HasSuffix(id, "@example.test") {
				t.Errorf("Message-Id %q", id)
			}
			if len(parts) != len(tc.want) {
				t.Fatalf("%d parts, want %d: %+v", len(parts), len(tc.want), parts)
			}
			for i, want := range tc.want {
				got := parts[i]
				if got.contentType != want.contentType || got.filename != want.filename || !strings.Contains(got.body, want.body) {
					t.Errorf("part %d = %+v, want %+v", i, got, want)
				}
				if want.encoding != "" && len(tc.want) > 1 && got.encoding != want.encoding {
					t.Errorf("part %d encoding %q, want %q", i, got.encoding, want.encoding)
				}
			}
			// Every header and body line ends in CRLF and fits in 998
			// octets (RFC 5322 §2.1.1).
			for i, line := range strings.SplitAfter(buf.String(), "\n") {
				if line != "" && !strings.HasSuffix(line, "\r\n") && i < strings.Count(buf.String(), "\n") {
					t.Fatalf("line %d is not CRLF-terminated: %q", i+1, line)
				}
				if len(line) > 1000 {
					t.Fatalf("line %d is %d octets", i+1, len(line))
				}
			}
		})
	}
}

func TestMessageIDAndDatePerMessage(t *testing.T) {
	clock := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", Text: "t"}, WithNowFunc(func() time.Time {
		clock = clock.Add(time.Second)
		return clock
	}))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	var dates []time.Time
	for range 50 {
		var buf bytes.Buffer
		if err := tmpl.Render(&buf, "all:;", nil); err != nil {
			t.Fatal(err)
		}
		h, _ := readBack(t, buf.Bytes())
		id, _ := h.MessageID()
		ids[id] = true
		d, _ := h.Date()
		dates = append(dates, d)
	}
	if len(ids) != 50 {
		t.Errorf("%d distinct Message-IDs in 50 messages", len(ids))
	}
	if !dates[49].Equal(dates[0].Add(49 * time.Second)) {
		t.Errorf("Date does not follow the injected clock: %v .. %v", dates[0], dates[49])
	}
}

// TestRenderStreamsAttachments: an 8 MiB attachment is streamed through
// the encoder, never held whole: the bytes allocated while rendering stay
// far below its size.
func TestRenderStreamsAttachments(t *testing.T) {
	const size = 8 << 20
	path := filepath.Join(t.TempDir(), "big.bin")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	io.CopyN(f, rand.Reader, size)
	f.Close()
	tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", Text: "{{.Name}}", Attachments: []string{path}})
	if err != nil {
		t.Fatal(err)
	}
	var w countingWriter
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := tmpl.Render(&w, "ann@example.test", ann()); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if w.n < size*4/3 {
		t.Fatalf("wrote %d bytes, want at least the base64 of %d", w.n, size)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/4 && !raceEnabled {
		t.Errorf("rendering allocated %d bytes for a %d-byte attachment: it is buffered, not streamed", alloc, size)
	}
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

func TestAttachmentChecked(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{filepath.Join(dir, "missing.pdf"), dir} {
		if _, err := Parse(Content{From: "a@example.test", Subject: "s", Text: "t", Attachments: []string{path}}); err == nil {
			t.Errorf("Parse accepted attachment %s", path)
		}
	}
}

func TestHeaderInjectionRejected(t *testing.T) {
	tmpl, err := Parse(Content{From: "a@example.test", Subject: "Hi {{.Name}} {{.Attrs.city}}", Text: "x"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, to string
		d        Data
	}{
		{"CRLF in name", "b@example.test", Data{Name: "x\r\nBcc: victim@example.test"}},
		{"LF in name", "b@example.test", Data{Name: "x\nBcc: victim@example.test"}},
		{"CR in name", "b@example.test", Data{Name: "x\rBcc: victim@example.test"}},
		{"NUL in attribute", "b@example.test", Data{Attrs: map[string]string{"city": "a\x00b"}}},
		{"DEL in attribute", "b@example.test", Data{Attrs: map[string]string{"city": "a\x7fb"}}},
		{"invalid UTF-8", "b@example.test", Data{Name: "\xff\xfe"}},
		{"CRLF in To", "b@example.test\r\nBcc: victim@example.test", Data{}},
		{"two addresses in To", "b@example.test, c@example.test", Data{}},
		{"bad group name", "a,b:;", Data{}},
		{"address over 254 octets", strings.Repeat("a", 250) + "@example.test", Data{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := tmpl.Render(&buf, tc.to, &tc.d)
			var he *HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("Render = %v, want a *HeaderError", err)
			}
			if strings.Contains(buf.String(), "Bcc") {
				t.Errorf("injected text reached the output:\n%s", buf.String())
			}
		})
	}
	for _, from := range []string{"a@example.test\r\nBcc: v@example.test", "a@example.test\n", "not an address"} {
		if _, err := Parse(Content{From: from, Subject: "s", Text: "t"}); err == nil {
			t.Errorf("Parse accepted From %q", from)
		}
	}
}

func TestListUnsubscribe(t *testing.T) {
	for _, tc := range []struct {
		name         string
		u            Unsubscribe
		personalized bool
		header, post string // header: with TOKEN for the recipient's token
	}{
		{"none", Unsubscribe{}, false, "", ""},
		{"list-level mailto", Unsubscribe{Mailto: "unsub@example.test"}, false,
			"<mailto:unsub@example.test?subject=unsubscribe>", ""},
		{"list-level mailto and URL", Unsubscribe{Mailto: "unsub@example.test", BaseURL: "https://news.example.test/lists"}, false,
			"<mailto:unsub@example.test?subject=unsubscribe>, <https://news.example.test/lists>", ""},
		{"one-click", Unsubscribe{Mailto: "unsub@example.test", BaseURL: "https://news.example.test/u/", OneClick: true, Key: testUnsubKey}, true,
			"<mailto:unsub@example.test?subject=unsubscribe%20TOKEN>, <https://news.example.test/u/TOKEN>", "List-Unsubscribe=One-Click"},
		{"one-click without mailto", Unsubscribe{BaseURL: "https://news.example.test/u", OneClick: true, Key: testUnsubKey}, true,
			"<https://news.example.test/u/TOKEN>", "List-Unsubscribe=One-Click"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, err := Parse(Content{From: "news@example.test", Subject: "Same for all", Text: "Bye: {{.UnsubscribeURL}}", Unsubscribe: tc.u})
			if err != nil {
				t.Fatal(err)
			}
			if tmpl.Personalized() != tc.personalized {
				t.Errorf("Personalized() = %v, want %v", tmpl.Personalized(), tc.personalized)
			}
			var buf bytes.Buffer
			if err := tmpl.Render(&buf, "ann@example.test", ann()); err != nil {
				t.Fatal(err)
			}
			h, parts := readBack(t, buf.Bytes())
			token := unsubscribe.Token(testUnsubKey, unsubscribe.Recipient{CampaignID: 3, ContactID: 9, Email: "ann@example.test"})
			want := strings.ReplaceAll(tc.header, "TOKEN", token)
			if got := h.Get("List-Unsubscribe"); got != want {
				t.Errorf("List-Unsubscribe = %q, want %q", got, want)
			}
			if got := h.Get("List-Unsubscribe-Post"); got != tc.post {
				t.Errorf("List-Unsubscribe-Post = %q, want %q", got, tc.post)
			}
			if tc.u.OneClick {
				if _, err := unsubscribe.Verify(testUnsubKey, token, "ann@example.test"); err != nil {
					t.Errorf("token in header does not verify: %v", err)
				}
				if !strings.Contains(parts[0].body, "https://news.example.test/u/"+token) {
					t.Errorf("body lacks the one-click link: %q", parts[0].body)
				}
			}
		})
	}
}

func TestUnsubscribeConfigChecked(t *testing.T) {
	for _, u := range []Unsubscribe{
		{OneClick: true, Key: testUnsubKey},                                        // no URL
		{BaseURL: "https://news.example.test/u", OneClick: true},                   // no key
		{BaseURL: "http://news.example.test/u", OneClick: true, Key: testUnsubKey}, // not https
		{BaseURL: "https://news.example.test/u>, <https://evil.test", Key: testUnsubKey},
		{BaseURL: "https://news.example.test/u\r\nBcc: x@example.test"},
		{Mailto: "Name <unsub@example.test>"},
		{Mailto: "unsub@example.test?cc=victim@example.test"},
	} {
		if _, err := Parse(Content{From: "a@example.test", Subject: "s", Text: "t", Unsubscribe: u}); err == nil {
			t.Errorf("Parse accepted %+v", u)
		}
	}
	// One-click needs ids at Render.
	tmpl, err := Parse(Content{From: "a@example.test", Subject: "s", Text: "t",
		Unsubscribe: Unsubscribe{BaseURL: "https://news.example.test/u", OneClick: true, Key: testUnsubKey}})
	if err != nil {
		t.Fatal(err)
	}
	if err := tmpl.Render(io.Discard, "b@example.test", &Data{Email: "b@example.test"}); err == nil {
		t.Error("Render made a one-click message without campaign and contact ids")
	}
	if err := tmpl.Render(io.Discard, "b@example.test", &Data{CampaignID: 1, ContactID: 2}); err == nil {
		t.Error("Render made a one-click token without the recipient's address")
	}
}

// FuzzRender renders hostile contact data and checks that the result is
// either a *HeaderError or a message that parses back with exactly the
// expected header fields, each once, and the contact's text in the subject.
func FuzzRender(f *testing.F) {
	tmpl, err := Parse(Content{
		From:        "News <news@example.test>",
		Subject:     "Hi {{.Name}} {{.Attrs.city}}",
		Text:        "Dear {{.Name | default \"friend\"}} ({{.Email}}) {{.Attrs.city}}",
		HTML:        "<p>{{.Name}}</p><a href=\"{{.UnsubscribeURL}}\">{{.Attrs.city}}</a>",
		Unsubscribe: Unsubscribe{BaseURL: "https://news.example.test/u", Mailto: "unsub@example.test", OneClick: true, Key: testUnsubKey},
	})
	if err != nil {
		f.Fatal(err)
	}
	want := []string{"Content-Type", "Date", "From", "List-Unsubscribe", "List-Unsubscribe-Post", "Message-Id", "Mime-Version", "Subject", "To"}
	f.Add("Ann", "ann@example.test", "Oslo")
	f.Add("x\r\nBcc: victim@example.test", "ann@example.test", "a")
	f.Add("=?utf-8?q?=0D=0ABcc:_x?=", "ann@example.test", "\n\n")
	f.Add("Ünïcödé "+strings.Repeat("long", 300), "\"a b\"@example.test", "Zürich")
	f.Add("a", "x@example.test\r\nBcc: y@example.test", "b")
	f.Add("\t tab", "\"\\\r\"@example.test", "<>")
	f.Add(strings.Repeat("a", 2000), strings.Repeat("b", 300)+"@example.test", "é"+strings.Repeat("c", 1000))
	f.Fuzz(func(t *testing.T, name, email, city string) {
		if email == "" {
			return // a one-click token needs the address: a caller error, tested elsewhere
		}
		d := &Data{Email: email, Name: name, Attrs: map[string]string{"city": city}, CampaignID: 1, ContactID: 2}
		// As its own To, and under a fixed To so that the other fields
		// are exercised even when email is not an address.
		checkFuzzedRender(t, tmpl, want, email, name, city, d)
		checkFuzzedRender(t, tmpl, want, "ann@example.test", name, city, d)
	})
}

// checkFuzzedRender is FuzzRender's check for one Render.
func checkFuzzedRender(t *testing.T, tmpl *Template, want []string, to, name, city string, d *Data) {

	var buf bytes.Buffer
	err := tmpl.Render(&buf, to, d)
	if err != nil {
		var he *HeaderError
		if !errors.As(err, &he) {
			t.Fatalf("Render error %v is not a *HeaderError", err)
		}
		return
	}
	msg := buf.Bytes()
	if got := headerKeys(t, msg); !slices.Equal(got, want) {
		t.Fatalf("header fields %q, want %q\n%s", got, want, msg)
	}
	hdr := msg[:bytes.Index(msg, []byte("\r\n\r\n"))+2]
	if bytes.Count(hdr, []byte("\n")) != bytes.Count(hdr, []byte("\r\n")) || bytes.Count(hdr, []byte("\r")) != bytes.Count(hdr, []byte("\r\n")) {
		t.Fatalf("bare CR or LF in the header:\n%q", hdr)
	}
	h, parts := readBack(t, msg)
	if len(parts) != 2 {
		t.Fatalf("%d parts, want 2", len(parts))
	}
	subject, err := h.Subject()
	if err != nil {
		t.Fatalf("Subject does not decode: %v", err)
	}
	in := "Hi " + name + " " + city
	if !strings.Contains(in, "=?") && strings.Join(strings.Fields(subject), " ") != strings.Join(strings.Fields(in), " ") {
		t.Fatalf("Subject reads back %q, want %q", subject, in)
	}
	if to, err := h.AddressList("To"); err != nil || len(to) != 1 {
		t.Fatalf("To reads back %v, %v", to, err)
	}
}

func TestHeaderOrder(t *testing.T) {
	tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", Text: "{{.Name}}",
		Unsubscribe: Unsubscribe{BaseURL: "https://news.example.test/u", OneClick: true, Key: testUnsubKey}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tmpl.Render(&buf, "ann@example.test", ann()); err != nil {
		t.Fatal(err)
	}
	head, _, _ := strings.Cut(buf.String(), "\r\n\r\n")
	var names []string
	for _, line := range strings.Split(head, "\r\n") {
		if line[0] != ' ' && line[0] != '\t' {
			name, _, _ := strings.Cut(line, ":")
			names = append(names, name)
		}
	}
	want := []string{"From", "To", "Subject", "Date", "Message-Id", "Mime-Version", "List-Unsubscribe", "List-Unsubscribe-Post", "Content-Type", "Content-Transfer-Encoding"}
	if !slices.Equal(names, want) {
		t.Errorf("header fields in order %q, want %q", names, want)
	}
}

func TestGroupAddress(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		{"newsletter", "newsletter:;"},
		{"Weekly news 2026-12", "Weekly news 2026-12:;"},
		{"a+b/c, \"d\" <e>;", "abc d e:;"},
		{"Zürich", "Zrich:;"},
		{"\r\n", "undisclosed-recipients:;"},
		{"", "undisclosed-recipients:;"},
	} {
		got := GroupAddress(c.name)
		if got != c.want {
			t.Errorf("GroupAddress(%q) = %q, want %q", c.name, got, c.want)
		}
		if _, err := formatTo(got); err != nil {
			t.Errorf("GroupAddress(%q) = %q, which To refuses: %v", c.name, got, err)
		}
	}
}
