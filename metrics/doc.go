// Package metrics is a worker process's Prometheus metrics
// (prometheus/client_golang): what the send workers did, counted as they
// do it, and what the database says, read when Prometheus scrapes.
//
// Counted as it happens, through wrappers and hooks that keep the send
// worker free of metric code:
//
//   - Transport wraps a transport.Transport: every SMTP transaction is one
//     message (blaster_messages_total by outcome), its replies
//     (blaster_smtp_replies_total by code and RFC 3463 class.subject) and its
//     latency (blaster_smtp_transaction_seconds); a failed Session is
//     blaster_sessions_failed_total.
//   - Recorded (worker.Metrics) counts recipients by ledger outcome once the
//     outcomes are committed (blaster_recipients_total).
//   - Work (a River worker middleware) times each batch job and counts how it
//     ended (blaster_batch_seconds by queue and result: completed, snoozed,
//     cancelled, failed).
//   - Throttle wraps the worker's throttle (worker.Throttle): refusals that snooze a batch
//     (blaster_throttle_snoozes_total) and back-off decisions
//     (blaster_throttle_backoffs_total by action and rule).
//
// Read at scrape time, each source with Config.ScrapeTimeout: connection
// pools per route (blaster_pool_connections), River's jobs per queue and
// state (blaster_queue_jobs, blaster_queue_oldest_job_seconds), and the
// shared throttle's scopes (blaster_throttle_rate,
// blaster_throttle_current_rate, blaster_throttle_suspended,
// blaster_throttle_connections, blaster_throttle_suspended_scopes).
//
// # Label cardinality
//
// A destination domain label takes the name of the throttle configuration's
// [domains] entry or [[mx_group]] the domain falls under (gmail.com and
// googlemail.com are both "gmail"), else the domain itself for the first
// Config.MaxDomains distinct domains this process sees, else "other". Routes
// (relay URLs without secrets, or "mx:HOST" in direct delivery) are bounded
// the same way by Config.MaxRoutes. Campaign ids are never labels: they grow
// without bound; per-campaign progress is `blaster campaign status`.
package metrics
