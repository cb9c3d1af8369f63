package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// ReadOnlyRoot is a root opened by OpenReadOnly.
type ReadOnlyRoot struct {
	db *metadata.DB
	sn *snapshotter.Snapshotter
	cs *contentstore.Store
}

// OpenReadOnly opens the root of cfg for reading only, as an additional
// read-only image store: it neither takes the root's lock nor writes the
// holder record, creates no directory, and skips everything Open repairs
// at start (incomplete layers, ingests left by a crash, removals to
// finish), since those belong to whoever writes the root. The snapshotter
// and content store it returns refuse every write. See
// metadata.OpenReadOnly for what happens while another process writes the
// root.
func OpenReadOnly(ctx context.Context, cfg config.Config) (*ReadOnlyRoot, error) {
	root := cfg.Root
	fi, err := os.Stat(root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s does not exist: %w", root, metadata.ErrNotRoot)
		}
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory: %w", root, metadata.ErrNotRoot)
	}
	for _, dir := range []string{"snapshots", "content/blobs"} {
		if fi, err := os.Stat(filepath.Join(root, dir)); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%s has no %s directory: %w", root, dir, metadata.ErrNotRoot)
		}
	}
	r := &ReadOnlyRoot{}
	if r.db, err = metadata.OpenReadOnly(ctx, filepath.Join(root, metadata.FileName)); err != nil {
		return nil, err
	}
	if r.cs, err = contentstore.NewReadOnly(filepath.Join(root, "content"), r.db); err != nil {
		return nil, err
	}
	if r.sn, err = snapshotter.NewReadOnly(root, r.db, snapshotter.Options{MountOptions: cfg.Snapshotter.MountOptions}); err != nil {
		return nil, err
	}
	return r, nil
}

// Snapshotter returns the root's read-only snapshotter.
func (r *ReadOnlyRoot) Snapshotter() *snapshotter.Snapshotter { return r.sn }

// Content returns the root's read-only content store.
func (r *ReadOnlyRoot) Content() *contentstore.Store { return r.cs }

// Close lets go of the blob files kept open for readers.
func (r *ReadOnlyRoot) Close() error {
	if r.cs != nil {
		r.cs.Close()
	}
	return nil
}

// ReadHolder returns who holds root according to its lock file, without
// locking or writing it; ok is false when the file names nobody (nobody
// has held it, or the last holder let go). The record may be stale (a
// holder killed without letting go): a caller dialing Address must expect
// nobody to answer.
func ReadHolder(root string) (h Holder, ok bool) {
	h = readHolder(filepath.Join(root, lockName))
	return h, h.PID != 0
}
