package snapshotter_test

import (
	"context"
	"reflect"
	"sort"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// TestWalkByName: a Walk filtered on one name label is answered from the
// name index and finds exactly what a full scan with the same condition
// finds, as names move and snapshots go.
func TestWalkByName(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	sn, cleanup, err := newSnapshotter(snapshotter.Options{})(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()

	name := cslabels.NameKey(cslabels.Layer, "web")
	walk := func(filter string) []string {
		var keys []string
		if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			keys = append(keys, info.Name)
			return nil
		}, filter); err != nil {
			t.Fatal(err)
		}
		sort.Strings(keys)
		return keys
	}
	check := func(want ...string) {
		t.Helper()
		indexed := walk(`labels."` + name + `"`)
		scanned := walk(`labels."` + name + `",name~=".*"`) // not indexable: a full scan
		if !reflect.DeepEqual(indexed, want) || !reflect.DeepEqual(scanned, want) {
			t.Errorf("indexed walk %v, scan %v; want %v", indexed, scanned, want)
		}
	}
	check()
	if _, err := sn.Prepare(ctx, "a", "", snapshots.WithLabels(map[string]string{name: "0"})); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "b", ""); err != nil {
		t.Fatal(err)
	}
	check("a")
	// The name moves from a to b.
	if _, err := sn.Update(ctx, snapshots.Info{Name: "a"}, "labels."+name); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Update(ctx, snapshots.Info{Name: "b", Labels: map[string]string{name: "0"}}, "labels."+name); err != nil {
		t.Fatal(err)
	}
	check("b")
	if err := sn.Remove(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	check()
}
