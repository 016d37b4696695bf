// Package unsubscribe makes and checks the per-recipient tokens of
// List-Unsubscribe links (RFC 2369 §3.2) and serves the one-click endpoint
// of RFC 8058.
//
// A token names a campaign and a contact and carries an HMAC-SHA256 over
// both and the contact's lower-cased address, keyed with a secret that never
// leaves the sender's machines (it is not stored in the database). Whoever
// holds a token can unsubscribe exactly that contact from that campaign's
// sender, and nobody can forge a token for anyone else. The idea of a signed,
// self-describing link in place of a stored random id follows listmonk's
// campaign UUID + subscriber UUID links, made unforgeable.
package unsubscribe

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MinKeyLen is the shortest secret key accepted, in bytes: as long as the
// SHA-256 output (RFC 2104 §3 recommends a key no shorter than the hash).
const MinKeyLen = 32

// version prefixes every token so the format can change without breaking
// links already in mailboxes.
const version = "1"

// macLen is the number of HMAC bytes kept in a token: 16 bytes (128 bits)
// is far beyond guessing over HTTP, and keeps links short (RFC 2104 §5
// allows truncation to at least half the hash output).
const macLen = 16

// ErrInvalid is returned (wrapped) for a token that is malformed or whose
// MAC does not match.
var ErrInvalid = errors.New("invalid unsubscribe token")

// Recipient is what a token is about.
type Recipient struct {
	CampaignID int64
	ContactID  int64
	// Email is the contact's address; compared case-insensitively.
	Email string
}

// Token returns the token for r under key: "1.<campaign>.<contact>.<mac>",
// URL- and mailto-safe (base64url without padding for the MAC).
func Token(key []byte, r Recipient) string {
	var b strings.Builder
	b.Grow(48)
	b.WriteString(version)
	b.WriteByte('.')
	b.WriteString(strconv.FormatInt(r.CampaignID, 10))
	b.WriteByte('.')
	b.WriteString(strconv.FormatInt(r.ContactID, 10))
	b.WriteByte('.')
	b.WriteString(base64.RawURLEncoding.EncodeToString(mac(key, r)))
	return b.String()
}

// Parse reads the campaign and contact ids out of token without checking its
// MAC, so that a server can look up the contact's address and then call
// Verify. Never act on Parse's result alone.
func Parse(token string) (campaignID, contactID int64, err error) {
	campaignID, contactID, _, err = split(token)
	return campaignID, contactID, err
}

// Verify checks token against key and the contact's current address email,
// and returns the Recipient it is for. The comparison takes constant time.
func Verify(key []byte, token, email string) (Recipient, error) {
	campaignID, contactID, sum, err := split(token)
	if err != nil {
		return Recipient{}, err
	}
	r := Recipient{CampaignID: campaignID, ContactID: contactID, Email: email}
	if !hmac.Equal(sum, mac(key, r)) {
		return Recipient{}, fmt.Errorf("%w: MAC does not match", ErrInvalid)
	}
	return r, nil
}

func split(token string) (campaignID, contactID int64, sum []byte, err error) {
	parts := strings.Split(token, ".")
	if len(parts) != 4 {
		return 0, 0, nil, fmt.Errorf("%w: want 4 dot-separated fields, got %d", ErrInvalid, len(parts))
	}
	if parts[0] != version {
		return 0, 0, nil, fmt.Errorf("%w: unknown version %q", ErrInvalid, parts[0])
	}
	if campaignID, err = parseID(parts[1]); err != nil {
		return 0, 0, nil, fmt.Errorf("%w: campaign id: %w", ErrInvalid, err)
	}
	if contactID, err = parseID(parts[2]); err != nil {
		return 0, 0, nil, fmt.Errorf("%w: contact id: %w", ErrInvalid, err)
	}
	sum, err = base64.RawURLEncoding.Strict().DecodeString(parts[3])
	if err != nil || len(sum) != macLen {
		return 0, 0, nil, fmt.Errorf("%w: MAC is not %d bytes of base64url", ErrInvalid, macLen)
	}
	return campaignID, contactID, sum, nil
}

// parseID accepts a positive decimal id in canonical form (no sign, no
// leading zeros), so each recipient has exactly one token.
func parseID(s string) (int64, error) {
	if s == "" || s[0] < '1' || s[0] > '9' {
		return 0, fmt.Errorf("%q is not a positive id", s)
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a positive id", s)
	}
	return id, nil
}

// mac is HMAC-SHA256(key, version | campaign | contact | lower(email)) with
// fixed-width ids, truncated to macLen.
func mac(key []byte, r Recipient) []byte {
	h := hmac.New(sha256.New, key)
	var ids [1 + 16]byte
	ids[0] = version[0]
	binary.BigEndian.PutUint64(ids[1:], uint64(r.CampaignID))
	binary.BigEndian.PutUint64(ids[9:], uint64(r.ContactID))
	h.Write(ids[:])
	h.Write([]byte(strings.ToLower(r.Email)))
	return h.Sum(nil)[:macLen]
}
