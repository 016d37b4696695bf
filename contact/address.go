package contact

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Length limits of RFC 5321 §4.5.3.1, in octets.
const (
	// MaxLocalPart is the longest local part (RFC 5321 §4.5.3.1.1).
	MaxLocalPart = 64
	// MaxDomain is the longest domain (RFC 5321 §4.5.3.1.2).
	MaxDomain = 255
	// MaxPath is the longest reverse- or forward-path, angle brackets
	// included (RFC 5321 §4.5.3.1.3), so an address is at most 254 octets.
	MaxPath = 256
	// maxLabel is the longest DNS label (RFC 1035 §2.3.4).
	maxLabel = 63
)

// AddressError says why a string is not an acceptable address. Reason is
// short and meant for people ("missing @", "domain label too long").
type AddressError struct {
	Input  string // the address as given (cut to 100 bytes in Error)
	Reason string
}

func (e *AddressError) Error() string {
	in := e.Input
	if len(in) > 100 {
		in = in[:100] + "..."
	}
	return fmt.Sprintf("invalid address %q: %s", in, e.Reason)
}

// ParseAddress checks that s is a bare addr-spec (RFC 5321 §4.1.2 Mailbox,
// the RFC 5322 §3.4.1 addr-spec without comments or folding white space) and
// returns it normalized for storage and sending:
//
//   - surrounding white space is trimmed; display names ("Ann <a@b.example>"),
//     angle brackets and comments are refused;
//   - the local part is a dot-string or a quoted string, kept as given (RFC
//     5321 §2.4: it may be case-sensitive), and may hold UTF-8 (RFC 6531
//     §3.3, UTF8-non-ascii in atext and qtext);
//   - the domain is converted to A-labels with the IDNA2008 Lookup profile
//     (RFC 5891 §5; golang.org/x/net/idna) and lower-cased; it must have at
//     least two labels, each of at most 63 octets; address literals
//     ([192.0.2.1]) are valid syntax but refused, as no mailing list should
//     hold them;
//   - the lengths of RFC 5321 §4.5.3.1 hold: local part 64 octets, domain
//     255, and the whole path (with its angle brackets) 256.
//
// Errors are *AddressError.
func ParseAddress(s string) (string, error) {
	in := s
	s = strings.TrimSpace(s)
	bad := func(format string, args ...any) (string, error) {
		return "", &AddressError{Input: in, Reason: fmt.Sprintf(format, args...)}
	}
	if s == "" {
		return bad("empty")
	}
	if !utf8.ValidString(s) {
		return bad("not valid UTF-8")
	}
	if strings.ContainsAny(s, "<>") {
		return bad("display names and angle brackets are not allowed, give the bare address")
	}

	local, domain, err := splitAddress(s)
	if err != "" {
		return bad("%s", err)
	}
	if len(local) > MaxLocalPart {
		return bad("local part is %d octets, longer than %d (RFC 5321 §4.5.3.1.1)", len(local), MaxLocalPart)
	}
	ascii, err := normalizeDomain(domain)
	if err != "" {
		return bad("%s", err)
	}
	if len(ascii) > MaxDomain {
		return bad("domain is %d octets, longer than %d (RFC 5321 §4.5.3.1.2)", len(ascii), MaxDomain)
	}
	addr := local + "@" + ascii
	if len(addr)+2 > MaxPath {
		return bad("address is %d octets, longer than %d (RFC 5321 §4.5.3.1.3)", len(addr), MaxPath-2)
	}
	return addr, nil
}

// splitAddress splits s into its local part (checked) and domain (unchecked),
// or returns the reason it cannot.
func splitAddress(s string) (local, domain, reason string) {
	if s[0] == '"' {
		end, reason := scanQuoted(s)
		if reason != "" {
			return "", "", reason
		}
		local, rest := s[:end], s[end:]
		if rest == "" {
			return "", "", "missing @"
		}
		if rest[0] != '@' {
			return "", "", "quoted local part must be followed by @"
		}
		return local, rest[1:], ""
	}
	at := strings.IndexByte(s, '@')
	if at < 0 {
		return "", "", "missing @"
	}
	local, domain = s[:at], s[at+1:]
	if strings.IndexByte(domain, '@') >= 0 {
		return "", "", "more than one @"
	}
	if local == "" {
		return "", "", "empty local part"
	}
	if reason := checkDotString(local); reason != "" {
		return "", "", reason
	}
	return local, domain, ""
}

// checkDotString checks an RFC 5321 §4.1.2 Dot-string with the RFC 6531
// §3.3 extension of atext to UTF8-non-ascii.
func checkDotString(local string) string {
	if local[0] == '.' {
		return "local part starts with a dot"
	}
	if local[len(local)-1] == '.' {
		return "local part ends with a dot"
	}
	prevDot := false
	for _, r := range local {
		switch {
		case r == '.':
			if prevDot {
				return "local part has two dots in a row"
			}
			prevDot = true
			continue
		case r >= utf8.RuneSelf:
			if r < 0xa0 { // C1 controls are not graphic UTF8-non-ascii
				return fmt.Sprintf("control character %U in local part", r)
			}
		case !isAtext(byte(r)):
			switch {
			case r == ' ' || r == '\t':
				return "white space in local part (it would need quotes)"
			case r < 0x20 || r == 0x7f:
				return fmt.Sprintf("control character %U in local part", r)
			default:
				return fmt.Sprintf("character %q not allowed in local part (it would need quotes)", r)
			}
		}
		prevDot = false
	}
	return ""
}

// scanQuoted scans an RFC 5321 §4.1.2 Quoted-string at the start of s
// (qtextSMTP and quoted-pairSMTP, with RFC 6531 UTF8-non-ascii) and returns
// the index just past its closing quote.
func scanQuoted(s string) (int, string) {
	for i := 1; i < len(s); {
		c := s[i]
		switch {
		case c == '"':
			if i == 1 {
				return 0, "empty quoted local part"
			}
			return i + 1, ""
		case c == '\\':
			if i+1 >= len(s) || s[i+1] < 32 || s[i+1] > 126 {
				return 0, "bad backslash escape in quoted local part"
			}
			i += 2
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRuneInString(s[i:])
			if r < 0xa0 {
				return 0, fmt.Sprintf("control character %U in local part", r)
			}
			i += n
		case c < 32 || c == 127:
			return 0, fmt.Sprintf("control character %U in local part", rune(c))
		default:
			i++
		}
	}
	return 0, "unterminated quoted local part"
}

// isAtext reports whether c is an ASCII atext character (RFC 5322 §3.2.3).
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// normalizeDomain returns domain in lower-case A-label form, or the reason
// it is not an acceptable mail domain.
func normalizeDomain(domain string) (string, string) {
	switch {
	case domain == "":
		return "", "empty domain"
	case domain[0] == '[':
		return "", "address literals are not accepted, give a domain name"
	case domain[0] == '.':
		return "", "domain starts with a dot"
	case domain[len(domain)-1] == '.':
		return "", "domain ends with a dot"
	case strings.Contains(domain, ".."):
		return "", "domain has two dots in a row"
	case !strings.Contains(domain, "."):
		return "", "domain has no dot (a single label is not a mail domain)"
	}
	ascii, ok := plainDomain(domain)
	if !ok {
		var err error
		ascii, err = idna.Lookup.ToASCII(domain)
		if err != nil {
			return "", "domain: " + idnaReason(err)
		}
		ascii = strings.ToLower(ascii)
	}
	for label := range strings.SplitSeq(ascii, ".") {
		if len(label) > maxLabel {
			return "", fmt.Sprintf("domain label too long (%d octets, at most %d, RFC 1035 §2.3.4)", len(label), maxLabel)
		}
		if label == "" {
			return "", "domain has an empty label"
		}
	}
	return ascii, ""
}

// plainDomain lower-cases a domain of plain LDH labels (RFC 5890 §2.3.1)
// without going through IDNA processing, which is slow: the common case of
// an import. It returns ok false for anything else (non-ASCII, xn-- labels,
// hyphens at the edges or in positions 3 and 4), which IDNA then checks.
func plainDomain(d string) (string, bool) {
	start := 0
	upper := false
	for i := 0; i <= len(d); i++ {
		if i == len(d) || d[i] == '.' {
			label := d[start:i]
			if label == "" || label[0] == '-' || label[len(label)-1] == '-' ||
				(len(label) >= 4 && label[2] == '-' && label[3] == '-') {
				return "", false
			}
			start = i + 1
			continue
		}
		c := d[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
		case 'A' <= c && c <= 'Z':
			upper = true
		default:
			return "", false
		}
	}
	if upper {
		return strings.ToLower(d), true
	}
	return d, true
}

// idnaReason turns an idna error into a short reason.
func idnaReason(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "idna: ")
	return msg
}
