// Package throttle paces delivery: rates, connection caps and adaptive
// back-off per scope (global, relay, destination, campaign), shared by every
// worker process through PostgreSQL.
//
// # Scopes and limits
//
// Every transaction counts against the scopes of its Key: "global", the
// route ("route:" + Key.Route), the destination ("domain:" + the domain, or
// the name of its group: domains whose MX hosts are the same share one
// budget), and the campaign ("campaign:" + id). Each scope may limit the
// message rate (recipients per second) with a burst, the connection rate,
// concurrent connections, messages per connection and recipients per
// transaction (Limits). Config holds defaults per kind of scope and
// overrides; default.toml, embedded, ships values for Gmail,
// Microsoft, Yahoo and Apple and the back-off rule pack.
//
// # Alerts first
//
// Alerts (Key.Alert) draw from a scope's whole rate; newsletters draw from
// it and also from a second bucket holding (1 - AlertReserve) of it, which
// alerts are charged to as well (into debt of at most its burst). So
// newsletters never use the reserve, and only use what alerts leave of the
// rest: an alert blast started during a newsletter goes out at the full
// rate at once, and the newsletter resumes as the alert ends.
//
// # Back-off
//
// Observe runs each failed transaction's reply (or connection error) through
// the Rules; the first match suspends the scope or slows it. A suspended scope
// resumes at RecoveryStart of its rate and gains RecoveryStep per
// RecoveryInterval of good replies. Ideas from PowerMTA's backoff mode and
// KumoMTA's traffic-shaping automation.
//
// # Sharing between processes
//
// Without Config.Pool the buckets are golang.org/x/time/rate limiters driven
// by explicit times. With a Pool they are rows of throttle_buckets: a process
// leases a slice of tokens (LeaseFraction of a second's budget) with one
// UPDATE ... RETURNING that refills the rows lazily from their last update,
// and holds leased tokens at most LeaseTTL. Suspensions and slow-downs are
// rows of throttle_scopes, checked in the same statement, so every process
// sees one within LeaseTTL. Connection counts are published by Start's sync
// loop into throttle_conns. `blaster throttle status` reads all three.
//
// # Wiring
//
// A worker process builds one Limiter and passes it as worker.Config.Throttle:
//
//	cfg, err := throttle.LoadConfig(path) // "" for the shipped defaults
//	cfg.Pool = pool                       // share budgets with the other workers
//	cfg.MXHostsFunc = throttle.MXHosts(net.DefaultResolver.LookupMX) // optional: group by MX hosts
//	l, err := throttle.New(cfg)
//	l.Start(ctx); defer l.Stop()          // connection counts across processes
//	worker.New(worker.Config{..., Throttle: l})
//
// A batch reserves its connection with AcquireConn before it claims its
// recipients (max_connections and conn_rate, counted as sessions; a
// suspended scope refuses here, before anyone is claimed or any connection
// opened), and is snoozed when none is free. After each transaction the send worker calls
// Observe(key, ResultError(res, err)), so that rate limits answered to a
// RCPT count too; it sizes transactions by Limits(key).MaxRcpts, which is
// kept within the burst.
//
// A suspension empties its scope's buckets as of its end, so the scope
// resumes at RecoveryStart of its rate, not in a burst from every batch
// that was snoozed until that moment.
package throttle
