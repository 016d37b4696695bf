// Package smtptest holds the SMTP servers blaster's tests talk to:
//
//   - StartServer: an in-process go-smtp server on loopback with the
//     options the tests need (STARTTLS or implicit TLS with a certificate
//     from NewCA, AUTH PLAIN and LOGIN, scripted replies to the greeting,
//     MAIL and RCPT) that records what it accepted and counts the
//     connections and commands it saw;
//   - StartSmtpSink: Postfix's smtp-sink, the independent server, and a
//     reader of its dump.
//
// It imports nothing of blaster's, so every package's tests can use it,
// the in-package tests of smtp included.
package smtptest
