package daemon_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

type snapshotRecord struct {
	Kind   snapshots.Kind
	Parent string
	Labels map[string]string
}

// inventory is everything Walk reports, to show a failed call changed nothing.
func inventory(ctx context.Context, t *testing.T, sn snapshots.Snapshotter) map[string]snapshotRecord {
	t.Helper()
	all := map[string]snapshotRecord{}
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		all[info.Name] = snapshotRecord{info.Kind, info.Parent, info.Labels}
		return nil
	}); err != nil {
		t.Fatalf("walk: %v", err)
	}
	return all
}

// TestBadInput checks that each kind of bad request gets the errdefs code
// containerd's overlayfs snapshotter answers, with a message naming what was
// wrong, and leaves every snapshot as it was — in-process and over gRPC.
func TestBadInput(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	s, err := serve(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()

	for _, subject := range []struct {
		name string
		sn   snapshots.Snapshotter
	}{
		{"inproc", s.d.Snapshotter()},
		{"socket", s.client.Snapshotter},
	} {
		t.Run(subject.name, func(t *testing.T) {
			sn := subject.sn
			p := subject.name + "-"
			// A committed base with a child, an active and a view.
			if _, err := sn.Prepare(ctx, p+"base-active", ""); err != nil {
				t.Fatal(err)
			}
			if err := sn.Commit(ctx, p+"base", p+"base-active", snapshots.WithLabels(map[string]string{"keep": "me"})); err != nil {
				t.Fatal(err)
			}
			if _, err := sn.Prepare(ctx, p+"child", p+"base"); err != nil {
				t.Fatal(err)
			}
			if _, err := sn.View(ctx, p+"view", p+"base"); err != nil {
				t.Fatal(err)
			}
			big := map[string]string{"big": strings.Repeat("x", 4097)}

			cases := []struct {
				name  string
				call  func() error
				is    error
				names string
			}{
				{"unknown parent", func() error { _, err := sn.Prepare(ctx, p+"new", p+"missing"); return err }, errdefs.ErrNotFound, p + "missing"},
				{"duplicate key", func() error { _, err := sn.Prepare(ctx, p+"child", p+"base"); return err }, errdefs.ErrAlreadyExists, p + "child"},
				{"duplicate view key", func() error { _, err := sn.View(ctx, p+"base", ""); return err }, errdefs.ErrAlreadyExists, p + "base"},
				{"parent not committed", func() error { _, err := sn.Prepare(ctx, p+"new", p+"child"); return err }, errdefs.ErrInvalidArgument, p + "child"},
				{"commit committed", func() error { return sn.Commit(ctx, p+"other", p+"base") }, errdefs.ErrFailedPrecondition, p + "base"},
				{"commit view", func() error { return sn.Commit(ctx, p+"other", p+"view") }, errdefs.ErrFailedPrecondition, p + "view"},
				{"commit unknown", func() error { return sn.Commit(ctx, p+"other", p+"missing") }, errdefs.ErrNotFound, p + "missing"},
				{"commit onto existing name", func() error { return sn.Commit(ctx, p+"base", p+"child") }, errdefs.ErrAlreadyExists, p + "base"},
				{"remove with children", func() error { return sn.Remove(ctx, p+"base") }, errdefs.ErrFailedPrecondition, p + "base"},
				{"remove unknown", func() error { return sn.Remove(ctx, p+"missing") }, errdefs.ErrNotFound, p + "missing"},
				{"mounts of committed", func() error { _, err := sn.Mounts(ctx, p+"base"); return err }, errdefs.ErrFailedPrecondition, p + "base"},
				{"mounts of unknown", func() error { _, err := sn.Mounts(ctx, p+"missing"); return err }, errdefs.ErrNotFound, p + "missing"},
				{"stat unknown", func() error { _, err := sn.Stat(ctx, p+"missing"); return err }, errdefs.ErrNotFound, p + "missing"},
				{"usage unknown", func() error { _, err := sn.Usage(ctx, p+"missing"); return err }, errdefs.ErrNotFound, p + "missing"},
				{"prepare label too big", func() error {
					_, err := sn.Prepare(ctx, p+"new", p+"base", snapshots.WithLabels(big))
					return err
				}, errdefs.ErrInvalidArgument, p + "new"},
				{"commit label too big", func() error { return sn.Commit(ctx, p+"other", p+"child", snapshots.WithLabels(big)) }, errdefs.ErrInvalidArgument, p + "child"},
				{"update label too big", func() error {
					_, err := sn.Update(ctx, snapshots.Info{Name: p + "base", Labels: big}, "labels.big")
					return err
				}, errdefs.ErrInvalidArgument, p + "base"},
				{"update unknown", func() error {
					_, err := sn.Update(ctx, snapshots.Info{Name: p + "missing", Labels: map[string]string{"a": "b"}})
					return err
				}, errdefs.ErrNotFound, p + "missing"},
				{"update bad field", func() error {
					_, err := sn.Update(ctx, snapshots.Info{Name: p + "base"}, "parent")
					return err
				}, errdefs.ErrInvalidArgument, p + "base"},
				{"malformed filter", func() error {
					return sn.Walk(ctx, func(context.Context, snapshots.Info) error { return nil }, `labels."unterminated`)
				}, errdefs.ErrInvalidArgument, "unterminated"},
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					before := inventory(ctx, t, sn)
					err := c.call()
					if !errors.Is(err, c.is) {
						t.Fatalf("got %v, want %v", err, c.is)
					}
					if !strings.Contains(err.Error(), c.names) {
						t.Errorf("error %q does not name %q", err, c.names)
					}
					if after := inventory(ctx, t, sn); !reflect.DeepEqual(before, after) {
						t.Errorf("store changed by a failed call:\nbefore %v\nafter  %v", before, after)
					}
				})
			}
			// The snapshots still work after all that.
			if _, err := sn.Mounts(ctx, p+"child"); err != nil {
				t.Errorf("child unusable after bad input: %v", err)
			}
			if err := sn.Commit(ctx, p+"child-done", p+"child"); err != nil {
				t.Errorf("commit after bad input: %v", err)
			}
		})
	}
}

// TestEmptyStoreLists: a fresh daemon walks no snapshots and no blobs, with
// no error, in-process and over the socket.
func TestEmptyStoreLists(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	s, err := serve(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	for name, sn := range map[string]snapshots.Snapshotter{"inproc": s.d.Snapshotter(), "socket": s.client.Snapshotter} {
		if got := inventory(ctx, t, sn); len(got) != 0 {
			t.Errorf("%s: fresh store lists %v", name, got)
		}
		if err := sn.Walk(ctx, func(context.Context, snapshots.Info) error { return nil }, `labels."a"==b`); err != nil {
			t.Errorf("%s: filtered walk of a fresh store: %v", name, err)
		}
	}
	for name, cs := range map[string]content.Store{"inproc": s.d.Content(), "socket": s.client.Content} {
		n := 0
		if err := cs.Walk(ctx, func(content.Info) error { n++; return nil }); err != nil || n != 0 {
			t.Errorf("%s: content walk of a fresh store: %d blobs, %v", name, n, err)
		}
		if st, err := cs.ListStatuses(ctx); err != nil || len(st) != 0 {
			t.Errorf("%s: statuses of a fresh store: %v %v", name, st, err)
		}
	}
}
