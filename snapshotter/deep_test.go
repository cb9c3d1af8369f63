package snapshotter_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// upperDir is where an active snapshot's changes go, read from its mounts.
func upperDir(t *testing.T, mounts []mount.Mount) string {
	t.Helper()
	m := mounts[0]
	if m.Type == "bind" {
		return m.Source
	}
	for _, o := range m.Options {
		if dir, ok := strings.CutPrefix(o, "upperdir="); ok {
			return dir
		}
	}
	t.Fatalf("no upper dir in %+v", m)
	return ""
}

// TestDeepChainMounts builds a chain as deep as the kernel allows and mounts
// a view and an active snapshot on top of it through containerd's mount code.
func TestDeepChainMounts(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	root := t.TempDir()
	sn, cleanup, err := newSnapshotter(snapshotter.Options{})(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()

	const depth = overlayutils.MaxLowerDirs
	parent := ""
	for i := 0; i < depth; i++ {
		key := fmt.Sprintf("layer-%d-active", i)
		mounts, err := sn.Prepare(ctx, key, parent)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(upperDir(t, mounts), fmt.Sprintf("file-%d", i)), []byte(key), 0o644); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("layer-%d", i)
		if err := sn.Commit(ctx, name, key); err != nil {
			t.Fatal(err)
		}
		parent = name
	}

	view, err := sn.View(ctx, "deep-view", parent)
	if err != nil {
		t.Fatal(err)
	}
	active, err := sn.Prepare(ctx, "deep-active", parent)
	if err != nil {
		t.Fatal(err)
	}
	for name, mounts := range map[string][]mount.Mount{"view": view, "active": active} {
		t.Run(name, func(t *testing.T) {
			if n := strings.Count(strings.Join(mounts[0].Options, ","), ":") + 1; n != depth {
				t.Fatalf("mount has %d lower dirs, want %d", n, depth)
			}
			target := t.TempDir()
			if err := mount.All(mounts, target); err != nil {
				t.Fatalf("mount %d layers: %v", depth, err)
			}
			defer mount.UnmountAll(target, 0)
			for _, i := range []int{0, depth / 2, depth - 1} {
				got, err := os.ReadFile(filepath.Join(target, fmt.Sprintf("file-%d", i)))
				if err != nil || string(got) != fmt.Sprintf("layer-%d-active", i) {
					t.Errorf("file of layer %d: %q, %v", i, got, err)
				}
			}
		})
	}

	// One more layer is past the kernel's limit: a clear error, no snapshot.
	if err := sn.Commit(ctx, "too-deep", "deep-active"); err != nil {
		t.Fatal(err)
	}
	_, err = sn.Prepare(ctx, "too-deep-active", "too-deep")
	if err == nil || !strings.Contains(err.Error(), "overlay limit") {
		t.Fatalf("prepare on %d layers: got %v, want the overlay limit error", depth+1, err)
	}
	if _, err := sn.Stat(ctx, "too-deep-active"); err == nil {
		t.Error("failed prepare left a snapshot record")
	}
	if _, err := sn.Stat(ctx, "too-deep"); err != nil {
		t.Errorf("parent gone after failed prepare: %v", err)
	}
}
