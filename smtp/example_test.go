package smtp_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/blaster-mail/blaster/smtp"
)

// exampleSession accepts everything except recipients at
// nobody.example.test.
type exampleSession struct{}

func (exampleSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (exampleSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	if strings.HasSuffix(to, "@nobody.example.test") {
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	return nil
}
func (exampleSession) Data(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err }
func (exampleSession) Reset()                 {}
func (exampleSession) Logout() error          { return nil }

// One pipelined transaction to three recipients, one of them refused, and
// what each recipient's ledger row would record.
func Example() {
	srv := gosmtp.NewServer(gosmtp.BackendFunc(func(*gosmtp.Conn) (gosmtp.Session, error) { return exampleSession{}, nil }))
	srv.Domain = "mx.example.test"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(l)
	defer srv.Close()

	ctx := context.Background()
	c, err := smtp.Dial(ctx, l.Addr().String(), smtp.Config{LocalName: "blaster.example.test", TLS: smtp.TLSNone})
	if err != nil {
		panic(err)
	}
	defer c.Quit(ctx)

	env := &smtp.Envelope{From: "news@example.test", Rcpts: []smtp.Recipient{
		{Addr: "ann@example.test"}, {Addr: "bob@nobody.example.test"}, {Addr: "cy@example.test"},
	}}
	res, err := c.Send(ctx, env, strings.NewReader("Subject: hello\n\nHi!\n"))
	for i, r := range env.Rcpts {
		outcome, reply := res.Outcome(i, err)
		fmt.Printf("%s: %s (%d %s)\n", r.Addr, outcome, reply.Code, reply.Enhanced)
	}
	// Output:
	// ann@example.test: sent (250 2.0.0)
	// bob@nobody.example.test: bounce (550 5.1.1)
	// cy@example.test: sent (250 2.0.0)
}
