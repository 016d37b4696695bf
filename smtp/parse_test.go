package smtp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"
)

func TestReadReply(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Reply
		err  bool
	}{
		{name: "single", in: "250 Ok\r\n", want: &Reply{Code: 250, Text: "Ok"}},
		{name: "code only", in: "250\r\n", want: &Reply{Code: 250}},
		{name: "bare LF", in: "250 Ok\n", want: &Reply{Code: 250, Text: "Ok"}},
		{name: "enhanced", in: "550 5.1.1 <a@example.test>: user unknown\r\n",
			want: &Reply{Code: 550, Enhanced: EnhancedCode{5, 1, 1}, Text: "<a@example.test>: user unknown"}},
		{name: "enhanced three-digit detail", in: "452 4.5.301 too many\r\n",
			want: &Reply{Code: 452, Enhanced: EnhancedCode{4, 5, 301}, Text: "too many"}},
		{name: "enhanced only", in: "250 2.0.0\r\n", want: &Reply{Code: 250, Enhanced: EnhancedCode{2, 0, 0}}},
		{name: "class mismatch is text", in: "550 4.1.1 odd\r\n", want: &Reply{Code: 550, Text: "4.1.1 odd"}},
		{name: "version number is not a code", in: "220 mx ESMTP 1.2.3\r\n", want: &Reply{Code: 220, Text: "mx ESMTP 1.2.3"}},
		{name: "bad class digit", in: "250 3.0.0 x\r\n", want: &Reply{Code: 250, Text: "3.0.0 x"}},
		{name: "multi-line", in: "250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
			want: &Reply{Code: 250, Text: "mx.example.test\nPIPELINING\nSIZE 10"}},
		{name: "multi-line enhanced on each line", in: "550-5.7.1 Our policy\r\n550-5.7.1 says no\r\n550 5.7.1 see https://example.test\r\n",
			want: &Reply{Code: 550, Enhanced: EnhancedCode{5, 7, 1}, Text: "Our policy\nsays no\nsee https://example.test"}},
		{name: "codes differ", in: "250-a\r\n251 b\r\n", err: true},
		{name: "no code", in: "hello\r\n", err: true},
		{name: "short", in: "25\r\n", err: true},
		{name: "code out of range", in: "199 x\r\n", err: true},
		{name: "code 600", in: "600 x\r\n", err: true},
		{name: "second digit 6", in: "260 x\r\n", err: true},
		{name: "bad separator", in: "250_x\r\n", err: true},
		{name: "truncated", in: "250-a\r\n", err: true},
		{name: "no line end", in: "250 a", err: true},
		{name: "empty", in: "", err: true},
		{name: "line too long", in: "250 " + strings.Repeat("x", 5000) + "\r\n", err: true},
		{name: "too many lines", in: strings.Repeat("250-x\r\n", maxReplyLines+1) + "250 x\r\n", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readReply(bufio.NewReaderSize(strings.NewReader(tt.in), 4096), nil)
			if tt.err {
				if err == nil {
					t.Fatalf("readReply = %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("readReply: %v", err)
			}
			if *got != *tt.want {
				t.Errorf("readReply = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadReplyCached(t *testing.T) {
	in := "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Okay\r\n250-2.1.5 Ok\r\n250 more\r\n250 2.1.5 Ok\r\n354 go\r\n"
	want := []Reply{
		{Code: 250, Enhanced: EnhancedCode{2, 1, 5}, Text: "Ok"},
		{Code: 250, Enhanced: EnhancedCode{2, 1, 5}, Text: "Ok"},
		{Code: 250, Enhanced: EnhancedCode{2, 1, 5}, Text: "Okay"},
		{Code: 250, Enhanced: EnhancedCode{2, 1, 5}, Text: "Ok\nmore"},
		{}, // the first reply again, set below
		{Code: 354, Text: "go"},
	}
	want[4] = want[0]
	br := bufio.NewReaderSize(strings.NewReader(in), 4096)
	var cache replyCache
	var got []*Reply
	for range want {
		r, err := readReplyCached(br, nil, &cache)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	for i := range want {
		if *got[i] != want[i] {
			t.Errorf("reply %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if got[0] != got[1] {
		t.Error("an identical reply was parsed again, not shared")
	}
	if _, err := readReplyCached(br, nil, &cache); err == nil {
		t.Error("read past the end")
	}
}

func TestReplyString(t *testing.T) {
	r := &Reply{Code: 550, Enhanced: EnhancedCode{5, 7, 1}, Text: "a\nb"}
	if got := r.String(); got != "550 5.7.1 a / b" {
		t.Errorf("String = %q", got)
	}
	e := &Error{Reply: *r, Command: "RCPT", Server: "mx.example.test:25"}
	if got := e.Error(); got != "smtp mx.example.test:25: RCPT: 550 5.7.1 a / b" {
		t.Errorf("Error = %q", got)
	}
	if e.Temporary() || !(&Error{Reply: Reply{Code: 451}}).Temporary() {
		t.Error("Temporary wrong")
	}
}

// FuzzParseReply feeds arbitrary server output to the reply reader: it
// must never panic, and what it accepts must be a well-formed reply.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"250 Ok\r\n", "250-a\r\n250 b\r\n", "550 5.1.1 x\r\n", "452-4.5.3 a\r\n452 4.5.3 b\r\n",
		"220\r\n", "599 9.9.9 x\r\n", "250 2.0\r\n", "250-\n250 \n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := readReply(bufio.NewReaderSize(bytes.NewReader(data), 4096), nil)
		if err != nil {
			return
		}
		if r.Code < 200 || r.Code > 599 {
			t.Errorf("code %d accepted", r.Code)
		}
		if r.Enhanced != (EnhancedCode{}) && r.Enhanced[0] != r.Code/100 {
			t.Errorf("enhanced %v with code %d", r.Enhanced, r.Code)
		}
		if strings.ContainsAny(r.Text, "\r") {
			t.Errorf("text %q holds a CR", r.Text)
		}
		_ = r.String()
	})
}

func TestClassify(t *testing.T) {
	netErr := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
	tests := []struct {
		name string
		err  error
		want Outcome
	}{
		{"nil", nil, Sent},
		{"5xx", &Error{Reply: Reply{Code: 550}}, Bounce},
		{"4xx", &Error{Reply: Reply{Code: 451}}, Retry},
		{"421", &Error{Reply: Reply{Code: 421}}, Retry},
		{"wrapped 5xx", fmt.Errorf("sending: %w", &Error{Reply: Reply{Code: 554}}), Bounce},
		{"unknown outcome", fmt.Errorf("%w: %w", ErrUnknownOutcome, netErr), Unknown},
		{"line too long", fmt.Errorf("x: %w", ErrLineTooLong), Bounce},
		{"SMTPUTF8", ErrSMTPUTF8Unsupported, Bounce},
		{"too large", ErrMessageTooLarge, Bounce},
		{"invalid envelope", ErrInvalidEnvelope, Bounce},
		{"auth failure", &RouteError{Op: "AUTH", Permanent: true, Err: &Error{Reply: Reply{Code: 535}}}, Retry},
		{"5xx greeting", &RouteError{Op: "greeting", Permanent: true, Err: &Error{Reply: Reply{Code: 554}}}, Retry},
		{"network", netErr, Retry},
		{"EOF", io.ErrUnexpectedEOF, Retry},
		{"canceled", context.Canceled, Retry},
		{"anything else", errors.New("what"), Retry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestReplyOutcome(t *testing.T) {
	tests := []struct {
		r    *Reply
		want Outcome
	}{
		{nil, Retry}, {&Reply{Code: 250}, Sent}, {&Reply{Code: 251}, Sent}, {&Reply{Code: 452}, Retry},
		{&Reply{Code: 550}, Bounce}, {&Reply{Code: 354}, Retry},
	}
	for _, tt := range tests {
		if got := ReplyOutcome(tt.r); got != tt.want {
			t.Errorf("ReplyOutcome(%v) = %v, want %v", tt.r, got, tt.want)
		}
	}
	for o, s := range map[Outcome]string{Sent: "sent", Retry: "retry", Bounce: "bounce", Unknown: "unknown"} {
		if o.String() != s {
			t.Errorf("%d.String() = %q, want %q", o, o.String(), s)
		}
	}
}

func TestDotWriter(t *testing.T) {
	tests := []struct {
		name, in, want string
		err            error
	}{
		{"empty", "", ".\r\n", nil},
		{"CRLF", "a\r\nb\r\n", "a\r\nb\r\n.\r\n", nil},
		{"no final line end", "a\r\nb", "a\r\nb\r\n.\r\n", nil},
		{"bare LF", "a\nb\n", "a\r\nb\r\n.\r\n", nil},
		{"bare CR", "a\rb\r", "a\r\nb\r\n.\r\n", nil},
		{"CR CR LF", "a\r\r\nb", "a\r\n\r\nb\r\n.\r\n", nil},
		{"dot stuffing", ".a\r\n..b\r\nc.\r\n.", "..a\r\n...b\r\nc.\r\n..\r\n.\r\n", nil},
		// SMTP smuggling: none of these may end the data early.
		{"smuggle LF.LF", "a\n.\nMAIL FROM:<x@example.test>\n", "a\r\n..\r\nMAIL FROM:<x@example.test>\r\n.\r\n", nil},
		{"smuggle CRLF.LF", "a\r\n.\nb", "a\r\n..\r\nb\r\n.\r\n", nil},
		{"smuggle LF.CRLF", "a\n.\r\nb", "a\r\n..\r\nb\r\n.\r\n", nil},
		{"smuggle CR.CR", "a\r.\rb", "a\r\n..\r\nb\r\n.\r\n", nil},
		{"smuggle CRLF.CRLF", "a\r\n.\r\nb", "a\r\n..\r\nb\r\n.\r\n", nil},
		{"998 octets", strings.Repeat("x", 998) + "\n", strings.Repeat("x", 998) + "\r\n.\r\n", nil},
		{"998 octets starting with a dot", "." + strings.Repeat("x", 997), ".." + strings.Repeat("x", 997) + "\r\n.\r\n", nil},
		{"999 octets", strings.Repeat("x", 999), "", ErrLineTooLong},
		{"999 octets at the end", "a\r\n" + strings.Repeat("x", 999), "", ErrLineTooLong},
		{"8-bit and NUL pass", "\xc3\xa9\x00\r\n", "\xc3\xa9\x00\r\n.\r\n", nil},
	}
	for _, tt := range tests {
		for _, oneByte := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/onebyte=%v", tt.name, oneByte), func(t *testing.T) {
				var out bytes.Buffer
				bw := bufio.NewWriter(&out)
				dw := newDotWriter(bw)
				var r io.Reader = strings.NewReader(tt.in)
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				_, err := io.Copy(dw, r)
				if err == nil {
					err = dw.close()
				}
				bw.Flush()
				if tt.err != nil {
					if !errors.Is(err, tt.err) {
						t.Fatalf("err = %v, want %v", err, tt.err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if out.String() != tt.want {
					t.Errorf("wire = %q, want %q", out.String(), tt.want)
				}
			})
		}
	}
}

// FuzzDotWriter checks the data-phase invariants on any body: the output
// has no bare CR or LF, contains the end-of-data sequence only at its end,
// and un-stuffs back to the input with line endings normalized.
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"a\n.\nb", "\r\n.\r\n", ".", "\r", "a\r\r\n.\n\r."} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		dw := newDotWriter(bw)
		if _, err := dw.Write(data); err != nil {
			if errors.Is(err, ErrLineTooLong) {
				return
			}
			t.Fatal(err)
		}
		dw.close()
		bw.Flush()
		wire := out.String()
		if !strings.HasSuffix(wire, ".\r\n") {
			t.Fatalf("no end of data: %q", wire)
		}
		body := wire[:len(wire)-3]
		if i := strings.Index("\r\n"+body, "\r\n.\r\n"); i >= 0 {
			t.Fatalf("end of data inside the body at %d: %q", i, wire)
		}
		if strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\r") || strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") {
			t.Fatalf("bare CR or LF on the wire: %q", wire)
		}
		norm := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(string(data))
		var un []string
		for _, l := range strings.Split(strings.TrimSuffix(body, "\r\n"), "\r\n") {
			un = append(un, strings.TrimPrefix(l, "."))
		}
		got := strings.Join(un, "\n")
		if body == "" {
			got = ""
		}
		if want := strings.TrimSuffix(norm, "\n"); got != want {
			t.Fatalf("round trip: got %q, want %q", got, want)
		}
	})
}
