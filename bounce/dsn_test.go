package bounce

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

const sampleReturnPath = "bounces+1-2-aaaaaaaaaaaaaaaa@bounce.example.test"

func TestParseSamples(t *testing.T) {
	for _, tc := range []struct {
		file        string
		messageID   string
		standard    bool
		autoReply   bool
		deliveredTo string
		want        []Recipient
		classes     []Class
		reason      string // NormalizeReason of the first diagnostic
	}{
		{
			file: "postfix.eml", messageID: "20261201101204.4F2B81C0A3@relay.sender.example.test", standard: true,
			autoReply: false, deliveredTo: sampleReturnPath,
			want: []Recipient{{FinalRecipient: "nobody@alpha.example.test", OriginalRecipient: "nobody@alpha.example.test",
				Action: "failed", Status: "5.1.1", RemoteMTA: "mx.alpha.example.test", Code: 550,
				Diagnostic: "550 5.1.1 <nobody@alpha.example.test>: Recipient address rejected: User unknown in virtual mailbox table"}},
			classes: []Class{Hard},
			reason:  "<addr>: recipient address rejected: user unknown in virtual mailbox table",
		},
		{
			file: "exim.eml", messageID: "E1tHk2Z-000Abc-0R@relay.sender.example.test", standard: true, deliveredTo: sampleReturnPath,
			want: []Recipient{{FinalRecipient: "nobody@alpha.example.test", Action: "failed", Status: "5.1.1",
				RemoteMTA: "mx.alpha.example.test", Code: 550,
				Diagnostic: "550 5.1.1 <nobody@alpha.example.test>: Recipient address rejected: User unknown in local recipient table"}},
			classes: []Class{Hard},
			reason:  "<addr>: recipient address rejected: user unknown in local recipient table",
		},
		{
			file: "exchange.eml", messageID: "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f@EX02.corp.example.test", standard: true,
			deliveredTo: sampleReturnPath,
			want: []Recipient{{FinalRecipient: "nobody@alpha.example.test", OriginalRecipient: "nobody@alpha.example.test",
				Action: "failed", Status: "5.1.10", Code: 550,
				Diagnostic: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}},
			classes: []Class{Hard},
			reason:  "resolver.adr.recipientnotfound; recipient not found by smtp address lookup",
		},
		{
			file: "gmail.eml", messageID: "6752f0a1.050a0220.2b3c4d.0000.GMR@mx.google.example.test", standard: true,
			deliveredTo: sampleReturnPath,
			want: []Recipient{{FinalRecipient: "nobody@alpha.example.test", Action: "failed", Status: "5.1.1", Code: 550,
				RemoteMTA:  "gmail-smtp-in.l.google.example.test. (2607:f8b0:4864:20::12b, the server for the domain alpha.example.test.)",
				Diagnostic: "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. For more information, go to https://support.google.example.test/mail/?p=NoSuchUser 41be03b00d2f7-5d6c2a0c3esi1234567a.123 - gsmtp"}},
			classes: []Class{Hard},
			reason:  "the email account that you tried to reach does not exist. please try double-checking the recipient's email address for",
		},
		{
			file: "postfix-delayed.eml", messageID: "20261201141204.9A0B11C0B5@relay.sender.example.test", standard: true,
			deliveredTo: sampleReturnPath,
			want: []Recipient{{FinalRecipient: "full@alpha.example.test", OriginalRecipient: "full@alpha.example.test",
				Action: "delayed", Status: "4.2.2", RemoteMTA: "mx.alpha.example.test", Code: 452,
				Diagnostic: "452 4.2.2 <full@alpha.example.test>: Mailbox full"}},
			classes: []Class{Soft},
			reason:  "<addr>: mailbox full",
		},
		{
			file: "qmail.eml", standard: false, deliveredTo: sampleReturnPath,
			want:    []Recipient{{Action: "failed", Status: "5.1.1", Diagnostic: "Sorry, no mailbox here by that name. (#5.1.1)"}},
			classes: []Class{Hard},
			reason:  "sorry, no mailbox here by that name. #",
		},
		{
			file: "multi.eml", messageID: "multi.1@relay.sender.example.test", standard: true,
			deliveredTo: "bounces+1-aaaaaaaaaaaaaaaa@bounce.example.test",
			want: []Recipient{
				{FinalRecipient: "gone@beta.example.test", Action: "failed", Status: "5.1.1", Code: 550, Diagnostic: "550 5.1.1 User unknown"},
				{FinalRecipient: "later@beta.example.test", Action: "delayed", Status: "4.4.1",
					Diagnostic: "connect to mx.beta.example.test[192.0.2.33]:25: Connection timed out"},
				{FinalRecipient: "ok@beta.example.test", Action: "delivered", Status: "2.0.0"},
			},
			classes: []Class{Hard, Soft, None},
			reason:  "user unknown",
		},
		{
			file: "success.eml", messageID: "success.1@relay.sender.example.test", standard: true, deliveredTo: sampleReturnPath,
			want: []Recipient{{FinalRecipient: "somebody@alpha.example.test", Action: "relayed", Status: "2.0.0",
				RemoteMTA: "mx.alpha.example.test", Code: 250, Diagnostic: "250 2.0.0 Ok: queued as 0A1B2C"}},
			classes: []Class{None},
			reason:  "ok: queued as #",
		},
		{file: "autoreply.eml", messageID: "ooo.1@alpha.example.test", autoReply: true, deliveredTo: sampleReturnPath},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			rep, err := Parse(f)
			if err != nil {
				t.Fatal(err)
			}
			if rep.MessageID != tc.messageID || rep.DeliveryStatus != tc.standard || rep.AutoReply != tc.autoReply {
				t.Errorf("MessageID %q, DeliveryStatus %v, AutoReply %v; want %q, %v, %v",
					rep.MessageID, rep.DeliveryStatus, rep.AutoReply, tc.messageID, tc.standard, tc.autoReply)
			}
			if len(rep.DeliveredTo) == 0 || rep.DeliveredTo[0] != tc.deliveredTo {
				t.Errorf("DeliveredTo = %q, want %q first", rep.DeliveredTo, tc.deliveredTo)
			}
			if !reflect.DeepEqual(rep.Recipients, tc.want) {
				t.Errorf("Recipients:\n got %#v\nwant %#v", rep.Recipients, tc.want)
			}
			for i, c := range tc.classes {
				if i < len(rep.Recipients) && rep.Recipients[i].Class() != c {
					t.Errorf("recipient %d class %q, want %q", i, rep.Recipients[i].Class(), c)
				}
			}
			if tc.reason != "" && len(rep.Recipients) > 0 {
				if got := NormalizeReason(rep.Recipients[0].Diagnostic); got != tc.reason {
					t.Errorf("NormalizeReason = %q, want %q", got, tc.reason)
				}
			}
		})
	}
}

// TestNormalizeReasonGroups: the same cause for different recipients and
// queue ids normalizes to one reason.
func TestNormalizeReasonGroups(t *testing.T) {
	a := NormalizeReason("550 5.1.1 <ann@alpha.example.test>: Recipient address rejected: User unknown (queue 4F2B81C0A3)")
	b := NormalizeReason("550 5.1.1 <bob@beta.example.test>: Recipient address rejected: User unknown (queue 9A0B11C0B5)")
	if a != b {
		t.Fatalf("%q != %q", a, b)
	}
}

func TestClass(t *testing.T) {
	for _, tc := range []struct {
		r    Recipient
		want Class
	}{
		{Recipient{Action: "failed", Status: "5.7.1"}, Hard},
		{Recipient{Action: "failed", Status: "4.4.7"}, Soft}, // expired in a queue: the address may be fine
		{Recipient{Action: "delayed", Status: "5.0.0"}, Soft},
		{Recipient{Action: "failed", Code: 554}, Hard},
		{Recipient{Action: "failed"}, Soft},
		{Recipient{Action: "delivered", Status: "2.0.0"}, None},
		{Recipient{Action: "expanded"}, None},
		{Recipient{Status: "5.1.1"}, Hard},
	} {
		if got := tc.r.Class(); got != tc.want {
			t.Errorf("%+v: Class %q, want %q", tc.r, got, tc.want)
		}
	}
}

func TestParseNotAMessage(t *testing.T) {
	if _, err := Parse(strings.NewReader(" leading space\r\nis no header\r\n")); err == nil {
		t.Fatal("Parse accepted a header that starts with a continuation line")
	}
	rep, err := Parse(strings.NewReader("Subject: hi\r\n\r\nplain text, no status here\r\n"))
	if err != nil || len(rep.Recipients) != 0 || rep.DeliveryStatus {
		t.Fatalf("plain message = %+v, %v; want no recipients", rep, err)
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.eml"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := ParseBytes(b)
		if err != nil {
			return
		}
		if len(rep.Recipients) > maxRecipients+1 {
			t.Fatalf("%d recipients, over the limit", len(rep.Recipients))
		}
		for _, r := range rep.Recipients {
			if r.Status != "" && statusCode(r.Status) != r.Status {
				t.Fatalf("status %q is not a status code", r.Status)
			}
			_ = r.Class()
			if n := NormalizeReason(r.Diagnostic); len(n) > 120 {
				t.Fatalf("reason of %d bytes", len(n))
			}
		}
	})
}

// TestParseEnvelopeID: Original-Envelope-Id comes from the per-message
// block, xtext decoded (RFC 3461 §4).
func TestParseEnvelopeID(t *testing.T) {
	for raw, want := range map[string]string{
		"blaster.7.9.abc": "blaster.7.9.abc",
		"a+2Bb+3Dc":       "a+b=c",
		"bad+zz+2":        "bad+zz+2",
	} {
		msg := "From: MAILER-DAEMON@mx.example.test\r\nSubject: failure\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n" +
			"--b\r\nContent-Type: message/delivery-status\r\n\r\n" +
			"Reporting-MTA: dns; mx.example.test\r\nOriginal-Envelope-Id: " + raw + "\r\n\r\n" +
			"Final-Recipient: rfc822; a@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n"
		rep, err := ParseBytes([]byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		if rep.EnvelopeID != want || len(rep.Recipients) != 1 {
			t.Errorf("Original-Envelope-Id %q: EnvelopeID %q with %d recipients, want %q and 1", raw, rep.EnvelopeID, len(rep.Recipients), want)
		}
	}
}

// nested returns a message whose delivery-status part is depth multiparts
// deep, each with a boundary of its own.
func nested(depth int) []byte {
	var b strings.Builder
	b.WriteString("From: MAILER-DAEMON@relay.example.test\nTo: " + sampleReturnPath + "\nMIME-Version: 1.0\n")
	for i := 0; i < depth; i++ {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n", i, i)
	}
	b.WriteString("Content-Type: message/delivery-status\n\nReporting-MTA: dns; relay.example.test\n\n" +
		"Final-Recipient: rfc822; nobody@alpha.example.test\nAction: failed\nStatus: 5.1.1\n")
	return []byte(b.String())
}

// TestParseDeepNesting: MIME nesting is bounded. go-message's Walk copies
// the part path for every part and reads each part through every enclosing
// multipart reader, so time and memory grow with the square of the depth:
// 20,000 levels (1.1 MB, far under the 10 MiB a bounce may have) took 88 s
// and 1.7 GB of allocations, and anyone who can mail a return path can
// send that. A report a few levels deep is still read; one nested deeper
// than maxMIMEDepth is not looked for.
func TestParseDeepNesting(t *testing.T) {
	rep, err := ParseBytes(nested(3))
	if err != nil || !rep.DeliveryStatus || len(rep.Recipients) != 1 {
		t.Fatalf("3 levels deep: %+v, %v; want the report read", rep, err)
	}
	if rep, err := ParseBytes(nested(maxMIMEDepth + 1)); err != nil || rep.DeliveryStatus {
		t.Errorf("%d levels deep: %+v, %v; want the report not looked for", maxMIMEDepth+1, rep, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ParseBytes(nested(20000))
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second): // about a millisecond when bounded
		t.Fatal("parsing 20,000 nested multiparts did not end in 20 s")
	}
}

// TestParseCodeLineNeedsMailer: a line starting with three digits is read
// as a reply code (a non-standard bounce without an enhanced status) only
// in a message from a mail system. An auto-response without Auto-Submitted
// or a vacation subject, whose signature holds a street address, is no
// hard bounce: it marked the recipient bounced and suppressed the address.
func TestParseCodeLineNeedsMailer(t *testing.T) {
	body := "To: " + sampleReturnPath + "\nSubject: Re: Weekly news\n\n" +
		"Thanks for writing, we will answer within two days.\n\nAcme Shop\n550 Market Street\nSan Francisco\n"
	rep, err := ParseBytes([]byte("From: support@shop.example.test\n" + body))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Recipients) != 0 {
		t.Errorf("auto-response with a street address: recipients %+v, want none", rep.Recipients)
	}
	rep, err = ParseBytes([]byte("From: Mail Delivery System <MAILER-DAEMON@relay.example.test>\n" +
		strings.Replace(body, "550 Market Street", "550 No such user here", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Recipients) != 1 || rep.Recipients[0].Class() != Hard {
		t.Errorf("a mailer daemon's reply line: recipients %+v, want one hard", rep.Recipients)
	}
}

// TestParseUTF8Recipients: Original-Recipient and Final-Recipient of RFC
// 6533's utf-8 type in a message/global-delivery-status part read as the
// address, whether utf-8-addr-xtext, raw UTF-8 or a mix; rfc822 values and
// malformed escapes are kept as they are (lower-cased, as every address).
func TestParseUTF8Recipients(t *testing.T) {
	for _, tt := range []struct{ field, want string }{
		{`utf-8; j\x{F6}rg@\x{4F8B}\x{3048}.test`, "jörg@例え.test"},
		{"utf-8;jörg@例え.test", "jörg@例え.test"},
		{`UTF-8; <J\x{D6}RG@example.test>`, "jörg@example.test"},
		{`utf-8; jö\x{2B}a\x{3D}b\x{5C}c@example.test`, `jö+a=b\c@example.test`},
		{`utf-8; j\x{f6}rg@example.test`, "jörg@example.test"},
		{`rfc822; j\x{F6}rg@example.test`, `j\x{f6}rg@example.test`},
		{`utf-8; j\x{F6rg@example.test`, `j\x{f6rg@example.test`},
		{`utf-8; \x{F6}j\x{D800}rg@example.test`, `\x{f6}j\x{d800}rg@example.test`},
		{`utf-8; j\x{}rg@example.test`, `j\x{}rg@example.test`},
		{`utf-8; j\x{0}rg@example.test`, `j\x{0}rg@example.test`},
		{`utf-8; j\x{110000}rg@example.test`, `j\x{110000}rg@example.test`},
		{`utf-8; j\x{zz}rg@example.test`, `j\x{zz}rg@example.test`},
		{`utf-8; j\x{F6}rg@example.test\x{`, `j\x{f6}rg@example.test\x{`},
	} {
		msg := "From: MAILER-DAEMON@mx.example.test\r\nSubject: failure\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/report; report-type=global-delivery-status; boundary=b\r\n\r\n" +
			"--b\r\nContent-Type: message/global-delivery-status\r\n\r\n" +
			"Reporting-MTA: dns; mx.example.test\r\n\r\n" +
			"Original-Recipient: " + tt.field + "\r\nFinal-Recipient: " + tt.field + "\r\n" +
			"Action: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n"
		rep, err := ParseBytes([]byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Recipients) != 1 {
			t.Fatalf("%s: %d recipients, want 1", tt.field, len(rep.Recipients))
		}
		if r := rep.Recipients[0]; r.OriginalRecipient != tt.want || r.FinalRecipient != tt.want {
			t.Errorf("%s: Original-Recipient %q, Final-Recipient %q, want %q", tt.field, r.OriginalRecipient, r.FinalRecipient, tt.want)
		}
	}
}

func FuzzDecodeUTF8AddrXtext(f *testing.F) {
	for _, s := range []string{`j\x{F6}rg@\x{4F8B}.test`, `\x{`, `\x{10FFFF}`, `\x{D800}`, `a\b`, `\x{5C}x{41}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d := decodeUTF8AddrXtext(s)
		// An escape is at least five octets for at most four.
		if len(d) > len(s) || (utf8.ValidString(s) && !utf8.ValidString(d)) {
			t.Fatalf("%q decodes to %q", s, d)
		}
	})
}
