// Package snapshotter is cs-snapshotter's snapshots.Snapshotter: overlayfs
// layers on disk, their records in the daemon's database.
//
// On disk, under root:
//
//	snapshots/<id>   the snapshot's files (an overlay upper or lower dir)
//	work/<id>        overlay's work dir, for active snapshots
//
// <id> is the record's numeric ID in base 36. The files sit directly in
// snapshots/<id> (not in a fs/ subdirectory as containerd's overlayfs
// snapshotter has them) so that after containerd's mount code shortens
// lowerdir to paths relative to snapshots/, each layer costs only a few bytes
// of the one-page mount data, and a chain of 500 layers (the kernel's limit)
// still mounts.
package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	bolt "go.etcd.io/bbolt"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
)

// Options tune the snapshotter.
type Options struct {
	// MountOptions are extra overlay mount options.
	MountOptions []string
	// AsyncRemove leaves the directories of a snapshot containerd removes
	// for Cleanup, which containerd calls after each garbage collection,
	// instead of deleting them during Remove. The store's own removals
	// (WithStoreCaller) delete them at once all the same, as
	// containers/storage does: its callers expect the space back.
	AsyncRemove bool
	// Removed, if set, is called after a snapshot is removed, with its
	// record ID and last labels, to let go of what they reference.
	Removed func(ctx context.Context, id string, labels map[string]string)
}

// Snapshotter implements snapshots.Snapshotter and snapshots.Cleaner.
type Snapshotter struct {
	root        string
	db          *metadata.DB
	options     []string
	asyncRemove bool
	readOnly    bool // NewReadOnly
	removed     func(ctx context.Context, id string, labels map[string]string)
}

var _ snapshots.Cleaner = (*Snapshotter)(nil)

// New returns a snapshotter keeping files under root and records in db. The
// caller owns db and closes it after the snapshotter.
func New(ctx context.Context, root string, db *metadata.DB, opts Options) (*Snapshotter, error) {
	for _, dir := range []string{root, filepath.Join(root, "snapshots"), filepath.Join(root, "work")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	if err := overlayutils.Check(root); err != nil {
		return nil, err
	}
	return &Snapshotter{
		root:        root,
		db:          db,
		options:     overlayutils.DefaultOptions(root, opts.MountOptions),
		asyncRemove: opts.AsyncRemove,
		removed:     opts.Removed,
	}, nil
}

// Stat returns the info of the snapshot key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	if err := validateKey("key", key); err != nil {
		return snapshots.Info{}, fmt.Errorf("stat snapshot: %w", err)
	}
	err = s.db.View(ctx, func(ctx context.Context, _ *bolt.Tx) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return snapshots.Info{}, fmt.Errorf("stat snapshot %q: %w", key, err)
	}
	return info, nil
}

// Update changes the labels of a snapshot.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (updated snapshots.Info, err error) {
	if err := s.refuseWrite("update snapshot", info.Name); err != nil {
		return snapshots.Info{}, err
	}
	if err := validateKey("name", info.Name); err != nil {
		return snapshots.Info{}, fmt.Errorf("update snapshot: %w", err)
	}
	if err := metadata.ValidateLabels(info.Labels); err != nil {
		return snapshots.Info{}, fmt.Errorf("update snapshot %q: %w", info.Name, err)
	}
	err = s.db.Update(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		_, old, _, err := storage.GetInfo(ctx, info.Name)
		if err != nil {
			return err
		}
		if updated, err = storage.UpdateInfo(ctx, info, fieldpaths...); err != nil {
			return err
		}
		if err := releaseNames(tx, info.Name, old.Labels); err != nil {
			return err
		}
		return claimNames(tx, info.Name, updated.Labels)
	})
	if err != nil {
		return snapshots.Info{}, fmt.Errorf("update snapshot %q: %w", info.Name, err)
	}
	return updated, nil
}

// Usage returns the disk usage of a snapshot: recorded at commit for a
// committed one, measured now for an active one.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	if err := validateKey("key", key); err != nil {
		return snapshots.Usage{}, fmt.Errorf("usage of snapshot: %w", err)
	}
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := s.db.View(ctx, func(ctx context.Context, _ *bolt.Tx) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return snapshots.Usage{}, fmt.Errorf("usage of snapshot %q: %w", key, err)
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.filesPath(id))
		if err != nil {
			return snapshots.Usage{}, fmt.Errorf("usage of snapshot %q: %w", key, err)
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
}

// Prepare creates an active snapshot on top of parent.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

// Mounts returns the mounts of an active or view snapshot.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	if err := validateKey("key", key); err != nil {
		return nil, fmt.Errorf("mounts of snapshot: %w", err)
	}
	var snap storage.Snapshot
	if err := s.db.View(ctx, func(ctx context.Context, _ *bolt.Tx) (err error) {
		snap, err = storage.GetSnapshot(ctx, key)
		if err != nil && errdefs.IsFailedPrecondition(err) && IsStoreCaller(ctx) {
			snap, err = committedView(ctx, key)
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("mounts of snapshot %q: %w", key, err)
	}
	return s.mounts(snap)
}

// Commit turns the active snapshot key into the committed snapshot name.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	if err := s.refuseWrite("commit snapshot", key); err != nil {
		return err
	}
	if err := validateKey("key", key); err != nil {
		return fmt.Errorf("commit snapshot: %w", err)
	}
	if err := validateNewKey("name", name); err != nil {
		return fmt.Errorf("commit snapshot %q: %w", shorten(key), err)
	}
	base, err := applyOpts(opts)
	if err != nil {
		return fmt.Errorf("commit %q as %q: %w", key, name, err)
	}
	err = s.db.Update(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		id, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if info.Kind != snapshots.KindActive {
			return fmt.Errorf("snapshot is %v, not active: %w", info.Kind, errdefs.ErrFailedPrecondition)
		}
		usage, err := fs.DiskUsage(ctx, s.filesPath(id))
		if err != nil {
			return err
		}
		if _, err = storage.CommitActive(ctx, key, name, snapshots.Usage(usage), opts...); err != nil {
			return err
		}
		if err := s.addApplied(ctx, tx, id, name); err != nil {
			return err
		}
		// Commit replaces the labels: the active's names go, the new ones
		// belong to the committed snapshot.
		if err := releaseNames(tx, key, info.Labels); err != nil {
			return err
		}
		return claimNames(tx, name, base.Labels)
	})
	if err != nil {
		return fmt.Errorf("commit %q as %q: %w", key, name, err)
	}
	return nil
}

// Remove deletes the snapshot key, which must have no children.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	if err := s.refuseWrite("remove snapshot", key); err != nil {
		return err
	}
	if err := validateKey("key", key); err != nil {
		return fmt.Errorf("remove snapshot: %w", err)
	}
	var (
		id     string
		labels map[string]string
	)
	if err := s.db.Update(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if info.Labels[cslabels.Owned] != "" && !IsStoreCaller(ctx) {
			return fmt.Errorf("%s: %w", cslabels.OwnedError(key), errdefs.ErrFailedPrecondition)
		}
		if id, _, err = storage.Remove(ctx, key); err != nil {
			return err
		}
		// An active snapshot removed before its commit (an unpack given
		// up) takes what the diff service recorded for it along.
		applied, err := metadata.AppliedRecords(tx).Take(id)
		if err != nil {
			return err
		}
		labels = info.Labels
		if len(applied) > 0 {
			labels = applied
		}
		return releaseNames(tx, key, info.Labels)
	}); err != nil {
		return fmt.Errorf("remove snapshot %q: %w", key, err)
	}
	if s.removed != nil {
		s.removed(ctx, id, labels)
	}
	if !s.asyncRemove || IsStoreCaller(ctx) {
		// The record is gone; a directory left behind by a failure here is an
		// orphan that Cleanup removes.
		for _, dir := range []string{s.filesPath(id), s.workPath(id)} {
			if err := os.RemoveAll(dir); err != nil {
				log.G(ctx).WithError(err).WithField("path", dir).Warn("failed to remove snapshot directory")
			}
		}
	}
	return nil
}

// addApplied puts on committed snapshot name (record id) the labels the
// diff service recorded while a layer was applied into it.
func (s *Snapshotter) addApplied(ctx context.Context, tx *bolt.Tx, id, name string) error {
	applied, err := metadata.AppliedRecords(tx).Take(id)
	if err != nil || len(applied) == 0 {
		return err
	}
	info := snapshots.Info{Name: name, Labels: applied}
	paths := make([]string, 0, len(applied))
	for k := range applied {
		paths = append(paths, "labels."+k)
	}
	_, err = storage.UpdateInfo(ctx, info, paths...)
	return err
}

// RecordIDs returns the record IDs of every snapshot.
func (s *Snapshotter) RecordIDs(ctx context.Context) (ids map[string]bool, err error) {
	err = s.db.View(ctx, func(ctx context.Context, _ *bolt.Tx) error {
		m, err := storage.IDMap(ctx)
		ids = make(map[string]bool, len(m))
		for id := range m {
			ids[id] = true
		}
		return err
	})
	return ids, err
}

// LabelsOf returns the labels of the snapshot with record ID id. It scans
// every record, so it is for rare calls.
func (s *Snapshotter) LabelsOf(ctx context.Context, id string) (labels map[string]string, err error) {
	err = s.db.View(ctx, func(ctx context.Context, _ *bolt.Tx) error {
		ids, err := storage.IDMap(ctx)
		if err != nil {
			return err
		}
		key, ok := ids[id]
		if !ok {
			return fmt.Errorf("snapshot record %s: %w", id, errdefs.ErrNotFound)
		}
		_, info, _, err := storage.GetInfo(ctx, key)
		labels = info.Labels
		return err
	})
	return labels, err
}

// SnapshotID returns the record ID of the snapshot whose files are in dir
// (a path from its mounts), if dir is one of this snapshotter's.
func (s *Snapshotter) SnapshotID(dir string) (string, bool) {
	rel, err := filepath.Rel(filepath.Join(s.root, "snapshots"), dir)
	if err != nil || strings.Contains(rel, "/") || rel == "." || strings.HasPrefix(rel, "..") {
		return "", false
	}
	n, err := strconv.ParseUint(rel, 36, 64)
	if err != nil {
		return "", false
	}
	return strconv.FormatUint(n, 10), true
}

// Walk calls fn for every snapshot matching the filters. Snapshots the
// store holds are listed only to the store (IsStoreCaller).
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	// Parsed first, so a malformed filter is refused (InvalidArgument) even
	// when the name index below would answer it.
	if _, err := metadata.ParseFilters(filters...); err != nil {
		return fmt.Errorf("walk snapshots: %w", err)
	}
	if !IsStoreCaller(ctx) {
		inner := fn
		fn = func(ctx context.Context, info snapshots.Info) error {
			if info.Labels[cslabels.Owned] != "" {
				return nil
			}
			return inner(ctx, info)
		}
	}
	return s.db.View(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		// One name: the index knows its holder; the rest need not be read.
		if kind, name, ok := metadata.IndexedFilter(filters); ok && kind != cslabels.Image && kind != cslabels.ImageIDKind {
			holder := metadata.Names(tx).Get(string(kind), name)
			if holder == "" {
				return nil
			}
			_, info, _, err := storage.GetInfo(ctx, holder)
			if errdefs.IsNotFound(err) {
				return nil
			}
			if err != nil {
				return err
			}
			if _, labelled := info.Labels[cslabels.NameKey(kind, name)]; !labelled {
				return nil
			}
			return fn(ctx, info)
		}
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Cleanup removes directories no snapshot record refers to: those of removed
// snapshots and those left by interrupted operations.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	if err := s.refuseWrite("clean up", s.root); err != nil {
		return err
	}
	var orphans []string
	// Listing inside a write transaction serializes with create, whose
	// temporary directory only exists inside its own write transaction.
	if err := s.db.Update(ctx, func(ctx context.Context, _ *bolt.Tx) error {
		ids, err := storage.IDMap(ctx)
		if err != nil {
			return err
		}
		live := make(map[string]bool, len(ids))
		for id := range ids {
			live[dirName(id)] = true
		}
		for _, parent := range []string{"snapshots", "work"} {
			dir := filepath.Join(s.root, parent)
			entries, err := os.ReadDir(dir)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if !live[e.Name()] {
					orphans = append(orphans, filepath.Join(dir, e.Name()))
				}
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	for _, dir := range orphans {
		if err := os.RemoveAll(dir); err != nil {
			log.G(ctx).WithError(err).WithField("path", dir).Warn("failed to remove orphan directory")
		}
	}
	return nil
}

// Close releases nothing: the database belongs to the caller.
func (s *Snapshotter) Close() error { return nil }

func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (mounts []mount.Mount, err error) {
	if err := s.refuseWrite("create snapshot", key); err != nil {
		return nil, err
	}
	if err := validateNewKey("key", key); err != nil {
		return nil, fmt.Errorf("create snapshot: %w", err)
	}
	base, err := applyOpts(opts)
	if err != nil {
		return nil, fmt.Errorf("create snapshot %q: %w", key, err)
	}
	var (
		tmp     string
		created []string
	)
	defer func() {
		if err == nil {
			return
		}
		for _, dir := range append(created, tmp) {
			if dir == "" {
				continue
			}
			if rerr := os.RemoveAll(dir); rerr != nil {
				log.G(ctx).WithError(rerr).WithField("path", dir).Warn("failed to remove directory of failed snapshot")
			}
		}
	}()
	err = s.db.Update(ctx, func(ctx context.Context, tx *bolt.Tx) (err error) {
		// Directories are made inside the transaction so Cleanup, which lists
		// under a write transaction too, never sees them half made.
		tmp, err = os.MkdirTemp(filepath.Join(s.root, "snapshots"), "new-")
		if err != nil {
			return err
		}
		if err := os.Chmod(tmp, 0o755); err != nil {
			return err
		}
		snap, err := storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return err
		}
		// A snapshot that cannot be mounted is not made.
		if mounts, err = s.mounts(snap); err != nil {
			return err
		}
		if err := claimNames(tx, key, base.Labels); err != nil {
			return err
		}
		if len(snap.ParentIDs) > 0 {
			// Like containerd: the new root belongs to whoever owns the parent's.
			if err := chownLike(tmp, s.filesPath(snap.ParentIDs[0])); err != nil {
				return err
			}
		}
		if kind == snapshots.KindActive {
			work := s.workPath(snap.ID)
			if err := os.Mkdir(work, 0o711); err != nil {
				return err
			}
			created = append(created, work)
		}
		files := s.filesPath(snap.ID)
		if roDir := base.Labels[cslabels.ReadOnlyDir]; roDir != "" {
			// A mirror of a read-only store's layer: its files are there.
			if err := s.checkReadOnlyDir(ctx, kind, roDir); err != nil {
				return err
			}
			if err := os.Remove(tmp); err != nil {
				return err
			}
			tmp = ""
			if err := os.Symlink(roDir, files); err != nil {
				return err
			}
			created = append(created, files)
			return nil
		}
		if err := os.Rename(tmp, files); err != nil {
			return err
		}
		tmp = ""
		created = append(created, files)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create snapshot %q: %w", key, err)
	}
	return mounts, nil
}

func (s *Snapshotter) mounts(snap storage.Snapshot) ([]mount.Mount, error) {
	l := overlayutils.Layers{
		Upper:    s.filesPath(snap.ID),
		ReadOnly: snap.Kind == snapshots.KindView,
	}
	if snap.Kind == snapshots.KindActive {
		l.Work = s.workPath(snap.ID)
	}
	for _, pid := range snap.ParentIDs {
		l.Lowers = append(l.Lowers, s.filesPath(pid))
	}
	m, err := overlayutils.Mounts(l, s.options)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	return m, nil
}

func (s *Snapshotter) filesPath(id string) string {
	return filepath.Join(s.root, "snapshots", dirName(id))
}

func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "work", dirName(id))
}

// dirName is the short on-disk name of record ID id (decimal).
func dirName(id string) string {
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		return id
	}
	return strconv.FormatUint(n, 36)
}

func chownLike(path, like string) error {
	st, err := os.Stat(like)
	if err != nil {
		return fmt.Errorf("stat parent: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("stat parent %s: no ownership information", like)
	}
	return os.Lchown(path, int(sys.Uid), int(sys.Gid))
}

// applyOpts returns what opts set, with its labels checked.
func applyOpts(opts []snapshots.Opt) (snapshots.Info, error) {
	var info snapshots.Info
	for _, opt := range opts {
		if err := opt(&info); err != nil {
			return info, err
		}
	}
	return info, metadata.ValidateLabels(info.Labels)
}
