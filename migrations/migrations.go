// Package migrations holds blaster's schema as numbered SQL files, embedded in
// the binary. They are applied by db.Migrate after River's own migrations, in
// the same transaction and under the same advisory lock.
package migrations

import "embed"

// FS holds the files NNNN_name.sql, applied in the order of NNNN.
//
//go:embed *.sql
var FS embed.FS
