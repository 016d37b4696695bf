// Package smtp is blaster's SMTP client: one connection to a relay or MX
// host, on which Send runs mail transactions, pipelined when the server
// allows it.
//
// No Go library pipelines a multi-recipient transaction (emersion/go-smtp's
// client sends each RCPT and waits, its issue #203), so this client is
// written here, after go-smtp's shape: one choke point per protocol step
// (cmd/reply set the deadline, write, read and map the reply to *Error),
// and net/textproto's dot-writer for the data.
//
// Dial connects, reads the greeting, says EHLO (HELO when refused),
// upgrades with STARTTLS or starts with implicit TLS, and authenticates
// with SASL. Send sends MAIL, the RCPTs and DATA in one write when the
// server offers PIPELINING and reports one reply per recipient. Classify
// and Result.Outcome turn replies and errors into sent, retry, bounce or
// unknown. Dial's errors are *RouteError: they concern the route, never
// the recipients.
//
// RFCs followed:
//
//   - RFC 5321 Simple Mail Transfer Protocol: commands, replies (§4.2),
//     dot-stuffing (§4.5.2), size limits (§4.5.3.1), timeouts (§4.5.3.2).
//   - RFC 3463 and RFC 2034: enhanced status codes.
//   - RFC 2920: command pipelining.
//   - RFC 3207: STARTTLS; RFC 8314: implicit TLS (port 465).
//   - RFC 4954: AUTH; RFC 4616 PLAIN, RFC 2195 CRAM-MD5, RFC 7628
//     OAUTHBEARER, the LOGIN draft and Google's XOAUTH2.
//   - RFC 1870: SIZE. RFC 6152: 8BITMIME. RFC 6531: SMTPUTF8.
//   - RFC 3461: DSN (NOTIFY, ORCPT, RET, ENVID; xtext §4).
//   - RFC 6533 §3: ORCPT of the utf-8 type (utf-8-addr-xtext) for an
//     address that is not ASCII.
//   - RFC 3030 CHUNKING is parsed from EHLO only; DATA is used.
package smtp
