package bounce_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/blaster-mail/blaster/bounce"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/returnpath"
)

// BenchmarkParse: one DSN read (MIME walk, delivery-status blocks).
func BenchmarkParse(b *testing.B) {
	for _, name := range []string{"postfix.eml", "gmail.eml", "qmail.eml"} {
		raw, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bounce.ParseBytes(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkProcess: one hard bounce applied (event, ledger, suppression:
// one transaction) against the real PostgreSQL, per-recipient return paths
// over 1,000 recipients.
func BenchmarkProcess(b *testing.B) {
	pool := dbtest.Pool(b)
	ids := seed(b, pool, 1000)
	id := newCampaign(b, pool, true, false)
	if _, err := pool.Exec(context.Background(), "UPDATE deliveries SET state = 'sent'"); err != nil {
		b.Fatal(err)
	}
	signer, _ := returnpath.NewSigner(testKey)
	p := &bounce.Processor{Pool: pool, Signer: signer}
	var msgs [][]byte
	for e, contactID := range ids {
		rp, _ := signer.Address(base, id, contactID)
		msgs = append(msgs, dsn(b, "postfix.eml", rp, e, fmt.Sprintf("bench%d@relay.example.test", len(msgs))))
	}
	ctx := context.Background()
	i := 0
	for b.Loop() {
		res, err := p.Process(ctx, msgs[i%len(msgs)], nil, "bench")
		if err != nil || (i < len(msgs) && res.Hard != 1) {
			b.Fatalf("%+v, %v", res, err)
		}
		i++
	}
}
