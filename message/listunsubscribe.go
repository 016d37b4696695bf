package message

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/emersion/go-message/mail"

	"github.com/blaster-mail/blaster/unsubscribe"
)

// Unsubscribe configures the List-Unsubscribe header field (RFC 2369 §3.2)
// and one-click unsubscription (RFC 8058).
//
// With OneClick, every message carries the recipient's own HTTPS link and
// a mailto whose subject holds the same token, plus
// "List-Unsubscribe-Post: List-Unsubscribe=One-Click"; the message is then
// personalized (one recipient per SMTP transaction). Without OneClick, the
// header carries the list-level Mailto and BaseURL as given, the same for
// everyone, so a same-for-all campaign stays batched.
type Unsubscribe struct {
	// BaseURL is the HTTPS address of `blaster serve`'s unsubscribe
	// endpoint without the trailing slash, e.g. "https://news.example.test/u";
	// with OneClick the link is BaseURL + "/" + token. Must be https
	// (RFC 8058 §3.1). "" for none (then OneClick is not allowed).
	BaseURL string
	// Mailto is the address that takes unsubscribe requests by mail, e.g.
	// "unsubscribe@news.example.test"; "" for none.
	Mailto string
	// OneClick makes the links per recipient and adds List-Unsubscribe-Post.
	// Requires BaseURL and Key, and Data.CampaignID and Data.ContactID at
	// Render. Default false.
	OneClick bool
	// Key is the secret the tokens are made with (unsubscribe.LoadKey: from
	// $BLASTER_UNSUBSCRIBE_KEY or a key file, never from the database); at
	// least unsubscribe.MinKeyLen bytes. Required with OneClick.
	Key []byte `json:"-"`
}

func (u *Unsubscribe) check() error {
	if u.BaseURL != "" {
		if err := checkHeader("List-Unsubscribe", u.BaseURL); err != nil {
			return fmt.Errorf("unsubscribe base URL: %w", err)
		}
		p, err := url.Parse(u.BaseURL)
		if err != nil {
			return fmt.Errorf("unsubscribe base URL: %w", err)
		}
		if p.Scheme != "https" || p.Host == "" {
			return fmt.Errorf("unsubscribe base URL %q: must be https://host/... (RFC 8058 §3.1)", u.BaseURL)
		}
		if strings.ContainsAny(u.BaseURL, "<>, ") {
			return fmt.Errorf("unsubscribe base URL %q: must not contain '<', '>', ',' or spaces", u.BaseURL)
		}
		u.BaseURL = strings.TrimSuffix(u.BaseURL, "/")
	}
	if u.Mailto != "" {
		a, err := mail.ParseAddress(u.Mailto)
		if err != nil || a.Name != "" || strings.ContainsAny(a.Address, "<>,?& \"") {
			return fmt.Errorf("unsubscribe mailto %q: must be a bare address", u.Mailto)
		}
		u.Mailto = a.Address
	}
	if u.OneClick {
		if u.BaseURL == "" {
			return errors.New("one-click unsubscribe needs an HTTPS base URL (RFC 8058 §3.1)")
		}
		if len(u.Key) < unsubscribe.MinKeyLen {
			return fmt.Errorf("one-click unsubscribe needs a key of at least %d bytes (set %s)", unsubscribe.MinKeyLen, unsubscribe.KeyEnv)
		}
	}
	return nil
}

// token returns the recipient's token, or an error naming what is missing.
func (u *Unsubscribe) token(d *Data) (string, error) {
	if d.CampaignID <= 0 || d.ContactID <= 0 || d.Email == "" {
		return "", fmt.Errorf("one-click unsubscribe for %q: email, campaign id (%d) and contact id (%d) must all be set", d.Email, d.CampaignID, d.ContactID)
	}
	return unsubscribe.Token(u.Key, unsubscribe.Recipient{CampaignID: d.CampaignID, ContactID: d.ContactID, Email: d.Email}), nil
}

// url is {{.UnsubscribeURL}}: the recipient's link, else the list-level
// URL or mailto.
func (u *Unsubscribe) url(d *Data) (string, error) {
	switch {
	case u.OneClick:
		tok, err := u.token(d)
		if err != nil {
			return "", err
		}
		return u.BaseURL + "/" + tok, nil
	case u.BaseURL != "":
		return u.BaseURL, nil
	case u.Mailto != "":
		return "mailto:" + u.Mailto + "?subject=unsubscribe", nil
	}
	return "", nil
}

// header returns the List-Unsubscribe value ("" for none). It is built
// only from checked configuration and a token of [0-9A-Za-z._-], so no
// recipient data reaches it raw.
func (u *Unsubscribe) header(v *view) (string, error) {
	var uris []string
	if u.Mailto != "" {
		subject := "unsubscribe"
		if u.OneClick {
			tok, err := u.token(v.data)
			if err != nil {
				return "", err
			}
			subject += "%20" + tok // RFC 6068 §2: percent-encoded space
		}
		uris = append(uris, "<mailto:"+u.Mailto+"?subject="+subject+">")
	}
	if u.BaseURL != "" {
		link := u.BaseURL
		if u.OneClick {
			link = v.UnsubscribeURL
		}
		uris = append(uris, "<"+link+">")
	}
	return strings.Join(uris, ", "), nil
}
