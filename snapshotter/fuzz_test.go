package snapshotter_test

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// Fuzz targets (seed corpus in testdata/fuzz/<target>/), e.g.
//
//	go test -run '^$' -fuzz '^FuzzWalkFilter$' -fuzztime 60s ./snapshotter/

// adaptSnapshot is containerd's filter adaptor for snapshots
// (core/snapshots/storage), the meaning a Walk filter must have.
func adaptSnapshot(info snapshots.Info) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) == 0 {
			return "", false
		}
		switch fieldpath[0] {
		case "kind":
			switch info.Kind {
			case snapshots.KindActive:
				return "active", true
			case snapshots.KindView:
				return "view", true
			case snapshots.KindCommitted:
				return "committed", true
			}
		case "name":
			return info.Name, true
		case "parent":
			return info.Parent, true
		case "labels":
			if len(info.Labels) == 0 {
				return "", false
			}
			v, ok := info.Labels[strings.Join(fieldpath[1:], ".")]
			return v, ok
		}
		return "", false
	})
}

func walkNames(ctx context.Context, sn snapshots.Snapshotter, fs ...string) ([]string, error) {
	var names []string
	err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		names = append(names, info.Name)
		return nil
	}, fs...)
	sort.Strings(names)
	return names, err
}

// FuzzWalkFilter: Walk with any filter never panics; a filter it refuses is
// refused with InvalidArgument, and one it takes selects exactly what
// containerd's filter semantics select from all snapshots (whether the
// name index or a full scan answers).
func FuzzWalkFilter(f *testing.F) {
	requireRoot(f)
	ctx := namespaces.WithNamespace(context.Background(), "fuzz")
	sn, cleanup, err := newSnapshotter(snapshotter.Options{})(ctx, f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { cleanup() })
	layer := func(name string) string { return cslabels.NameKey(cslabels.Layer, name) }
	for _, s := range []struct {
		key, commit string
		labels      map[string]string
	}{
		{"a-active", "a", map[string]string{layer("web"): "0", "containerd.io/snapshot/x": "1"}},
		{"b-active", "b", map[string]string{layer(`x\`): "0", layer(`x"y`): "1"}},
		{"c", "", map[string]string{layer("aA"): "0", cslabels.NameKey(cslabels.Container, "web"): "0"}},
	} {
		parent := ""
		if s.key != "a-active" {
			parent = "a"
		}
		if _, err := sn.Prepare(ctx, s.key, parent, snapshots.WithLabels(s.labels)); err != nil {
			f.Fatal(err)
		}
		if s.commit != "" {
			if err := sn.Commit(ctx, s.commit, s.key, snapshots.WithLabels(s.labels)); err != nil {
				f.Fatal(err)
			}
		}
	}
	if _, err := sn.View(ctx, "v", "b", snapshots.WithLabels(map[string]string{"containerd.io/snapshot/x": "2"})); err != nil {
		f.Fatal(err)
	}
	var all []snapshots.Info
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		all = append(all, info)
		return nil
	}); err != nil {
		f.Fatal(err)
	}

	f.Add(`labels."` + layer("web") + `"`)
	f.Add(`kind==committed,labels."containerd.io/snapshot/x"==1`)
	f.Fuzz(func(t *testing.T, filter string) {
		got, err := walkNames(ctx, sn, filter)
		parsed, perr := metadata.ParseFilters(filter)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Walk(%q): %v, not InvalidArgument", filter, err)
			}
			if perr == nil {
				t.Fatalf("Walk(%q) refused a filter that parses: %v", filter, err)
			}
			return
		}
		if perr != nil {
			t.Fatalf("Walk(%q) took a filter that does not parse: %v", filter, perr)
		}
		var want []string
		for _, info := range all {
			if parsed.Match(adaptSnapshot(info)) {
				want = append(want, info.Name)
			}
		}
		sort.Strings(want)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Walk(%q) = %q, containerd's semantics select %q", filter, got, want)
		}
	})
}

// FuzzSnapshotLabels: Prepare with any key and label never panics; it
// succeeds exactly when containerd's rules and the daemon's (UTF-8, a
// non-empty label key, key and value at most 4096 bytes together, a
// snapshot key of at most 4096 bytes) allow, keeping the label as given,
// and otherwise answers InvalidArgument and leaves the store as it was.
func FuzzSnapshotLabels(f *testing.F) {
	requireRoot(f)
	ctx := namespaces.WithNamespace(context.Background(), "fuzz")
	root := f.TempDir()
	sn, cleanup, err := newSnapshotter(snapshotter.Options{})(ctx, root)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { cleanup() })
	if _, err := sn.Prepare(ctx, "base-active", ""); err != nil {
		f.Fatal(err)
	}
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		f.Fatal(err)
	}
	baseline := snapshotState(f, ctx, sn, root)

	f.Add("key", "containerd.io/snapshot/k", "v")
	f.Add("", "k", "v")
	f.Add("key", "", "v")
	f.Fuzz(func(t *testing.T, key, lkey, lval string) {
		_, err := sn.Prepare(ctx, key, "base", snapshots.WithLabels(map[string]string{lkey: lval}))
		validKey := key != "" && utf8.ValidString(key) && len(key) <= snapshotter.MaxKeyLen
		validLabel := lkey != "" && utf8.ValidString(lkey) && utf8.ValidString(lval) && len(lkey)+len(lval) <= 4096
		what := fmt.Sprintf("Prepare(%s, label %s=%s)", short(key), short(lkey), short(lval))
		switch {
		case err == nil:
			defer func() {
				// Drop the labels (an ownership label would refuse Remove).
				if _, err := sn.Update(ctx, snapshots.Info{Name: key}, "labels"); err != nil {
					t.Fatal(err)
				}
				if err := sn.Remove(ctx, key); err != nil {
					t.Fatal(err)
				}
			}()
			if !validKey || !validLabel {
				t.Fatalf("%s succeeded", what)
			}
			want := map[string]string{lkey: lval}
			if lval == "" {
				want = nil // an empty value is no label
			}
			info, err := sn.Stat(ctx, key)
			if err != nil || (len(want) > 0 || len(info.Labels) > 0) && !reflect.DeepEqual(info.Labels, want) {
				t.Fatalf("%s: Stat = %d labels, %v", what, len(info.Labels), err)
			}
			return
		case errdefs.IsInvalidArgument(err):
			if validKey && validLabel {
				t.Fatalf("%s refused: %s", what, short(err.Error()))
			}
		case errdefs.IsAlreadyExists(err) && validKey && validLabel:
			// The key of a snapshot there (base), or a name base holds.
		default:
			t.Fatalf("%s: %s", what, short(fmt.Sprint(err)))
		}
		if after := snapshotState(t, ctx, sn, root); !reflect.DeepEqual(baseline, after) {
			t.Fatalf("%s left the store changed: %d snapshots, %d directories", what, len(after.Infos), len(after.Dirs))
		}
	})
}

// short quotes s for a message, cut to 80 bytes.
func short(s string) string {
	if len(s) > 80 {
		return fmt.Sprintf("%q... (%d bytes)", s[:80], len(s))
	}
	return fmt.Sprintf("%q", s)
}
