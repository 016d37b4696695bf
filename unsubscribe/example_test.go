package unsubscribe_test

import (
	"fmt"

	"github.com/blaster-mail/blaster/unsubscribe"
)

func Example() {
	key := []byte("an example key of at least 32 bytes!")
	tok := unsubscribe.Token(key, unsubscribe.Recipient{CampaignID: 12, ContactID: 3456, Email: "ann@example.test"})
	fmt.Println(tok)

	// The server reads the ids, looks up the contact's address, then verifies.
	campaign, contact, _ := unsubscribe.Parse(tok)
	r, err := unsubscribe.Verify(key, tok, "Ann@Example.test")
	fmt.Println(campaign, contact, r.ContactID, err)

	_, err = unsubscribe.Verify(key, tok, "bob@example.test")
	fmt.Println(err)
	// Output:
	// 1.12.3456.B0Qk1Qz0zdgdoRO1fDmbKQ
	// 12 3456 3456 <nil>
	// invalid unsubscribe token: MAC does not match
}
