package worker

// RecoverOrphans is the sweep's takeover of dead runs' sending rows, for
// tests that stage a dead run without killing a process.
var RecoverOrphans = recoverOrphans
