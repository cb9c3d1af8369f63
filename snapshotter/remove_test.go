package snapshotter_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// TestRemoveFiles: with AsyncRemove, a snapshot containerd removes keeps
// its directory until Cleanup, while one the store removes loses it at
// once; without, every Remove deletes it.
func TestRemoveFiles(t *testing.T) {
	requireRoot(t)
	for _, async := range []bool{true, false} {
		t.Run(map[bool]string{true: "async", false: "sync"}[async], func(t *testing.T) {
			ctx := namespaces.WithNamespace(context.Background(), "test")
			sn, cleanup, err := newSnapshotter(snapshotter.Options{AsyncRemove: async})(ctx, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer cleanup()
			if _, err := sn.Prepare(ctx, "base-x", ""); err != nil {
				t.Fatal(err)
			}
			if err := sn.Commit(ctx, "base", "base-x"); err != nil {
				t.Fatal(err)
			}
			// The files of an active snapshot on a parent are its
			// overlay mount's upperdir.
			dirOf := func(key string) string {
				t.Helper()
				mounts, err := sn.Prepare(ctx, key, "base")
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range mounts {
					for _, o := range m.Options {
						if upper, ok := strings.CutPrefix(o, "upperdir="); ok {
							return upper
						}
					}
				}
				t.Fatalf("%s: no upperdir in %+v", key, mounts)
				return ""
			}
			exists := func(dir string) bool {
				t.Helper()
				_, err := os.Stat(dir)
				if err != nil && !os.IsNotExist(err) {
					t.Fatal(err)
				}
				return err == nil
			}
			byContainerd, byStore := dirOf("by-containerd"), dirOf("by-store")
			if err := sn.Remove(ctx, "by-containerd"); err != nil {
				t.Fatal(err)
			}
			if err := sn.Remove(snapshotter.WithStoreCaller(ctx), "by-store"); err != nil {
				t.Fatal(err)
			}
			if exists(byStore) {
				t.Errorf("the store's Remove left %s", byStore)
			}
			if got := exists(byContainerd); got != async {
				t.Errorf("after containerd's Remove, %s exists: %v, want %v", byContainerd, got, async)
			}
			if err := sn.(interface{ Cleanup(context.Context) error }).Cleanup(ctx); err != nil {
				t.Fatal(err)
			}
			if exists(byContainerd) {
				t.Errorf("Cleanup left %s", byContainerd)
			}
			// What remains is intact: the parent still mounts.
			if _, err := sn.View(ctx, "view", "base"); err != nil {
				t.Fatal(err)
			}
		})
	}
}
