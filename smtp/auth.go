package smtp

import (
	"crypto/hmac"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/emersion/go-sasl"
)

// Mechanism names as they appear in the EHLO AUTH line (RFC 4954 §3).
const (
	mechPlain       = "PLAIN"       // RFC 4616
	mechLogin       = "LOGIN"       // draft-murchison-sasl-login
	mechCRAMMD5     = "CRAM-MD5"    // RFC 2195
	mechXOAuth2     = "XOAUTH2"     // Google's and Microsoft's SASL XOAUTH2
	mechOAuthBearer = "OAUTHBEARER" // RFC 7628
)

// NewAuth returns a Config.Auth function for a user name and a secret.
// mech is "plain", "login", "cram-md5", "xoauth2" or "oauthbearer"
// (case-insensitive; for the two OAuth mechanisms the secret is the access
// token), or "" to pick the best password mechanism the server offers:
// PLAIN, then LOGIN, then CRAM-MD5 only when the server offers neither.
// The chosen mechanism must be in the server's EHLO AUTH list; if it is
// not, the error names what the server offers.
//
// PLAIN, LOGIN and OAUTHBEARER come from emersion/go-sasl; XOAUTH2 and
// CRAM-MD5, which go-sasl lacks, are written here.
func NewAuth(mech, user, secret string) func(Caps) (sasl.Client, error) {
	mech = strings.ToUpper(mech)
	switch mech {
	case "", mechPlain, mechLogin, mechCRAMMD5, mechXOAuth2, mechOAuthBearer:
	default:
		return func(Caps) (sasl.Client, error) {
			return nil, fmt.Errorf("unknown mechanism %q (want plain, login, cram-md5, xoauth2 or oauthbearer)", mech)
		}
	}
	return func(caps Caps) (sasl.Client, error) {
		m := mech
		if m == "" {
			for _, want := range []string{mechPlain, mechLogin, mechCRAMMD5} {
				if caps.HasAuth(want) {
					m = want
					break
				}
			}
			if m == "" {
				return nil, fmt.Errorf("no password mechanism among those offered (%s)", strings.Join(caps.Auth, " "))
			}
		} else if !caps.HasAuth(m) {
			return nil, fmt.Errorf("mechanism %s not offered (server offers %q)", m, strings.Join(caps.Auth, " "))
		}
		switch m {
		case mechPlain:
			return sasl.NewPlainClient("", user, secret), nil
		case mechLogin:
			return sasl.NewLoginClient(user, secret), nil
		case mechCRAMMD5:
			return &cramMD5Client{user: user, secret: secret}, nil
		case mechXOAuth2:
			return &xoauth2Client{user: user, token: secret}, nil
		case mechOAuthBearer:
			return sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: user, Token: secret}), nil
		}
		return nil, fmt.Errorf("unknown mechanism %q (want plain, login, cram-md5, xoauth2 or oauthbearer)", mech)
	}
}

// HasAuth reports whether the server offers the SASL mechanism mech.
func (c Caps) HasAuth(mech string) bool {
	return slices.ContainsFunc(c.Auth, func(m string) bool { return strings.EqualFold(m, mech) })
}

// cramMD5Client is CRAM-MD5 (RFC 2195 §2): the response is the user name,
// a space, and the hex HMAC-MD5 of the server's challenge keyed with the
// secret. Only offered to servers that offer nothing better: MD5 and a
// server-side clear-text secret are why it is obsolete.
type cramMD5Client struct {
	user, secret string
	done         bool
}

func (a *cramMD5Client) Start() (string, []byte, error) { return mechCRAMMD5, nil, nil }

func (a *cramMD5Client) Next(challenge []byte) ([]byte, error) {
	if a.done {
		return nil, sasl.ErrUnexpectedServerChallenge
	}
	a.done = true
	mac := hmac.New(md5.New, []byte(a.secret))
	mac.Write(challenge)
	return []byte(a.user + " " + hex.EncodeToString(mac.Sum(nil))), nil
}

// xoauth2Client is XOAUTH2 as Google and Microsoft document it: the initial
// response is "user=U^Aauth=Bearer T^A^A". On failure the server sends a
// 334 with a JSON error; the client answers with an empty response and the
// server then ends the exchange with 535.
type xoauth2Client struct {
	user, token string
}

func (a *xoauth2Client) Start() (string, []byte, error) {
	return mechXOAuth2, []byte("user=" + a.user + "\x01auth=Bearer " + a.token + "\x01\x01"), nil
}

func (a *xoauth2Client) Next([]byte) ([]byte, error) { return []byte{}, nil }
