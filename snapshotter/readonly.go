package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
)

// NewReadOnly returns a snapshotter that only reads the snapshots under
// root, whose records are in db (opened with metadata.OpenReadOnly): no
// directory is created, no kernel feature is probed in root, and every
// call that would change a record or a file answers an error
// (errdefs.ErrFailedPrecondition wrapping metadata.ErrReadOnly). It serves
// the store's additional read-only image stores.
func NewReadOnly(root string, db *metadata.DB, opts Options) (*Snapshotter, error) {
	if fi, err := os.Stat(root); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", root)
	}
	return &Snapshotter{
		root:     root,
		db:       db,
		options:  overlayutils.DefaultOptions(root, opts.MountOptions),
		readOnly: true,
	}, nil
}

func (s *Snapshotter) refuseWrite(what, key string) error {
	if !s.readOnly {
		return nil
	}
	return fmt.Errorf("%s %q: snapshotter of %s is read-only: %w: %w", what, key, s.root, metadata.ErrReadOnly, errdefs.ErrFailedPrecondition)
}

// committedView is the snapshot record a view of committed snapshot key
// would have: no files of its own, key's and its parents' beneath. Mounts
// answers it to the store (IsStoreCaller) for a committed key, so the store
// can read a layer of a root it must not write to (an additional read-only
// image store, read directly or through its daemon) without making a view
// snapshot there. containerd never asks Mounts of a committed snapshot (it
// is an error in its API), and others still get that error.
func committedView(ctx context.Context, key string) (storage.Snapshot, error) {
	id, info, _, err := storage.GetInfo(ctx, key)
	if err != nil {
		return storage.Snapshot{}, err
	}
	if info.Kind != snapshots.KindCommitted {
		return storage.Snapshot{}, fmt.Errorf("snapshot %q is %v: %w", key, info.Kind, errdefs.ErrFailedPrecondition)
	}
	snap := storage.Snapshot{Kind: snapshots.KindView, ParentIDs: []string{id}}
	for parent := info.Parent; parent != ""; {
		pid, pinfo, _, err := storage.GetInfo(ctx, parent)
		if err != nil {
			return storage.Snapshot{}, fmt.Errorf("parent %q of %q: %w", parent, key, err)
		}
		snap.ParentIDs = append(snap.ParentIDs, pid)
		parent = pinfo.Parent
	}
	return snap, nil
}

// checkReadOnlyDir allows a snapshot's files to be the directory dir of
// another cs-snapshotter root (cslabels.ReadOnlyDir): only the store may
// ask, only for an active snapshot (which it commits at once), and dir
// must be a layer directory of a root (ROOT/snapshots/NAME, ROOT holding
// metadata.db) other than this one.
func (s *Snapshotter) checkReadOnlyDir(ctx context.Context, kind snapshots.Kind, dir string) error {
	bad := func(why string) error {
		return fmt.Errorf("read-only layer directory %q: %s: %w", dir, why, errdefs.ErrInvalidArgument)
	}
	switch {
	case !IsStoreCaller(ctx):
		return bad("only the store may mirror a read-only store's layer")
	case kind != snapshots.KindActive:
		return bad("not for a " + kind.String() + " snapshot")
	case !filepath.IsAbs(dir) || filepath.Clean(dir) != dir:
		return bad("not a clean absolute path")
	case filepath.Base(filepath.Dir(dir)) != "snapshots":
		return bad("not a layer directory of a root")
	}
	root := filepath.Dir(filepath.Dir(dir))
	if rel, err := filepath.Rel(s.root, dir); err == nil && !strings.HasPrefix(rel, "..") {
		return bad("inside this root")
	}
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
		return bad("not a directory")
	}
	if _, err := os.Stat(filepath.Join(root, metadata.FileName)); err != nil {
		return bad("not in a cs-snapshotter root")
	}
	return nil
}
