package throttle_test

import (
	"context"
	"fmt"
	"time"

	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/throttle"
	"github.com/blaster-mail/blaster/worker"
)

// The Limiter is the send worker's Throttle.
var _ worker.Throttle = (*throttle.Limiter)(nil)

// Example shows the shipped rule pack at work: Gmail's rate-limit reply
// suspends the destination for the reply's own retry hint.
func Example() {
	cfg, err := throttle.LoadConfig("") // the embedded default.toml
	if err != nil {
		panic(err)
	}
	clock := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	cfg.NowFunc = func() time.Time { return clock }
	l, err := throttle.New(cfg)
	if err != nil {
		panic(err)
	}
	key := throttle.Key{Route: "mx:gmail-smtp-in.l.google.com", Domain: "gmail.com", Campaign: 1}
	// Gmail's burst is 100; a newsletter may use 80% of it.
	fmt.Println("max recipients per transaction:", l.Limits(key).MaxRcpts)

	reply := &smtp.Error{Reply: smtp.Reply{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 28},
		Text: "Our system has detected an unusual rate of unsolicited mail. Try again in 20 minutes."}}
	d := l.Decide(reply)
	fmt.Println(d.Action, d.Rule, d.For)

	l.Observe(key, reply)
	wait, _ := l.Acquire(context.Background(), key, 1)
	fmt.Println("retry after", wait)
	// Output:
	// max recipients per transaction: 80
	// suspend gmail-rate 20m0s
	// retry after 20m0s
}
