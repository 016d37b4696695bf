//go:build race

package message

// raceEnabled: under the race detector sync.Pool drops pooled buffers at
// random, so allocation budgets do not hold and are not checked.
const raceEnabled = true
