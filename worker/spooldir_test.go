package worker

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestMakeSpoolRemovesDeadWorkers: a new worker removes the spool
// directories of workers that died (their lock file held by nobody) and
// leaves a live worker's, a directory just made by a worker starting now,
// and anything that is not a lock-marked spool directory.
func TestMakeSpoolRemovesDeadWorkers(t *testing.T) {
	parent := t.TempDir()
	old := time.Now().Add(-time.Hour)
	// stale makes a spool directory as a worker does, with a copied
	// attachment, and dates its lock file back an hour.
	stale := func(name string) string {
		t.Helper()
		dir := filepath.Join(parent, spoolPrefix+name)
		if err := os.MkdirAll(filepath.Join(dir, "campaign-1-x"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "campaign-1-x", "a.pdf"), []byte("attached"), 0o600); err != nil {
			t.Fatal(err)
		}
		lock := filepath.Join(dir, spoolLock)
		if err := os.WriteFile(lock, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(lock, old, old); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	dead := stale("dead")
	live := stale("live")
	// The live worker holds its lock through its own open file: another
	// open of the same file (as makeSpool does) cannot take it.
	f, err := os.OpenFile(filepath.Join(live, spoolLock), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	starting := stale("starting")
	if err := os.Chtimes(filepath.Join(starting, spoolLock), time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	unmarked := filepath.Join(parent, spoolPrefix+"unmarked")
	if err := os.Mkdir(unmarked, 0o700); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(parent, "someone-else")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}

	s, err := makeSpool(parent, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("dead worker's spool directory still there: %v", err)
	}
	for _, dir := range []string{live, starting, unmarked, other, s.path} {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s removed: %v", filepath.Base(dir), err)
		}
	}

	// The new spool is locked: a later worker leaves it alone, even once
	// it is old, until it is removed.
	lock := filepath.Join(s.path, spoolLock)
	if err := os.Chtimes(lock, old, old); err != nil {
		t.Fatal(err)
	}
	if d, err := deadSpool(s.path); err != nil || d {
		t.Errorf("deadSpool(own, locked) = %v, %v; want false", d, err)
	}
	if err := s.remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.path); !os.IsNotExist(err) {
		t.Errorf("spool directory left after remove: %v", err)
	}
}
