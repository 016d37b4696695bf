package transport_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/transport"
)

// BenchmarkPickup writes 10 KB messages with one recipient, with and
// without fsync.
func BenchmarkPickup(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789012345678901234567890123456789012345678901234567890123456789012345\r\n"), 128)
	env := &smtp.Envelope{From: "news@example.test", Rcpts: []smtp.Recipient{{Addr: "a@example.test"}}}
	for _, tc := range []struct {
		name   string
		noSync bool
	}{{"fsync", false}, {"nosync", true}} {
		b.Run(tc.name, func(b *testing.B) {
			p, err := transport.NewPickup(b.TempDir(), transport.PickupOptions{NoSync: tc.noSync})
			if err != nil {
				b.Fatal(err)
			}
			s, _ := p.Session(context.Background(), "example.test")
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := s.Send(context.Background(), env, bytes.NewReader(body)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
