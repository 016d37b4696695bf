package metrics

import (
	"context"
	"io"
	"testing"

	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/transport"
)

// okTransport accepts every transaction at once: what is left to measure
// is the metrics' own cost.
type okTransport struct{ res *smtp.Result }

func (t okTransport) Session(context.Context, string) (transport.Session, error) { return t, nil }
func (okTransport) Route(string) string                                          { return "smtp://relay.example.test:587" }
func (okTransport) Close() error                                                 { return nil }
func (t okTransport) Send(context.Context, *smtp.Envelope, io.Reader) (*smtp.Result, error) {
	return t.res, nil
}
func (okTransport) Release(error) {}

// BenchmarkTransaction is the metrics' cost per 100-recipient
// transaction (go test ./metrics -bench Transaction).
func BenchmarkTransaction(b *testing.B) {
	ok := &smtp.Reply{Code: 250, Enhanced: smtp.EnhancedCode{2, 1, 5}, Text: "OK"}
	res := &smtp.Result{Rcpts: make([]*smtp.Reply, 100), Data: &smtp.Reply{Code: 250, Enhanced: smtp.EnhancedCode{2, 0, 0}}}
	for i := range res.Rcpts {
		res.Rcpts[i] = ok
	}
	tr := New(Config{}).Transport(okTransport{res: res})
	ctx := context.Background()
	env := &smtp.Envelope{From: "news@example.test"}
	b.ReportAllocs()
	for b.Loop() {
		s, err := tr.Session(ctx, "a.example.test")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Send(ctx, env, nil); err != nil {
			b.Fatal(err)
		}
		s.Release(nil)
	}
}
