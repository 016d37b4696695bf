package returnpath

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func signer(t *testing.T, key []byte) *Signer {
	t.Helper()
	s, err := NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRoundTrip(t *testing.T) {
	s := signer(t, testKey)
	for _, tc := range []struct {
		campaign, contact int64
		prefix            string
	}{
		{42, 7, "bounces+42-7-"},
		{42, 0, "bounces+42-"},
		{9999999999, 9999999999, "bounces+9999999999-9999999999-"},
	} {
		addr, err := s.Address("bounces@Bounce.Example.test", tc.campaign, tc.contact)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(addr, tc.prefix) || !strings.HasSuffix(addr, "@bounce.example.test") {
			t.Fatalf("Address = %q, want %s...@bounce.example.test", addr, tc.prefix)
		}
		if local := addr[:strings.IndexByte(addr, '@')]; len(local) > MaxLocalPart {
			t.Fatalf("local part of %q is %d octets, over RFC 5321's %d", addr, len(local), MaxLocalPart)
		}
		// Mail systems may change the case of a local part.
		for _, a := range []string{addr, strings.ToUpper(addr), "<" + addr + ">"} {
			got, err := s.Verify(a)
			if err != nil || got != (Tag{CampaignID: tc.campaign, ContactID: tc.contact}) {
				t.Fatalf("Verify(%q) = %+v, %v", a, got, err)
			}
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	s := signer(t, testKey)
	good, _ := s.Address("bounces@bounce.example.test", 42, 7)
	local, domain, _ := strings.Cut(good, "@")
	mac := local[strings.LastIndexByte(local, '-')+1:]
	flip := []byte(mac)
	flip[0] = map[bool]byte{true: 'b', false: 'a'}[flip[0] == 'a']
	campaignOnly, _ := s.Address("bounces@bounce.example.test", 42, 0)
	cmac := campaignOnly[strings.LastIndexByte(campaignOnly, '-')+1 : strings.IndexByte(campaignOnly, '@')]
	for _, tc := range []struct{ name, addr string }{
		{"tampered mac", "bounces+42-7-" + string(flip) + "@" + domain},
		{"other contact", "bounces+42-8-" + mac + "@" + domain},
		{"other campaign", "bounces+43-7-" + mac + "@" + domain},
		{"campaign mac on a recipient", "bounces+42-7-" + cmac + "@" + domain},
		{"recipient mac on the campaign", "bounces+42-" + mac + "@" + domain},
		{"leading zero", "bounces+042-7-" + mac + "@" + domain},
		{"negative", "bounces+-42-7-" + mac + "@" + domain},
		{"short mac", "bounces+42-7-" + mac[:10] + "@" + domain},
		{"padded mac", "bounces+42-7-" + mac + "======@" + domain},
		{"extra field", "bounces+42-7-1-" + mac + "@" + domain},
		{"no tag", "bounces@" + domain},
		{"no at", "bounces+42-7-" + mac},
		{"empty", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := s.Verify(tc.addr); !errors.Is(err, ErrInvalid) {
				t.Errorf("Verify(%q) = %+v, %v; want ErrInvalid", tc.addr, got, err)
			}
		})
	}
	other := signer(t, []byte("fedcba9876543210fedcba9876543210"))
	if _, err := other.Verify(good); !errors.Is(err, ErrInvalid) {
		t.Errorf("another key's Verify(%q) = %v, want ErrInvalid", good, err)
	}
}

// TestNoHeaderInjection: whatever the operator types as the base, nothing
// but a plain address can come out, so MAIL FROM and the Return-Path header
// a receiver writes from it can carry no second line.
func TestNoHeaderInjection(t *testing.T) {
	s := signer(t, testKey)
	for _, base := range []string{
		"bounces@bounce.example.test\r\nBcc: victim@example.test",
		"bounces\r\n@bounce.example.test",
		"bounces@bounce.example.test\n",
		"<bounces@bounce.example.test>",
		"bounces@bounce.example.test> SIZE=1",
		"b ounces@bounce.example.test",
		"bounces+x@bounce.example.test",
		`"bo unces"@bounce.example.test`,
		"bounces@bounce..example.test",
		"bounces@-bounce.example.test",
		"bounces@bounce.example.test:25",
		"bounces@",
		"@bounce.example.test",
		"a-very-long-bounce-local-part@bounce.example.test",
		"bounces@bounce.exämple.test",
	} {
		if addr, err := s.Address(base, 1, 1); err == nil {
			t.Errorf("Address(%q) = %q, want an error", base, addr)
		}
	}
	safe := regexp.MustCompile(`^[A-Za-z0-9._-]+\+[0-9]+-([0-9]+-)?[a-z2-7]{16}@[a-z0-9.-]+$`)
	for _, base := range []string{"bounces@bounce.example.test", "B.o_u-n@x.example.test"} {
		addr, err := s.Address(base, 12, 34)
		if err != nil || !safe.MatchString(addr) {
			t.Errorf("Address(%q) = %q, %v; want a plain address", base, addr, err)
		}
	}
}

func TestNewSignerShortKey(t *testing.T) {
	if _, err := NewSigner([]byte("short")); err == nil {
		t.Fatal("NewSigner accepted a 5-byte key")
	}
}

func TestLoadKey(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == KeyEnv {
				return v
			}
			return ""
		}
	}
	if k, err := LoadKey("", env(string(testKey))); err != nil || string(k) != string(testKey) {
		t.Fatalf("LoadKey from env = %q, %v", k, err)
	}
	if _, err := LoadKey("", env("")); err == nil || !strings.Contains(err.Error(), KeyEnv) {
		t.Fatalf("LoadKey without a key = %v, want an error naming %s", err, KeyEnv)
	}
}

func FuzzVerify(f *testing.F) {
	s, _ := NewSigner(testKey)
	good, _ := s.Address("bounces@bounce.example.test", 42, 7)
	f.Add(good)
	f.Add("bounces+1-aaaaaaaaaaaaaaaa@x")
	f.Fuzz(func(t *testing.T, addr string) {
		tag, err := s.Verify(addr)
		if err != nil {
			return
		}
		// Anything accepted re-encodes to the same address, case aside.
		again, err := s.Address("bounces@bounce.example.test", tag.CampaignID, tag.ContactID)
		if err != nil {
			t.Fatal(err)
		}
		_, l1, _ := strings.Cut(strings.ToLower(strings.Trim(strings.TrimSpace(addr), "<>")), "+")
		_, l2, _ := strings.Cut(again, "+")
		if strings.SplitN(l1, "@", 2)[0] != strings.SplitN(l2, "@", 2)[0] {
			t.Fatalf("Verify(%q) = %+v, which encodes as %q", addr, tag, again)
		}
	})
}

func TestEnvelopeID(t *testing.T) {
	s := signer(t, testKey)
	for _, tc := range []Tag{{42, 7}, {42, 0}, {9223372036854775807, 9223372036854775807}} {
		id := s.EnvelopeID(tc.CampaignID, tc.ContactID)
		if len(id) > 100 || strings.ContainsAny(id, "+= \r\n") {
			t.Fatalf("EnvelopeID = %q: not a short xtext-safe ENVID (RFC 3461 §4.4)", id)
		}
		got, err := s.VerifyEnvelopeID(strings.ToUpper(id))
		if err != nil || got != tc {
			t.Fatalf("VerifyEnvelopeID(%q) = %+v, %v; want %+v", id, got, err, tc)
		}
	}
	id := s.EnvelopeID(42, 7)
	for _, bad := range []string{
		strings.Replace(id, ".7.", ".8.", 1),                 // another contact
		strings.Replace(id, "blaster.42.", "blaster.43.", 1), // another campaign
		signer(t, []byte("another key, also 32 bytes long!")).EnvelopeID(42, 7),
		(*Signer)(nil).EnvelopeID(42, 7), // unsigned
		"blaster.042.7." + id[len(id)-16:],
		"", "blaster.", "x.42.7.aaaaaaaaaaaaaaaa",
	} {
		if tag, err := s.VerifyEnvelopeID(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("VerifyEnvelopeID(%q) = %+v, %v; want ErrInvalid", bad, tag, err)
		}
	}
	if got := (*Signer)(nil).EnvelopeID(42, 7); got != "blaster.42.7" {
		t.Errorf("unsigned EnvelopeID = %q", got)
	}
}
