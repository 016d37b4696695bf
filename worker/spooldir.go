package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// A worker's spool directory is parent/blaster-worker-XXXX, holding the
// lock file spoolLock. The worker keeps an exclusive flock on that file
// for as long as it runs; the kernel drops it when the process ends, even
// by SIGKILL, so a spool directory whose lock nobody holds belongs to a
// worker that died without removing it (Stop removes its own).
const (
	spoolPrefix = "blaster-worker-"
	spoolLock   = ".lock"
	// spoolGrace spares directories younger than this: a worker starting
	// at the same moment has made its directory but may not hold its
	// lock yet.
	spoolGrace = time.Minute
)

// workerSpool is this process's spool directory and the lock that marks
// it live.
type workerSpool struct {
	path string
	lock *os.File // nil: not locked (tests)
}

// makeSpool makes this process's spool directory under parent (os.TempDir
// when empty), locks it, and removes the directories under parent that
// dead workers left (attachment copies, spooled messages: they are never
// used again). Directories it cannot judge are left alone.
func makeSpool(parent string, log *slog.Logger) (*workerSpool, error) {
	if parent == "" {
		parent = os.TempDir()
	}
	dir, err := os.MkdirTemp(parent, spoolPrefix)
	if err != nil {
		return nil, fmt.Errorf("making the spool directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, spoolLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		err = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != nil {
			lock.Close()
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("locking the spool directory %s: %w", dir, err)
	}
	removeDeadSpools(parent, dir, log)
	return &workerSpool{path: dir, lock: lock}, nil
}

// removeDeadSpools removes the spool directories under parent, other than
// own, whose lock file is older than spoolGrace and held by nobody.
func removeDeadSpools(parent, own string, log *slog.Logger) {
	dirs, err := filepath.Glob(filepath.Join(parent, spoolPrefix+"*"))
	if err != nil {
		return // only a malformed pattern fails, and this one is fixed
	}
	for _, dir := range dirs {
		if dir == own {
			continue
		}
		dead, err := deadSpool(dir)
		if err != nil {
			log.Warn("checking another worker's spool directory", "dir", dir, "err", err)
			continue
		}
		if !dead {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("removing a dead worker's spool directory", "dir", dir, "err", err)
			continue
		}
		log.Info("removed a dead worker's spool directory", "dir", dir)
	}
}

// deadSpool reports whether the spool directory dir was left by a worker
// that is gone: its lock file is older than spoolGrace and can be locked.
// A directory without a lock file, or a fresh one, is not judged dead.
func deadSpool(dir string) (bool, error) {
	name := filepath.Join(dir, spoolLock)
	info, err := os.Stat(name)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if time.Since(info.ModTime()) < spoolGrace {
		return false, nil
	}
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return false, err
	}
	defer f.Close() // releases the lock taken below
	switch err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.EWOULDBLOCK):
		return false, nil // a live worker's
	default:
		return false, err
	}
}

// remove removes the directory, then lets go of its lock.
func (s *workerSpool) remove() error {
	err := os.RemoveAll(s.path)
	if s.lock != nil {
		s.lock.Close()
	}
	if err != nil {
		return fmt.Errorf("removing the spool directory: %w", err)
	}
	return nil
}
