package transport_test

import (
	"fmt"

	"github.com/blaster-mail/blaster/transport"
)

// A relay URL names the relay, its TLS mode and its options; the password
// comes from BLASTER_RELAY_PASSWORD or password_file, never the URL.
func ExampleParseRelayURL() {
	c, err := transport.ParseRelayURL("smtp://mailer@relay.example.test?max_conns=8&auth=plain")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.Host, c.Port, c.TLS, c.User, c.Auth, c.MaxConns)
	fmt.Println(c.Redacted())

	_, err = transport.ParseRelayURL("smtps://mailer:hunter2@relay.example.test")
	fmt.Println(err)
	// Output:
	// relay.example.test 587 required mailer plain 8
	// smtp://mailer@relay.example.test:587?auth=plain&max_conns=8
	// relay URL smtps://mailer@relay.example.test: holds a password, which would show in process listings and logs; give it in the BLASTER_RELAY_PASSWORD environment variable or in a file named by password_file=PATH
}
