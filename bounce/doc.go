// Package bounce feeds asynchronous bounces back into blaster's ledger.
//
// A bounce comes back to a campaign's signed return path (package
// returnpath). Parse reads it: an RFC 3464 delivery status notification
// (multipart/report; report-type=delivery-status, RFC 6522) with its
// per-message and per-recipient fields, the status codes of RFC 3463, or,
// for the non-standard bounces some systems still send, the status found in
// its text. A Processor applies it: every bounce becomes a row of
// bounce_events (once per message and recipient, so the same notification
// read twice counts once); a hard one (Action: failed, Status 5.x.x) marks
// the delivery bounced with the status and diagnostic kept, and suppresses
// the address for every sender; a soft one (4.x.x, Action: delayed) is
// counted. Bounces are read from a Maildir, an mbox, one message on stdin,
// or a small SMTP server (Server) for the return-path domain that takes mail
// only for validly signed addresses. Report sums a campaign up.
//
// RFCs: 3464 (delivery status notifications), 3463 (enhanced status codes),
// 6522 (multipart/report), 6533 (internationalized DSNs:
// message/global-delivery-status and the utf-8 address type), 3461 (ORCPT,
// Original-Recipient), 3834 (Auto-Submitted: auto-replies are not bounces),
// 5321 §4.5.5 (bounces go to the reverse path with a null reverse path of
// their own), 3207 (STARTTLS, offered by the receiver when it has a
// certificate).
package bounce
