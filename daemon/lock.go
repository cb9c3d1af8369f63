package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lockName is the file in the root whose flock marks the root as in use.
const lockName = "lock"

// Holder says who holds a root: written into the lock file by the holder, so
// whoever is refused can name it, and a store can find the daemon's socket.
type Holder struct {
	PID int `json:"pid"`
	// What the holder is, e.g. "cs-snapshotter serve".
	What string `json:"what"`
	// Address is the socket a daemon holding the root serves; empty for a
	// store opened in-process.
	Address string `json:"address,omitempty"`
	// ImageStores are the additional read-only image stores a daemon
	// serves with the root, so a store reaching the root through it
	// reads them too.
	ImageStores []string `json:"image_stores,omitempty"`
	// ImageStoreOf is the root of the daemon holding this root as its
	// image_store; that daemon serves the two only as one.
	ImageStoreOf string `json:"image_store_of,omitempty"`
}

func (h Holder) String() string {
	s := fmt.Sprintf("pid %d (%s", h.PID, h.What)
	if h.Address != "" {
		s += " on " + h.Address
	}
	return s + ")"
}

// InUseError is returned when another process holds the root.
type InUseError struct {
	Root   string
	Holder Holder
}

func (e *InUseError) Error() string {
	if e.Holder.ImageStoreOf != "" {
		return fmt.Sprintf("root %s is in use by %s as the image store of %s: open %s instead, which shows both", e.Root, e.Holder, e.Holder.ImageStoreOf, e.Holder.ImageStoreOf)
	}
	return fmt.Sprintf("root %s is in use by %s", e.Root, e.Holder)
}

// rootLock is an exclusive hold on a root, released when the process dies.
type rootLock struct {
	f *os.File
}

func lockRoot(root string, h Holder) (*rootLock, error) {
	path := filepath.Join(root, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &InUseError{Root: root, Holder: readHolder(path)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	h.PID = os.Getpid()
	data, _ := json.Marshal(h)
	if err := f.Truncate(0); err == nil {
		f.WriteAt(append(data, '\n'), 0)
	}
	return &rootLock{f: f}, nil
}

func readHolder(path string) Holder {
	var h Holder
	data, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(data, &h) != nil || h.What == "" {
		return Holder{What: "another process"}
	}
	return h
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
