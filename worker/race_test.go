//go:build race

package worker_test

// raceEnabled: the race detector slows streaming hundreds of megabytes
// through the worker past any sensible deadline, and its sync.Pool drops
// buffers at random, so memory budgets are not checked under it.
const raceEnabled = true
