package throttle

// Key names the scopes one SMTP transaction counts against.
type Key struct {
	// Route is the transport route (transport.Transport.Route): a relay's
	// redacted URL, "mx:HOST", or "pickup:DIR".
	Route string
	// Domain is the recipients' destination domain (lower-case A-label).
	Domain string
	// Campaign is the campaign id.
	Campaign int64
	// Alert marks alert traffic, which may use the reserved share of every
	// limit.
	Alert bool
}
