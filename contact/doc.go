// Package contact holds blaster's recipients: address validation
// (ParseAddress), the streaming CSV import into contacts and lists (Import),
// and the per-sender suppression lists (Suppress, Unsuppress,
// ListSuppressions, ImportSuppressions).
//
// Import and ImportSuppressions never hold a file in memory: rows stream
// from an encoding/csv reader through validation into a PostgreSQL COPY of a
// temporary staging table, and one set-based statement merges the staging
// table into the real ones, inside one transaction. De-duplication happens in
// PostgreSQL (DISTINCT ON over the staging table), so memory stays flat
// whatever the file size. The staging-table-then-merge pattern is the one
// PostgreSQL's documentation recommends for bulk loads ("Populating a
// Database", §14.4); the row-by-row INSERT of other newsletter tools is what
// it replaces.
//
// Standards: RFC 5321 §4.1.2 and §4.5.3.1 (address syntax and lengths),
// RFC 5322 §3.4.1 (addr-spec), RFC 6531 §3.3 (UTF-8 local parts), RFC 5891
// §5 (IDNA lookup), RFC 4180 (CSV).
package contact
