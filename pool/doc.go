// Package pool keeps a bounded set of reusable connections to one route (a
// relay, or one MX host): at most MaxConns open, reused after a RSET,
// retired after MaxMessages uses or IdleTimeout without use, checked with a
// NOOP before a connection idle for longer than CheckAfter is handed out
// again, and QUIT when the pool closes.
//
// The pool knows nothing of SMTP beyond the five methods of Conn, so it is
// tested with any client and reused by every transport. Idle connections are
// reaped lazily on Get and Put, and by Reap, which the owner of many pools
// (one per MX host) calls from its single janitor goroutine: there is no
// goroutine per connection or per pool. The lazy reaping with an injected
// clock is borrowed from tailscale's tstime/rate; Config + WithDefaults +
// validate from riverqueue/river.
package pool
