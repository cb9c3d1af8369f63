package snapshotter_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// storeState is everything a refused call must leave as it was: every
// record and every directory.
type storeState struct {
	Infos []snapshots.Info
	Dirs  []string
}

func snapshotState(t testing.TB, ctx context.Context, sn snapshots.Snapshotter, root string) storeState {
	t.Helper()
	var st storeState
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		st.Infos = append(st.Infos, info)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Slice(st.Infos, func(i, j int) bool { return st.Infos[i].Name < st.Infos[j].Name })
	for _, dir := range []string{"snapshots", "work"} {
		entries, err := os.ReadDir(filepath.Join(root, dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			st.Dirs = append(st.Dirs, dir+"/"+e.Name())
		}
	}
	return st
}

// labelOfSize returns a label whose key and value are n bytes together.
func labelOfSize(n int) map[string]string {
	const key = "containerd.io/snapshot/size-test"
	return map[string]string{key: strings.Repeat("v", n-len(key))}
}

// TestInvalidArguments: labels, keys and names beyond containerd's limits
// or not in UTF-8, empty keys and malformed filters are refused with
// InvalidArgument naming what is wrong, and the store is left exactly as it
// was; at the limits, calls succeed.
func TestInvalidArguments(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	root := t.TempDir()
	sn, cleanup, err := newSnapshotter(snapshotter.Options{})(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()

	if _, err := sn.Prepare(ctx, "base-active", "", snapshots.WithLabels(map[string]string{"containerd.io/snapshot/x": "1"})); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "active", "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.View(ctx, "view", "base"); err != nil {
		t.Fatal(err)
	}

	over := labelOfSize(4097)
	emptyKey := map[string]string{"": "value"}
	badKey := map[string]string{"containerd.io/snapshot/\xff": "value"}
	badValue := map[string]string{"containerd.io/snapshot/bad-value": "a\xc3\x28b"}
	long := strings.Repeat("k", snapshotter.MaxKeyLen+1)
	huge := strings.Repeat("k", 40000)
	name := cslabels.NameKey(cslabels.Layer, "x")

	cases := []struct {
		name string
		call func() error
		want []string // in the message
	}{
		{"Prepare label over the limit", func() error {
			_, err := sn.Prepare(ctx, "new", "base", snapshots.WithLabels(over))
			return err
		}, []string{"4097 bytes", "containerd.io/snapshot/size-test"}},
		{"View label over the limit", func() error {
			_, err := sn.View(ctx, "new", "base", snapshots.WithLabels(over))
			return err
		}, []string{"4097 bytes"}},
		{"Commit label over the limit", func() error {
			return sn.Commit(ctx, "new", "active", snapshots.WithLabels(over))
		}, []string{"4097 bytes"}},
		{"Update label over the limit", func() error {
			_, err := sn.Update(ctx, snapshots.Info{Name: "base", Labels: over}, "labels.containerd.io/snapshot/size-test")
			return err
		}, []string{"4097 bytes"}},
		{"Update all labels over the limit", func() error {
			_, err := sn.Update(ctx, snapshots.Info{Name: "active", Labels: over})
			return err
		}, []string{"4097 bytes"}},
		{"Prepare empty label key", func() error {
			_, err := sn.Prepare(ctx, "new", "base", snapshots.WithLabels(emptyKey))
			return err
		}, []string{"label key must not be empty"}},
		{"Commit empty label key", func() error {
			return sn.Commit(ctx, "new", "active", snapshots.WithLabels(emptyKey))
		}, []string{"label key must not be empty"}},
		{"Update empty label key", func() error {
			_, err := sn.Update(ctx, snapshots.Info{Name: "base", Labels: emptyKey}, "labels")
			return err
		}, []string{"label key must not be empty"}},
		{"Prepare label key not UTF-8", func() error {
			_, err := sn.Prepare(ctx, "new", "base", snapshots.WithLabels(badKey))
			return err
		}, []string{"label key", "not valid UTF-8"}},
		{"View label value not UTF-8", func() error {
			_, err := sn.View(ctx, "new", "base", snapshots.WithLabels(badValue))
			return err
		}, []string{"bad-value", "not valid UTF-8"}},
		{"Commit label key not UTF-8", func() error {
			return sn.Commit(ctx, "new", "active", snapshots.WithLabels(badKey))
		}, []string{"not valid UTF-8"}},
		{"Update label value not UTF-8", func() error {
			_, err := sn.Update(ctx, snapshots.Info{Name: "view", Labels: badValue}, "labels.containerd.io/snapshot/bad-value")
			return err
		}, []string{"not valid UTF-8"}},
		{"Prepare empty key", func() error {
			_, err := sn.Prepare(ctx, "", "base")
			return err
		}, []string{"key must not be empty"}},
		{"View empty key", func() error {
			_, err := sn.View(ctx, "", "base")
			return err
		}, []string{"key must not be empty"}},
		{"Prepare key not UTF-8", func() error {
			_, err := sn.Prepare(ctx, "new\xff", "base")
			return err
		}, []string{"key", "not valid UTF-8"}},
		{"Prepare key over the limit", func() error {
			_, err := sn.Prepare(ctx, long, "base")
			return err
		}, []string{"4097 bytes long", "limit of 4096"}},
		{"View key of 40000 bytes", func() error {
			_, err := sn.View(ctx, huge, "")
			return err
		}, []string{"40000 bytes long"}},
		{"Commit empty name", func() error {
			return sn.Commit(ctx, "", "active")
		}, []string{"name must not be empty"}},
		{"Commit name not UTF-8", func() error {
			return sn.Commit(ctx, "\xc0\xaf", "active")
		}, []string{"name", "not valid UTF-8"}},
		{"Commit name over the limit", func() error {
			return sn.Commit(ctx, long, "active")
		}, []string{"name is 4097 bytes long"}},
		{"Commit empty key", func() error {
			return sn.Commit(ctx, "new", "")
		}, []string{"key must not be empty"}},
		{"Stat empty key", func() error {
			_, err := sn.Stat(ctx, "")
			return err
		}, []string{"key must not be empty"}},
		{"Mounts empty key", func() error {
			_, err := sn.Mounts(ctx, "")
			return err
		}, []string{"key must not be empty"}},
		{"Usage empty key", func() error {
			_, err := sn.Usage(ctx, "")
			return err
		}, []string{"key must not be empty"}},
		{"Update empty name", func() error {
			_, err := sn.Update(ctx, snapshots.Info{Labels: map[string]string{"containerd.io/snapshot/a": "b"}})
			return err
		}, []string{"name must not be empty"}},
		{"Remove empty key", func() error {
			return sn.Remove(ctx, "")
		}, []string{"key must not be empty"}},
	}
	for _, f := range []string{
		`labels."unterminated`,
		`name==`,
		`name~=[`,
		`,`,
		`labels.a==b,`,
		`kind=="active"||`,
		// Looks like a name-index lookup, but the quote is escaped.
		`labels."` + name + `\"`,
	} {
		cases = append(cases, struct {
			name string
			call func() error
			want []string
		}{"Walk filter " + f, func() error {
			return sn.Walk(ctx, func(context.Context, snapshots.Info) error {
				t.Errorf("filter %q matched", f)
				return nil
			}, f)
		}, []string{"walk snapshots"}})
	}

	before := snapshotState(t, ctx, sn, root)
	for _, c := range cases {
		err := c.call()
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", c.name, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: message %q does not say %q", c.name, err, w)
			}
		}
		if after := snapshotState(t, ctx, sn, root); !reflect.DeepEqual(before, after) {
			t.Fatalf("%s changed the store:\nbefore %+v\nafter  %+v", c.name, before, after)
		}
	}

	// At the limits everything passes.
	at := labelOfSize(4096)
	atKey := strings.Repeat("k", snapshotter.MaxKeyLen)
	if _, err := sn.Prepare(ctx, atKey, "base", snapshots.WithLabels(at)); err != nil {
		t.Fatalf("Prepare at the limits: %v", err)
	}
	if _, err := sn.View(ctx, "view at the limit", "base", snapshots.WithLabels(at)); err != nil {
		t.Fatalf("View at the limit: %v", err)
	}
	nameAt := strings.Repeat("n", snapshotter.MaxKeyLen)
	if err := sn.Commit(ctx, nameAt, atKey, snapshots.WithLabels(at)); err != nil {
		t.Fatalf("Commit at the limits: %v", err)
	}
	info, err := sn.Update(ctx, snapshots.Info{Name: "active", Labels: at}, "labels")
	if err != nil || !reflect.DeepEqual(info.Labels, at) {
		t.Fatalf("Update at the limit: %v %v", info.Labels, err)
	}
	if info, err := sn.Stat(ctx, nameAt); err != nil || !reflect.DeepEqual(info.Labels, at) {
		t.Fatalf("Stat of the snapshot committed at the limits: %+v %v", info, err)
	}
	for _, k := range []string{nameAt, "view at the limit"} {
		if err := sn.Remove(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// Keys that exist cannot be mistaken for bad ones: a long key that does
	// not exist is simply not found.
	if _, err := sn.Stat(ctx, huge); !errdefs.IsNotFound(err) {
		t.Errorf("Stat of an unknown 40000-byte key: %v", err)
	}
}
