package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

func forEachSubject(t *testing.T, fn func(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, p string)) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	s, err := serve(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	t.Run("inproc", func(t *testing.T) { fn(t, ctx, s.d.Snapshotter(), "inproc-") })
	t.Run("socket", func(t *testing.T) { fn(t, ctx, s.client.Snapshotter, "socket-") })
}

func named(kind cslabels.Kind, names ...string) snapshots.Opt {
	l := map[string]string{}
	for i, n := range names {
		l[cslabels.NameKey(kind, n)] = fmt.Sprint(i)
	}
	return snapshots.WithLabels(l)
}

// TestUniqueNames: a name of a kind belongs to one snapshot at a time,
// across Prepare, Commit, Update and Remove; refusals change nothing.
func TestUniqueNames(t *testing.T) {
	forEachSubject(t, func(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, p string) {
		name := p + "web"
		if _, err := sn.Prepare(ctx, p+"a-active", "", named(cslabels.Layer, name)); err != nil {
			t.Fatal(err)
		}
		before := inventory(ctx, t, sn)
		_, err := sn.Prepare(ctx, p+"b-active", "", named(cslabels.Layer, name))
		if !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), p+"a-active") {
			t.Fatalf("second claim of %q: %v", name, err)
		}
		// The same name as another kind is fine.
		if _, err := sn.Prepare(ctx, p+"c-active", "", named(cslabels.Container, name)); err != nil {
			t.Fatalf("same name, other kind: %v", err)
		}
		if err := sn.Remove(ctx, p+"c-active"); err != nil {
			t.Fatal(err)
		}
		if after := inventory(ctx, t, sn); len(after) != len(before) {
			t.Fatalf("refused prepare changed the store: %v", after)
		}

		// Commit hands the name to the committed snapshot.
		if err := sn.Commit(ctx, p+"a", p+"a-active", named(cslabels.Layer, name)); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, p+"x", p+"missing", named(cslabels.Layer, name)); !errdefs.IsNotFound(err) {
			t.Fatalf("commit of unknown: %v", err)
		}
		if _, err := sn.Prepare(ctx, p+"b-active", p+"a"); err != nil {
			t.Fatal(err)
		}
		err = sn.Commit(ctx, p+"b", p+"b-active", named(cslabels.Layer, name))
		if !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), p+"a\"") {
			t.Fatalf("commit claiming a held name: %v", err)
		}
		if _, err := sn.Stat(ctx, p+"b-active"); err != nil {
			t.Fatalf("refused commit lost the active snapshot: %v", err)
		}

		// Update: claiming a held name is refused and changes nothing.
		_, err = sn.Update(ctx, snapshots.Info{Name: p + "b-active", Labels: map[string]string{cslabels.NameKey(cslabels.Layer, name): "0"}},
			"labels."+cslabels.NameKey(cslabels.Layer, name))
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("update claiming a held name: %v", err)
		}
		if info, _ := sn.Stat(ctx, p+"b-active"); len(info.Labels) != 0 {
			t.Errorf("refused update left labels %v", info.Labels)
		}
		// Dropping the name from a frees it.
		if _, err := sn.Update(ctx, snapshots.Info{Name: p + "a"}, "labels."+cslabels.NameKey(cslabels.Layer, name)); err != nil {
			t.Fatal(err)
		}
		if _, err := sn.Update(ctx, snapshots.Info{Name: p + "b-active", Labels: map[string]string{cslabels.NameKey(cslabels.Layer, name): "0"}},
			"labels."+cslabels.NameKey(cslabels.Layer, name)); err != nil {
			t.Fatalf("claim of a released name: %v", err)
		}
		// Remove frees the names of the removed snapshot.
		if err := sn.Remove(ctx, p+"b-active"); err != nil {
			t.Fatal(err)
		}
		if _, err := sn.Update(ctx, snapshots.Info{Name: p + "a", Labels: map[string]string{cslabels.NameKey(cslabels.Layer, name): "0"}}); err != nil {
			t.Fatalf("claim after remove: %v", err)
		}
	})
}

// TestNameRace: many clients claim one name at once; exactly one wins.
func TestNameRace(t *testing.T) {
	forEachSubject(t, func(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, p string) {
		const clients = 16
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			wins []int
			errs []error
		)
		for i := 0; i < clients; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				_, err := sn.Prepare(ctx, fmt.Sprintf("%srace-%d", p, i), "", named(cslabels.Layer, p+"prize"))
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					wins = append(wins, i)
				} else if !errdefs.IsAlreadyExists(err) {
					errs = append(errs, err)
				}
			}(i)
		}
		wg.Wait()
		if len(wins) != 1 || len(errs) != 0 {
			t.Fatalf("winners %v, unexpected errors %v", wins, errs)
		}
		holders := 0
		for _, r := range inventory(ctx, t, sn) {
			if _, ok := r.Labels[cslabels.NameKey(cslabels.Layer, p+"prize")]; ok {
				holders++
			}
		}
		if holders != 1 {
			t.Errorf("%d snapshots hold the name", holders)
		}
	})
}

// TestOwnedSnapshot: a snapshot the store holds is hidden from and kept
// from everyone else, containerd's garbage collector above all; the
// store's own calls list and remove it.
func TestOwnedSnapshot(t *testing.T) {
	forEachSubject(t, func(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, p string) {
		key := p + "owned"
		if _, err := sn.Prepare(ctx, key+"-active", ""); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, key, key+"-active", snapshots.WithLabels(map[string]string{cslabels.Owned: "store"})); err != nil {
			t.Fatal(err)
		}
		err := sn.Remove(ctx, key)
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), key) {
			t.Fatalf("remove of an owned snapshot: %v", err)
		}
		if _, err := sn.Stat(ctx, key); err != nil {
			t.Fatalf("owned snapshot gone after a refused remove: %v", err)
		}
		if _, ok := inventory(ctx, t, sn)[key]; ok {
			t.Errorf("Walk lists the owned snapshot %s to a caller other than the store", key)
		}
		store := daemon.AsStore(snapshotter.WithStoreCaller(ctx))
		if _, ok := inventory(store, t, sn)[key]; !ok {
			t.Errorf("Walk hides the owned snapshot %s from the store", key)
		}
		if err := sn.Remove(store, key); err != nil {
			t.Fatalf("remove by the store: %v", err)
		}
		if _, err := sn.Stat(ctx, key); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("stat after remove: %v", err)
		}
	})
}

// TestRebaseOverSocket: Commit's parent reaches the snapshotter through
// the socket (containerd's parallel unpack depends on it).
func TestRebaseOverSocket(t *testing.T) {
	forEachSubject(t, func(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, p string) {
		if _, err := sn.Prepare(ctx, p+"base-a", ""); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, p+"base", p+"base-a"); err != nil {
			t.Fatal(err)
		}
		if _, err := sn.Prepare(ctx, p+"top-a", ""); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, p+"top", p+"top-a", snapshots.WithParent(p+"base"), snapshots.WithLabels(map[string]string{"l": "v"})); err != nil {
			t.Fatal(err)
		}
		info, err := sn.Stat(ctx, p+"top")
		if err != nil || info.Parent != p+"base" || info.Labels["l"] != "v" {
			t.Fatalf("after commit with a parent: %+v %v", info, err)
		}
	})
}
