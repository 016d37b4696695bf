package unsubscribe

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func TestTokenRoundTrip(t *testing.T) {
	r := Recipient{CampaignID: 42, ContactID: 7, Email: "Ann@Example.test"}
	tok := Token(testKey, r)
	if !strings.HasPrefix(tok, "1.42.7.") {
		t.Fatalf("Token = %q, want prefix 1.42.7.", tok)
	}
	c, k, err := Parse(tok)
	if err != nil || c != 42 || k != 7 {
		t.Fatalf("Parse(%q) = %d, %d, %v", tok, c, k, err)
	}
	got, err := Verify(testKey, tok, "ann@example.TEST")
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.CampaignID != 42 || got.ContactID != 7 {
		t.Errorf("Verify = %+v", got)
	}
}

func TestVerifyRejects(t *testing.T) {
	r := Recipient{CampaignID: 42, ContactID: 7, Email: "ann@example.test"}
	good := Token(testKey, r)
	mac := good[strings.LastIndexByte(good, '.')+1:]
	otherKey := []byte("fedcba9876543210fedcba9876543210")
	for _, tc := range []struct {
		name, token, email string
		key                []byte
	}{
		{"other email", good, "bob@example.test", testKey},
		{"other key", good, r.Email, otherKey},
		{"other contact", "1.42.8." + mac, r.Email, testKey},
		{"other campaign", "1.43.7." + mac, r.Email, testKey},
		{"leading zero", "1.042.7." + mac, r.Email, testKey},
		{"negative id", "1.-42.7." + mac, r.Email, testKey},
		{"zero id", "1.0.7." + mac, r.Email, testKey},
		{"plus sign", "1.+42.7." + mac, r.Email, testKey},
		{"version", "2.42.7." + mac, r.Email, testKey},
		{"short mac", "1.42.7." + mac[:10], r.Email, testKey},
		{"padded mac", good + "==", r.Email, testKey},
		{"extra field", good + ".x", r.Email, testKey},
		{"empty", "", r.Email, testKey},
		{"overflow", "1.9223372036854775808.7." + mac, r.Email, testKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Verify(tc.key, tc.token, tc.email); !errors.Is(err, ErrInvalid) {
				t.Errorf("Verify(%q, %q) = %v, want ErrInvalid", tc.token, tc.email, err)
			}
		})
	}
}

// FuzzVerify: no input panics, and only the genuine token for the email
// verifies.
func FuzzVerify(f *testing.F) {
	good := Token(testKey, Recipient{CampaignID: 1, ContactID: 2, Email: "a@example.test"})
	f.Add(good, "a@example.test")
	f.Add("1.1.2.AAAAAAAAAAAAAAAAAAAAAA", "a@example.test")
	f.Add("1..2.", "")
	f.Fuzz(func(t *testing.T, token, email string) {
		r, err := Verify(testKey, token, email)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Verify error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if Token(testKey, r) != token {
			t.Fatalf("Verify accepted %q for %q, which is not Token(%+v)", token, email, r)
		}
	})
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, append(append([]byte{}, testKey...), '\n'), 0o600)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == KeyEnv {
				return v
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name, file, env string
		want            string // "" means an error
	}{
		{"file", good, "", string(testKey)},
		{"file wins over env", good, "other-other-other-other-other-other", string(testKey)},
		{"env", "", string(testKey), string(testKey)},
		{"short file", short, "", ""},
		{"missing file", filepath.Join(dir, "none"), "", ""},
		{"short env", "", "abc", ""},
		{"nothing", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, err := LoadKey(tc.file, env(tc.env))
			if tc.want == "" {
				if err == nil {
					t.Fatalf("LoadKey = %q, want an error", key)
				}
				return
			}
			if err != nil || string(key) != tc.want {
				t.Fatalf("LoadKey = %q, %v; want %q", key, err, tc.want)
			}
		})
	}
}
