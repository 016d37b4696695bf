package smtp

// Envelope is one SMTP transaction's envelope (RFC 5321 §3.3): the reverse
// path and the recipients, with the ESMTP parameters blaster uses.
type Envelope struct {
	// From is the reverse path (MAIL FROM); "" sends the null path <>.
	From string
	// Rcpts are the forward paths, in the order their RCPT commands go out.
	Rcpts []Recipient
	// Size is the message size in octets for the SIZE parameter (RFC 1870);
	// 0 means unknown and omits it.
	Size int64
	// EightBit sends BODY=8BITMIME (RFC 6152) when the server offers it.
	EightBit bool
	// UTF8 sends SMTPUTF8 (RFC 6531); required when an address is not ASCII.
	UTF8 bool
	// Ret is the DSN RET parameter, "FULL" or "HDRS" (RFC 3461 §4.3); "" omits it.
	Ret string
	// EnvID is the DSN ENVID parameter (RFC 3461 §4.4); "" omits it.
	EnvID string
}

// Recipient is one RCPT TO.
type Recipient struct {
	Addr string
	// Notify is the DSN NOTIFY list (RFC 3461 §4.1): "NEVER", or any of
	// "SUCCESS", "FAILURE", "DELAY". Empty omits it.
	Notify []string
	// ORcpt is the DSN ORCPT address (RFC 3461 §4.2), sent as rfc822;ADDR.
	ORcpt string
}

// Result is what one transaction did, per recipient.
type Result struct {
	// Rcpts has one entry per Envelope.Rcpts, in the same order: the
	// server's reply to that RCPT. Nil where the RCPT was never answered.
	Rcpts []*Reply
	// Data is the reply to the end of the message data (the final "."), or
	// nil when no body was sent (every recipient was rejected).
	Data *Reply
}
