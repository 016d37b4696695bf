// Package message builds the messages blaster sends from a campaign's
// templates: the subject and text body are text/template, the HTML body
// html/template, over one recipient's Data; Parse checks them once per
// campaign, Validate test-renders them against sample contacts, Render
// builds one message, Shared builds a same-for-all message once.
//
// Messages are written with emersion/go-message. The text and HTML bodies
// are rendered first into pooled buffers: a body of short lines of
// printable ASCII goes out 7bit as it is, any other quoted-printable
// (transferEncoding). An HTML template of text and actions only is run as
// a plan (htmlPlan): each distinct action once per message, by a
// one-action html/template checked at Parse to escape it exactly as the
// whole template does. Attachments stream through base64 straight to the
// writer.
// Build and Shared return a Body: in memory up to a threshold (WithSpool),
// else in a temporary file that each transaction streams from; a
// DKIM-signed message is spooled that way in any case, because its
// signature comes first but covers the whole message.
//
// Standards followed:
//   - RFC 5322: Internet Message Format (header fields, Message-ID, Date,
//     groups in To, the 998-octet line limit).
//   - RFC 2045, 2046: MIME (7bit, quoted-printable, base64, multipart/alternative,
//     multipart/mixed); RFC 2047: encoded words in headers; RFC 2231:
//     encoded attachment file names.
//   - RFC 2369 §3.2: List-Unsubscribe; RFC 8058: one-click unsubscription
//     (List-Unsubscribe-Post); RFC 6068: mailto URIs.
//   - RFC 6376: DKIM signatures, relaxed/relaxed; RFC 8301: RSA key sizes;
//     RFC 8463: Ed25519 keys.
//
// Header injection: no value from recipient data or configuration reaches
// a header with a control character in it; Render returns a *HeaderError.
package message
