package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// lockName is the file in the root whose flock marks the root as in use.
const lockName = "lock"

// rootLock is an exclusive hold on a root, released when the process dies.
type rootLock struct {
	f *os.File
}

// lockRoot takes the root's lock and records who holds it (holder), so the
// next process that tries can say who is in the way.
func lockRoot(root, holder string) (*rootLock, error) {
	path := filepath.Join(root, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			who, _ := os.ReadFile(path)
			return nil, fmt.Errorf("root %s is in use by %s", root, describeHolder(who))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	desc := fmt.Sprintf("pid %d (%s)", os.Getpid(), holder)
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(desc+"\n"), 0)
	}
	return &rootLock{f: f}, nil
}

func describeHolder(content []byte) string {
	s := strings.TrimSpace(string(content))
	if s == "" {
		return "another process"
	}
	return s
}

func (l *rootLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	l.f.Truncate(0)
	err := l.f.Close() // closing drops the flock
	l.f = nil
	return err
}
