package snapshotter_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// TestRebase: the "rebase" capability containerd's parallel unpack relies
// on: a layer prepared without a parent and committed with one stacks on it,
// its overlay whiteouts hiding the parent's files.
func TestRebase(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	sn, cleanup, err := newSnapshotter(snapshotter.Options{})(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()

	m, err := sn.Prepare(ctx, "base-active", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"kept", "deleted"} {
		if err := os.WriteFile(filepath.Join(upperDir(t, m), f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	// Unpacked in parallel: no parent yet, so a bind mount; the differ
	// writes whiteouts in overlay form anyway.
	m, err = sn.Prepare(ctx, "top-active", "")
	if err != nil {
		t.Fatal(err)
	}
	top := upperDir(t, m)
	if err := os.WriteFile(filepath.Join(top, "added"), []byte("added"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(top, "deleted"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "top", "top-active", snapshots.WithParent("base")); err != nil {
		t.Fatalf("commit with a new parent: %v", err)
	}
	if info, _ := sn.Stat(ctx, "top"); info.Parent != "base" {
		t.Fatalf("parent after rebase: %q", info.Parent)
	}
	view, err := sn.View(ctx, "view", "top")
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if err := mount.All(view, target); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(target, 0)
	for f, want := range map[string]bool{"kept": true, "added": true, "deleted": false} {
		if _, err := os.Stat(filepath.Join(target, f)); (err == nil) != want {
			t.Errorf("%s present: %v, want %v", f, err == nil, want)
		}
	}
	// A snapshot prepared with a parent cannot change it.
	if _, err := sn.Prepare(ctx, "child-active", "base"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "child", "child-active", snapshots.WithParent("top")); err == nil {
		t.Error("commit moved a snapshot that had a parent")
	}
}
