// Package returnpath makes and checks signed return paths (the envelope
// sender, MAIL FROM, RFC 5321 §4.1.1.2) that tie an asynchronous bounce to
// the campaign, and when it can to the recipient, it is about.
//
// The idea is VERP (variable envelope return paths, D. J. Bernstein, 1997):
// the envelope sender of each message encodes who it went to, so a bounce,
// which is sent to that address (RFC 5321 §4.5.5, RFC 3464 §2), names the
// recipient whatever its text says. blaster's addresses carry an HMAC, so
// nobody without the key can make an address that marks someone bounced:
//
//	bounces+<campaign>-<contact>-<mac>@bounce.example.test   one recipient
//	bounces+<campaign>-<mac>@bounce.example.test             a whole campaign
//
// The MAC is HMAC-SHA256 over the ids, truncated to 80 bits and written in
// lower-case base32, because mail systems may change the case of a local
// part (RFC 5321 §2.4 lets them). The key comes from BLASTER_BOUNCE_KEY or a
// key file (LoadKey), as the unsubscribe key does; it is never stored.
package returnpath

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/blaster-mail/blaster/internal/secretkey"
)

// KeyEnv is the environment variable holding the secret key.
const KeyEnv = "BLASTER_BOUNCE_KEY"

// MinKeyLen is the shortest key accepted, in bytes (RFC 2104 §3: no
// shorter than the hash output).
const MinKeyLen = 32

// LoadKey returns the signing key: the contents of file if file is not ""
// (one trailing newline removed), else getenv(KeyEnv); at least MinKeyLen
// bytes. getenv is os.Getenv outside tests.
func LoadKey(file string, getenv func(string) string) ([]byte, error) {
	return secretkey.Load("bounce", KeyEnv, file, getenv, MinKeyLen)
}

// Delimiter separates the base local part from the tag, as Postfix's
// recipient_delimiter and Exim's local_part_suffix do by convention.
const Delimiter = '+'

// macLen is the MAC bytes kept: 80 bits. A forger gets one guess per SMTP
// transaction, so 2^80 guesses are out of reach, and the address stays
// within RFC 5321's 64-octet local part (§4.5.3.1.1) with ids of up to 10
// digits and a base of up to MaxBaseLocal octets.
const macLen = 10

// MaxBaseLocal is the longest base local part ("bounces") accepted.
const MaxBaseLocal = 20

// MaxLocalPart is RFC 5321's limit on a local part (§4.5.3.1.1).
const MaxLocalPart = 64

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// ErrInvalid is returned (wrapped) for an address that is not a signed
// return path or whose MAC does not match.
var ErrInvalid = errors.New("invalid return path")

// Tag is what a signed return path says.
type Tag struct {
	CampaignID int64
	// ContactID is the recipient; 0 for a campaign-level return path, whose
	// bounces name their recipients in the report only.
	ContactID int64
}

// Signer makes and verifies return paths with one key.
type Signer struct {
	key []byte
}

// NewSigner returns a Signer for key (at least MinKeyLen bytes).
func NewSigner(key []byte) (*Signer, error) {
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("return path key: %d bytes, need at least %d", len(key), MinKeyLen)
	}
	return &Signer{key: key}, nil
}

// CheckBase checks a base return path such as bounces@bounce.example.test:
// a local part of letters, digits, '.', '-' and '_' (no Delimiter, no
// quoting, at most MaxBaseLocal octets) and a domain of letters, digits,
// '-' and '.'. Nothing else can reach the envelope, so no CR, LF, space or
// angle bracket ever goes into MAIL FROM.
func CheckBase(base string) (local, domain string, err error) {
	at := strings.LastIndexByte(base, '@')
	if at <= 0 || at == len(base)-1 {
		return "", "", fmt.Errorf("return path %q: want local@domain", base)
	}
	local, domain = base[:at], strings.ToLower(base[at+1:])
	if len(local) > MaxBaseLocal {
		return "", "", fmt.Errorf("return path %q: local part longer than %d octets leaves no room for the tag", base, MaxBaseLocal)
	}
	for i := 0; i < len(local); i++ {
		c := local[i]
		if !(isAlnum(c) || c == '.' || c == '-' || c == '_') {
			return "", "", fmt.Errorf("return path %q: local part may hold only letters, digits, '.', '-', '_' (found %q)", base, c)
		}
	}
	if local[0] == '.' || local[len(local)-1] == '.' || strings.Contains(local, "..") {
		return "", "", fmt.Errorf("return path %q: misplaced '.' in the local part", base)
	}
	if len(domain) > 253 {
		return "", "", fmt.Errorf("return path %q: domain longer than 253 octets", base)
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", "", fmt.Errorf("return path %q: bad domain label %q", base, label)
		}
		for i := 0; i < len(label); i++ {
			if !isAlnum(label[i]) && label[i] != '-' {
				return "", "", fmt.Errorf("return path %q: domain may hold only letters, digits, '-' and '.' (found %q)", base, label[i])
			}
		}
	}
	return local, domain, nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// Address returns the signed return path under base (checked with
// CheckBase) for a campaign's recipient, or for the whole campaign when
// contactID is 0.
func (s *Signer) Address(base string, campaignID, contactID int64) (string, error) {
	local, domain, err := CheckBase(base)
	if err != nil {
		return "", err
	}
	if campaignID <= 0 || contactID < 0 {
		return "", fmt.Errorf("return path: campaign id %d, contact id %d out of range", campaignID, contactID)
	}
	var b strings.Builder
	b.Grow(len(base) + 48)
	b.WriteString(local)
	b.WriteByte(Delimiter)
	b.WriteString(strconv.FormatInt(campaignID, 10))
	b.WriteByte('-')
	if contactID != 0 {
		b.WriteString(strconv.FormatInt(contactID, 10))
		b.WriteByte('-')
	}
	b.WriteString(strings.ToLower(b32.EncodeToString(s.mac(Tag{CampaignID: campaignID, ContactID: contactID}))))
	b.WriteByte('@')
	b.WriteString(domain)
	return b.String(), nil
}

// Verify checks that addr (a bare address or one in angle brackets) is a
// return path this Signer made, in any letter case, and returns its Tag.
// The comparison takes constant time.
func (s *Signer) Verify(addr string) (Tag, error) {
	addr = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(addr), "<"), ">")
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return Tag{}, fmt.Errorf("%w: %q has no @", ErrInvalid, addr)
	}
	local := addr[:at]
	d := strings.IndexByte(local, Delimiter)
	if d < 0 {
		return Tag{}, fmt.Errorf("%w: %q has no %c tag", ErrInvalid, addr, Delimiter)
	}
	fields := strings.Split(strings.ToUpper(local[d+1:]), "-")
	var t Tag
	var err error
	switch len(fields) {
	case 2:
	case 3:
		if t.ContactID, err = parseID(fields[1]); err != nil {
			return Tag{}, fmt.Errorf("%w: %q: contact id: %w", ErrInvalid, addr, err)
		}
	default:
		return Tag{}, fmt.Errorf("%w: %q: want <campaign>[-<contact>]-<mac> after %c", ErrInvalid, addr, Delimiter)
	}
	if t.CampaignID, err = parseID(fields[0]); err != nil {
		return Tag{}, fmt.Errorf("%w: %q: campaign id: %w", ErrInvalid, addr, err)
	}
	// 10 bytes are exactly 16 base32 characters: no spare bits, so each
	// MAC has one spelling.
	sum, err := b32.DecodeString(fields[len(fields)-1])
	if err != nil || len(sum) != macLen {
		return Tag{}, fmt.Errorf("%w: %q: MAC is not %d bytes of base32", ErrInvalid, addr, macLen)
	}
	if !hmac.Equal(sum, s.mac(t)) {
		return Tag{}, fmt.Errorf("%w: %q: MAC does not match", ErrInvalid, addr)
	}
	return t, nil
}

// parseID accepts a positive decimal id in canonical form (no sign, no
// leading zeros), so each tag has exactly one spelling.
func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != s {
		return 0, fmt.Errorf("%q is not a positive id", s)
	}
	return id, nil
}

// mac is HMAC-SHA256(key, "blaster-return-path-1" | campaign | contact)
// with fixed-width ids, truncated to macLen. The prefix keeps these MACs
// apart from any other use of the same key.
func (s *Signer) mac(t Tag) []byte { return s.labelledMAC("blaster-return-path-1", t) }

func (s *Signer) labelledMAC(label string, t Tag) []byte {
	h := hmac.New(sha256.New, s.key)
	h.Write([]byte(label))
	var ids [16]byte
	binary.BigEndian.PutUint64(ids[:8], uint64(t.CampaignID))
	binary.BigEndian.PutUint64(ids[8:], uint64(t.ContactID))
	h.Write(ids[:])
	return h.Sum(nil)[:macLen]
}

// envIDPrefix starts every envelope id blaster makes.
const envIDPrefix = "blaster."

// EnvelopeID returns the DSN envelope id (ENVID, RFC 3461 §4.4) of a
// transaction of a campaign to one contact, or to several (contactID 0):
// "blaster.<campaign>.<contact>.<mac>", the MAC made as a return path's
// but under a label of its own, so that a bounce processor can trust the
// recipient a DSN's Original-Envelope-Id names (RFC 3464 §2.2.1). A nil
// Signer (no key) gives the unsigned "blaster.<campaign>.<contact>", which
// identifies the transaction for other bounce processors and is never
// trusted by VerifyEnvelopeID. At most 64 characters of xtext-safe ASCII
// (RFC 3461 allows 100).
func (s *Signer) EnvelopeID(campaignID, contactID int64) string {
	id := envIDPrefix + strconv.FormatInt(campaignID, 10) + "." + strconv.FormatInt(contactID, 10)
	if s == nil {
		return id
	}
	return id + "." + strings.ToLower(b32.EncodeToString(s.labelledMAC("blaster-envid-1", Tag{CampaignID: campaignID, ContactID: contactID})))
}

// VerifyEnvelopeID checks that id is an envelope id this Signer made (in
// any letter case) and returns what it says.
func (s *Signer) VerifyEnvelopeID(id string) (Tag, error) {
	rest, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(id)), envIDPrefix)
	fields := strings.Split(rest, ".")
	if !ok || len(fields) != 3 {
		return Tag{}, fmt.Errorf("%w: envelope id %q: want blaster.<campaign>.<contact>.<mac>", ErrInvalid, id)
	}
	var t Tag
	var err error
	if t.CampaignID, err = parseID(fields[0]); err != nil {
		return Tag{}, fmt.Errorf("%w: envelope id %q: campaign id: %w", ErrInvalid, id, err)
	}
	if fields[1] != "0" {
		if t.ContactID, err = parseID(fields[1]); err != nil {
			return Tag{}, fmt.Errorf("%w: envelope id %q: contact id: %w", ErrInvalid, id, err)
		}
	}
	sum, err := b32.DecodeString(strings.ToUpper(fields[2]))
	if err != nil || len(sum) != macLen {
		return Tag{}, fmt.Errorf("%w: envelope id %q: MAC is not %d bytes of base32", ErrInvalid, id, macLen)
	}
	if !hmac.Equal(sum, s.labelledMAC("blaster-envid-1", t)) {
		return Tag{}, fmt.Errorf("%w: envelope id %q: MAC does not match", ErrInvalid, id)
	}
	return t, nil
}
