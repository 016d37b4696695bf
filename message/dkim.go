package message

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-msgauth/dkim"
)

// DKIM configures DKIM signing (RFC 6376) with relaxed/relaxed
// canonicalization (RFC 6376 §3.4.2, §3.4.4), which survives the header
// refolding and trailing-space changes relays make.
type DKIM struct {
	// Domain is the signing domain (d=), normally the From address's
	// domain so that DMARC aligns (RFC 7489 §3.1.1). Required.
	Domain string
	// Selector (s=) names the key: its public half is published as a TXT
	// record at <Selector>._domainkey.<Domain> (see DKIMRecord). Required.
	Selector string
	// Key signs: *rsa.PrivateKey of at least 1024 bits (RFC 8301 §3.2;
	// 2048 recommended) or ed25519.PrivateKey (RFC 8463). LoadDKIMKey reads
	// one from a PEM file. Required.
	Key crypto.Signer
}

// SignedHeaders is the h= list (RFC 6376 §5.4). From, To and Subject are
// listed twice ("over-signed", as OpenDKIM and rspamd do): the second
// entry matches no field, so a relay that adds another From, To or Subject
// breaks the signature. The list-unsubscribe fields are signed so that
// nobody can swap in their own link (RFC 8058 §4).
var SignedHeaders = []string{
	"From", "From", "To", "To", "Subject", "Subject", "Date", "Message-Id",
	"List-Unsubscribe", "List-Unsubscribe-Post", "MIME-Version", "Content-Type",
}

func (k *DKIM) check() error {
	if k.Domain == "" || k.Selector == "" || k.Key == nil {
		return errors.New("DKIM: domain, selector and key are all required")
	}
	if err := checkHeader("DKIM-Signature", k.Domain+k.Selector); err != nil {
		return fmt.Errorf("DKIM domain or selector: %w", err)
	}
	switch pub := k.Key.Public().(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < 1024 {
			return fmt.Errorf("DKIM: RSA key is %d bits, need at least 1024 (RFC 8301 §3.2)", pub.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("DKIM: unsupported key type %T (want RSA or Ed25519)", pub)
	}
	return nil
}

func (k *DKIM) options() *dkim.SignOptions {
	return &dkim.SignOptions{
		Domain:                 k.Domain,
		Selector:               k.Selector,
		Signer:                 k.Key,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             SignedHeaders,
	}
}

// LoadDKIMKey reads a private key from a PEM file: PKCS #8 ("PRIVATE
// KEY", RSA or Ed25519, as `openssl genpkey` writes) or PKCS #1 ("RSA
// PRIVATE KEY").
func LoadDKIMKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading DKIM key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("DKIM key %s: no PEM block", path)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("DKIM key %s: PEM block %q, want PRIVATE KEY or RSA PRIVATE KEY", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("DKIM key %s: %w", path, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("DKIM key %s: unsupported key type %T (want RSA or Ed25519)", path, key)
}

// DKIMRecord returns the TXT record that publishes pub (RFC 6376 §3.6.1),
// e.g. "v=DKIM1; k=ed25519; p=...".
func DKIMRecord(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return "", fmt.Errorf("encoding RSA public key: %w", err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k), nil
	}
	return "", fmt.Errorf("unsupported public key type %T", pub)
}

// writeSigned builds the signed message (sign) and writes it to w.
func (t *Template) writeSigned(w io.Writer, h mail.Header, v *view) error {
	body, err := t.sign(h, v)
	if err != nil {
		return err
	}
	defer body.Release()
	if _, err := body.WriteTo(w); err != nil {
		return fmt.Errorf("writing message for %s: %w", v.Email, err)
	}
	return nil
}

// sign builds the message into a spool, feeds it to the DKIM signer and
// returns it as a Body led by its DKIM-Signature field: the message is
// written once, never copied behind the signature.
func (t *Template) sign(h mail.Header, v *view) (*Body, error) {
	sp := newSpool(t.opts.spoolDir, t.opts.spoolOver)
	if err := t.writeEntity(sp, h, v); err != nil {
		sp.close()
		return nil, err
	}
	s, err := dkim.NewSigner(t.dkim.options())
	if err != nil {
		sp.close()
		return nil, fmt.Errorf("DKIM signing: %w", err)
	}
	if err := sp.writeTo(s); err != nil {
		s.Close()
		sp.close()
		return nil, fmt.Errorf("DKIM signing message for %s: %w", v.Email, err)
	}
	if err := s.Close(); err != nil {
		sp.close()
		return nil, fmt.Errorf("DKIM signing message for %s: %w", v.Email, err)
	}
	return sp.body([]byte(s.Signature()))
}
