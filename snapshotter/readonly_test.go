package snapshotter_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// A read-only snapshotter reads a root and refuses every write; the store
// (and only it) gets a committed snapshot's read-only mounts, and may make
// a snapshot whose files are another root's layer directory.
func TestReadOnly(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	store := snapshotter.WithStoreCaller(ctx)
	root := t.TempDir()
	sn, cleanup, err := newSnapshotter(snapshotter.Options{})(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct{ name, parent string }{{"base", ""}, {"top", "base"}} {
		if _, err := sn.Prepare(ctx, l.name+"-a", l.parent); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, l.name, l.name+"-a"); err != nil {
			t.Fatal(err)
		}
	}
	// Committed: Mounts is an error to others, the chain to the store.
	if _, err := sn.Mounts(ctx, "top"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Mounts of a committed snapshot, not the store: %v", err)
	}
	m, err := sn.Mounts(store, "top")
	if err != nil || len(m) != 1 || m[0].Type != "overlay" || strings.Contains(strings.Join(m[0].Options, ","), "upperdir") {
		t.Errorf("Mounts of a committed snapshot to the store: %+v %v", m, err)
	}
	if m, err := sn.Mounts(store, "base"); err != nil || len(m) != 1 || m[0].Type != "bind" || m[0].Options[0] != "ro" {
		t.Errorf("Mounts of a committed base to the store: %+v %v", m, err)
	}
	cleanup()

	dbPath := filepath.Join(root, metadata.FileName)
	before, _ := os.ReadFile(dbPath)
	db, err := metadata.OpenReadOnly(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := snapshotter.NewReadOnly(root, db, snapshotter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := ro.Stat(ctx, "top"); err != nil || info.Parent != "base" {
		t.Errorf("Stat: %+v %v", info, err)
	}
	n := 0
	ro.Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil })
	if n != 2 {
		t.Errorf("Walk listed %d", n)
	}
	if _, err := ro.Mounts(store, "top"); err != nil {
		t.Errorf("Mounts: %v", err)
	}
	for name, err := range map[string]error{
		"Prepare": func() error { _, err := ro.Prepare(ctx, "x", "top"); return err }(),
		"View":    func() error { _, err := ro.View(ctx, "x", "top"); return err }(),
		"Commit":  ro.Commit(ctx, "y", "x"),
		"Remove":  ro.Remove(ctx, "top"),
		"Update":  func() error { _, err := ro.Update(ctx, snapshots.Info{Name: "top"}); return err }(),
		"Cleanup": ro.Cleanup(ctx),
	} {
		if !errors.Is(err, metadata.ErrReadOnly) {
			t.Errorf("%s: %v, want ErrReadOnly", name, err)
		}
	}
	if after, _ := os.ReadFile(dbPath); !bytes.Equal(before, after) {
		t.Error("the database changed")
	}

	// Another root mirrors "top" of this one.
	other := t.TempDir()
	sn2, cleanup2, err := newSnapshotter(snapshotter.Options{})(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup2()
	m, err = ro.Mounts(store, "base")
	if err != nil {
		t.Fatal(err)
	}
	dir := m[0].Source
	for _, tc := range []struct {
		name string
		ctx  context.Context
		dir  string
	}{
		{"not the store", ctx, dir},
		{"relative", store, "snapshots/1"},
		{"not a layer directory", store, root},
		{"inside this root", store, filepath.Join(other, "snapshots")},
	} {
		_, err := sn2.Prepare(tc.ctx, "mirror-"+strings.ReplaceAll(tc.name, " ", "-"), "", snapshots.WithLabels(map[string]string{cslabels.ReadOnlyDir: tc.dir}))
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", tc.name, err)
		}
	}
	if _, err := sn2.Prepare(store, "mirror-a", "", snapshots.WithLabels(map[string]string{cslabels.ReadOnlyDir: dir})); err != nil {
		t.Fatal(err)
	}
	if err := sn2.Commit(store, "mirror", "mirror-a"); err != nil {
		t.Fatal(err)
	}
	var link string
	entries, _ := os.ReadDir(filepath.Join(other, "snapshots"))
	for _, e := range entries {
		if p, err := os.Readlink(filepath.Join(other, "snapshots", e.Name())); err == nil {
			link = p
		}
	}
	if link != dir {
		t.Errorf("mirror links to %q, want %q", link, dir)
	}
	if err := sn2.Remove(store, "mirror"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("removing the mirror removed its target: %v", err)
	}
}
