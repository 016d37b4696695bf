package contact

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseAddress(t *testing.T) {
	tests := []struct {
		in, want string
		reason   string // substring of the AddressError's Reason when want is ""
	}{
		{in: "ann@example.com", want: "ann@example.com"},
		{in: "  Ann.Lee@Example.COM \t", want: "Ann.Lee@example.com"},
		{in: "a+tag@sub.example.org", want: "a+tag@sub.example.org"},
		{in: "!#$%&'*+-/=?^_`{|}~@example.test", want: "!#$%&'*+-/=?^_`{|}~@example.test"},
		{in: `"john doe"@example.com`, want: `"john doe"@example.com`},
		{in: `"a@b"@example.com`, want: `"a@b"@example.com`},
		{in: `"a\"b"@example.com`, want: `"a\"b"@example.com`},
		{in: "jürgen@example.com", want: "jürgen@example.com"},          // RFC 6531
		{in: "用户@例子.广告", want: "用户@xn--fsqu00a.xn--4rr70v"},             // IDN domain to A-labels
		{in: "user@BÜCHER.example", want: "user@xn--bcher-kva.example"}, // mapped to lower case
		{in: "user@xn--bcher-kva.example", want: "user@xn--bcher-kva.example"},
		{in: "x@a-b.example", want: "x@a-b.example"},
		{in: "x@123.example", want: "x@123.example"},
		{in: strings.Repeat("l", 64) + "@example.com", want: strings.Repeat("l", 64) + "@example.com"},

		{in: "", reason: "empty"},
		{in: "   ", reason: "empty"},
		{in: "ann.example.com", reason: "missing @"},
		{in: "ann@b@example.com", reason: "more than one @"},
		{in: "@example.com", reason: "empty local part"},
		{in: "ann@", reason: "empty domain"},
		{in: "Ann <ann@example.com>", reason: "display names"},
		{in: "<ann@example.com>", reason: "angle brackets"},
		{in: ".ann@example.com", reason: "starts with a dot"},
		{in: "ann.@example.com", reason: "ends with a dot"},
		{in: "a..nn@example.com", reason: "two dots"},
		{in: "a nn@example.com", reason: "white space"},
		{in: "a(comment)@example.com", reason: `character '('`},
		{in: "a,b@example.com", reason: `character ','`},
		{in: "a\x00b@example.com", reason: "control character"},
		{in: "a\u0085b@example.com", reason: "control character"},
		{in: "\xff@example.com", reason: "UTF-8"},
		{in: `"unterminated@example.com`, reason: "unterminated"},
		{in: `""@example.com`, reason: "empty quoted"},
		{in: `"ab"x@example.com`, reason: "followed by @"},
		{in: `"ab"`, reason: "missing @"},
		{in: "\"a\x01\"@example.com", reason: "control character"},
		{in: "ann@localhost", reason: "no dot"},
		{in: "ann@[192.0.2.1]", reason: "address literals"},
		{in: "ann@.example.com", reason: "starts with a dot"},
		{in: "ann@example.com.", reason: "ends with a dot"},
		{in: "ann@example..com", reason: "two dots"},
		{in: "ann@exa_mple.com", reason: "domain:"},
		{in: "ann@-example.com", reason: "domain:"},
		{in: "ann@example-.com", reason: "domain:"},
		{in: "ann@exa mple.com", reason: "domain:"},
		{in: "ann@" + strings.Repeat("d", 64) + ".com", reason: "domain label too long"},
		{in: strings.Repeat("l", 65) + "@example.com", reason: "local part is 65 octets"},
		{in: "a@" + strings.Repeat(strings.Repeat("d", 60)+".", 5) + "example", reason: "domain is 312 octets"},
		{in: strings.Repeat("l", 64) + "@" + strings.Repeat(strings.Repeat("d", 60)+".", 3) + "example.com", reason: "address is"},
	}
	for _, tt := range tests {
		got, err := ParseAddress(tt.in)
		if tt.want != "" {
			if err != nil || got != tt.want {
				t.Errorf("ParseAddress(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			continue
		}
		var ae *AddressError
		if !errors.As(err, &ae) {
			t.Errorf("ParseAddress(%q) = %q, %v; want an *AddressError", tt.in, got, err)
			continue
		}
		if !strings.Contains(ae.Reason, tt.reason) {
			t.Errorf("ParseAddress(%q): reason %q, want it to contain %q", tt.in, ae.Reason, tt.reason)
		}
	}
}

// FuzzParseAddress checks that ParseAddress never panics, that what it
// accepts fits the length limits, is valid UTF-8, has an ASCII lower-case
// domain, and parses again to itself (normalization is idempotent).
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"ann@example.com", `"a b"@example.com`, "用户@例子.广告",
		"x@xn--bcher-kva.example", "a..b@c.d", "<a@b.c>", "a@[1.2.3.4]", "\"\\", "a@b.c."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		addr, err := ParseAddress(s)
		if err != nil {
			var ae *AddressError
			if !errors.As(err, &ae) || ae.Reason == "" {
				t.Fatalf("ParseAddress(%q): error %v is not an *AddressError with a reason", s, err)
			}
			return
		}
		if !utf8.ValidString(addr) || len(addr) > MaxPath-2 {
			t.Fatalf("ParseAddress(%q) = %q: invalid UTF-8 or too long", s, addr)
		}
		at := strings.LastIndexByte(addr, '@')
		domain := addr[at+1:]
		for i := 0; i < len(domain); i++ {
			if c := domain[i]; c >= utf8.RuneSelf || ('A' <= c && c <= 'Z') {
				t.Fatalf("ParseAddress(%q) = %q: domain not lower-case ASCII", s, addr)
			}
		}
		again, err := ParseAddress(addr)
		if err != nil || again != addr {
			t.Fatalf("ParseAddress(%q) = %q, but ParseAddress(%q) = %q, %v", s, addr, addr, again, err)
		}
	})
}
