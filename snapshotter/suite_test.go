package snapshotter_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

func newSnapshotter(opts snapshotter.Options) testsuite.SnapshotterFunc {
	return func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		db, err := metadata.Open(ctx, filepath.Join(root, metadata.FileName))
		if err != nil {
			return nil, nil, err
		}
		sn, err := snapshotter.New(ctx, root, db, opts)
		if err != nil {
			db.Close()
			return nil, nil, err
		}
		return sn, func() error { return errors.Join(sn.Close(), db.Close()) }, nil
	}
}

// TestSnapshotterSuite runs containerd's own snapshotter suite in-process.
// The name "overlayfs" exempts the directory-rename case exactly as
// containerd exempts its overlayfs snapshotter (overlay without redirect_dir
// cannot rename a lower directory).
func TestSnapshotterSuite(t *testing.T) {
	requireRoot(t)
	t.Run("SyncRemove", func(t *testing.T) {
		testsuite.SnapshotterSuite(t, "overlayfs", newSnapshotter(snapshotter.Options{}))
	})
	t.Run("AsyncRemove", func(t *testing.T) {
		testsuite.SnapshotterSuite(t, "overlayfs", newSnapshotter(snapshotter.Options{AsyncRemove: true}))
	})
}

// requireRoot fails rather than skips: overlay mounts need root, and a
// skipped suite must not pass as a green one.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts overlayfs and must run as root")
	}
}
