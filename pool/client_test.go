package pool_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"

	gosmtp "github.com/emersion/go-smtp"
)

// client adapts go-smtp's client to pool.Conn: a real client, independent
// of blaster's own, so the pool is tested on its own.
type client struct {
	c      *gosmtp.Client
	mu     sync.Mutex
	broken bool
}

func dialClient(addr string) func(context.Context) (*client, error) {
	return func(ctx context.Context) (*client, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		c := gosmtp.NewClient(nc)
		if err := c.Hello("client.example.test"); err != nil {
			_ = c.Close()
			return nil, err
		}
		if ok, _ := c.Extension("PIPELINING"); !ok { // runs the greeting and EHLO
			_ = c.Close()
			return nil, errors.New("server does not offer PIPELINING")
		}
		return &client{c: c}, nil
	}
}

func (c *client) note(err error) error {
	var se *gosmtp.SMTPError
	if err != nil && !errors.As(err, &se) {
		c.mu.Lock()
		c.broken = true
		c.mu.Unlock()
	}
	return err
}

func (c *client) send(t *testing.T) {
	t.Helper()
	err := c.c.SendMail("from@example.test", []string{"to@example.test"},
		strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	if c.note(err) != nil {
		t.Errorf("sending: %v", err)
	}
}

func (c *client) Reset(context.Context) error { return c.note(c.c.Reset()) }
func (c *client) Noop(context.Context) error  { return c.note(c.c.Noop()) }
func (c *client) Quit(context.Context) error  { return c.note(c.c.Quit()) }
func (c *client) Close() error                { return c.c.Close() }
func (c *client) Broken() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}
