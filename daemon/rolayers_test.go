package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	bolt "go.etcd.io/bbolt"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// seedLayers makes a two-layer chain in the root a daemon serves, as the
// store or the diff service would (diff IDs recorded), and returns the
// layers' chain IDs.
func seedLayers(t *testing.T, ctx context.Context, addr string) []digest.Digest {
	t.Helper()
	c, err := daemon.DialStore(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	diffIDs := []digest.Digest{digest.FromString("layer one"), digest.FromString("layer two")}
	parent := ""
	for i, name := range []string{"one", "two"} {
		key := "seed-" + name
		mounts, err := c.Snapshotter.Prepare(ctx, key+"-active", parent)
		if err != nil {
			t.Fatal(err)
		}
		dir := mounts[0].Source
		for _, o := range mounts[0].Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				dir = v
			}
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		labels := map[string]string{cslabels.UncompressedDigest: diffIDs[i].String()}
		if err := c.Snapshotter.Commit(ctx, key, key+"-active", snapshots.WithLabels(labels)); err != nil {
			t.Fatal(err)
		}
		parent = key
	}
	return identity.ChainIDs(diffIDs)
}

// mountContainer prepares snapshot key on parent, mounts it on a fresh
// directory, checks that each of files holds its own name, and returns the
// directory.
func mountContainer(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, key, parent string, files ...string) string {
	t.Helper()
	mounts, err := sn.Prepare(ctx, key, parent)
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if err := mount.All(mounts, target); err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if b, err := os.ReadFile(filepath.Join(target, name)); err != nil || string(b) != name {
			t.Errorf("container sees %s: %q, %v", name, b, err)
		}
	}
	return target
}

// serveWith serves root with the additional image stores given.
func serveWith(t *testing.T, ctx context.Context, root string, stores ...string) *served {
	t.Helper()
	s, err := serve(ctx, root, func(c *config.Config) { c.AdditionalImageStores = stores })
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestReadOnlyStoreLayersForContainerd: containerd (its own metadata
// snapshotter, as it runs in containerd, over the socket) unpacking an
// image whose layers a read-only image store holds gets them at once as
// committed snapshots, runs a container on them in the writable root, and
// its garbage collector removes the mirrors afterwards; the read-only
// store is never written. Read directly and through the daemon serving it.
func TestReadOnlyStoreLayersForContainerd(t *testing.T) {
	requireRoot(t)
	for _, via := range []string{"direct", "daemon"} {
		t.Run(via, func(t *testing.T) {
			ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
			roRoot := filepath.Join(t.TempDir(), "shared")
			seed, err := serve(ctx, roRoot)
			if err != nil {
				t.Fatal(err)
			}
			chain := seedLayers(t, ctx, seed.addr)
			if via == "direct" {
				if err := seed.stop(); err != nil {
					t.Fatal(err)
				}
			} else {
				defer seed.stop()
			}
			before := treeOf(t, filepath.Join(roRoot, "snapshots"))

			// Named unclean: the daemon uses, and its lock records, the
			// clean path, which is what stores opening the node compare.
			node := filepath.Join(t.TempDir(), "node")
			s := serveWith(t, ctx, node, roRoot+"//.")
			defer s.stop()
			var h daemon.Holder
			if data, err := os.ReadFile(filepath.Join(node, "lock")); err != nil || json.Unmarshal(data, &h) != nil || !slices.Equal(h.ImageStores, []string{roRoot}) {
				t.Errorf("the lock records image stores %q (%v), want [%s]", h.ImageStores, err, roRoot)
			}
			bdb, err := bolt.Open(filepath.Join(t.TempDir(), "meta.db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer bdb.Close()
			db := metadata.NewDB(bdb, s.client.Content, map[string]snapshots.Snapshotter{"cs": s.client.Snapshotter})
			if err := db.Init(ctx); err != nil {
				t.Fatal(err)
			}
			sn := db.Snapshotter("cs")

			// The unpacker's calls, layer by layer.
			parent := ""
			for i, c := range chain {
				ref := snapshots.WithLabels(map[string]string{"containerd.io/snapshot.ref": c.String()})
				_, err := sn.Prepare(ctx, "extract-"+c.Encoded(), parent, ref)
				if !errdefs.IsAlreadyExists(err) {
					t.Fatalf("layer %d: Prepare: %v, want AlreadyExists", i, err)
				}
				info, err := sn.Stat(ctx, c.String())
				if err != nil || info.Kind != snapshots.KindCommitted || info.Parent != parent ||
					info.Labels[cslabels.ReadOnlyStore] != roRoot || info.Labels[cslabels.Incomplete] != "" {
					t.Fatalf("layer %d: Stat(%s): %+v, %v", i, c, info, err)
				}
				parent = c.String()
			}
			target := mountContainer(t, ctx, sn, "container", parent, "one", "two")
			if err := os.WriteFile(filepath.Join(target, "three"), []byte("3"), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Remove(filepath.Join(target, "one"))
			if err := mount.UnmountAll(target, 0); err != nil {
				t.Fatal(err)
			}

			// A chain ID no store has is prepared as usual.
			other := digest.FromString("not there")
			if _, err := sn.Prepare(ctx, "extract-other", "", snapshots.WithLabels(map[string]string{"containerd.io/snapshot.ref": other.String()})); err != nil {
				t.Errorf("Prepare of a layer no store has: %v", err)
			}

			// containerd's GC removes what nothing references: the
			// mirrors go (the links only).
			for _, k := range []string{"container", "extract-other"} {
				if err := sn.Remove(ctx, k); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := db.GarbageCollect(ctx); err != nil {
				t.Fatal(err)
			}
			var left []string
			s.client.Snapshotter.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
				left = append(left, info.Name)
				return nil
			})
			if len(left) != 0 {
				t.Errorf("after containerd's GC the node's root still has %v", left)
			}
			if after := treeOf(t, filepath.Join(roRoot, "snapshots")); after != before {
				t.Errorf("the read-only store changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// treeOf lists every path under dir with its size.
func treeOf(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		b.WriteString(strings.TrimPrefix(p, dir) + " " + fi.Mode().String() + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestBadImageStore: a read-only image store that is not a root fails the
// daemon's start naming it, and the root is as it was: the daemon starts
// on it without the store and has its snapshots.
func TestBadImageStore(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	root := t.TempDir()
	s := serveWith(t, ctx, root)
	if _, err := s.client.Snapshotter.Prepare(ctx, "kept", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	for _, bad := range []string{filepath.Join(t.TempDir(), "missing"), t.TempDir(), file} {
		_, err := serve(ctx, root, func(c *config.Config) { c.AdditionalImageStores = []string{bad} })
		if err == nil || !strings.Contains(err.Error(), "additional image store "+bad+" (additional_image_stores)") ||
			!strings.Contains(err.Error(), "not a cs-snapshotter root") {
			t.Errorf("store %s: %v, want an error naming it", bad, err)
		}
		if err == nil {
			continue
		}
		var inUse *daemon.InUseError
		if errors.As(err, &inUse) {
			t.Fatalf("the failed start kept the root: %v", err)
		}
	}
	s = serveWith(t, ctx, root)
	defer s.stop()
	if _, err := s.client.Snapshotter.Stat(ctx, "kept"); err != nil {
		t.Errorf("after the failed starts: %v", err)
	}
}

// TestImageStoreFollowsItsDaemon: a read-only image store read through the
// daemon serving it is read directly once that daemon stops, and through
// it again once it is back, each time with no call failing.
func TestImageStoreFollowsItsDaemon(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	roRoot := filepath.Join(t.TempDir(), "shared")
	seed, err := serve(ctx, roRoot)
	if err != nil {
		t.Fatal(err)
	}
	seedLayers(t, ctx, seed.addr)
	is, err := daemon.OpenImageStore(ctx, roRoot, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	sctx := snapshotter.WithStoreCaller(ctx)
	check := func(want string) {
		t.Helper()
		if _, err := is.Snapshotter.Stat(sctx, "seed-two"); err != nil {
			t.Fatalf("Stat read %s: %v", want, err)
		}
		if _, err := is.Content.Info(sctx, digest.FromString("none")); !errdefs.IsNotFound(err) {
			t.Fatalf("Info of a missing blob read %s: %v, want NotFound", want, err)
		}
		if via := is.Via(); !strings.HasPrefix(via, want) {
			t.Fatalf("read %s, want %s", via, want)
		}
	}
	check("daemon " + seed.addr)
	if err := seed.stop(); err != nil {
		t.Fatal(err)
	}
	check("direct")
	if seed, err = serve(ctx, roRoot); err != nil {
		t.Fatal(err)
	}
	defer seed.stop()
	check("daemon " + seed.addr)
}

// TestImageStoreNotOverlayLower: a read-only image store on a file system
// that cannot be an overlay lower layer (here an overlay mount on an
// overlay mount: one more would pass the kernel's stacking limit) is
// refused when opened, naming the path, and the daemon's start with it
// fails leaving its root as it was.
func TestImageStoreNotOverlayLower(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	src := filepath.Join(t.TempDir(), "shared")
	seed, err := serve(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	seedLayers(t, ctx, seed.addr)
	if err := seed.stop(); err != nil {
		t.Fatal(err)
	}

	// Two stacked overlay mounts.
	base := t.TempDir()
	dirs := func(names ...string) []string {
		var out []string
		for _, n := range names {
			d := filepath.Join(base, n)
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			out = append(out, d)
		}
		return out
	}
	d := dirs("l1", "u1", "w1", "m1", "u2", "w2", "m2")
	mountOverlay := func(lower, upper, work, target string) {
		t.Helper()
		m := mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work}}
		if err := m.Mount(target); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mount.UnmountAll(target, 0) })
	}
	mountOverlay(d[0], d[1], d[2], d[3])
	if err := os.Mkdir(filepath.Join(d[3], "lower"), 0o755); err != nil {
		t.Fatal(err)
	}
	mountOverlay(filepath.Join(d[3], "lower"), d[4], d[5], d[6])
	stacked := filepath.Join(d[6], "shared")
	if out, err := exec.Command("cp", "-a", src, stacked).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}

	if is, err := daemon.OpenImageStore(ctx, stacked, nil, 0); err == nil {
		is.Close()
		t.Fatal("a store two overlays deep was taken")
	} else if !strings.Contains(err.Error(), stacked+"/snapshots cannot be an overlay lower layer") {
		t.Errorf("error %v, want one naming %s", err, stacked)
	}
	root := t.TempDir()
	if _, err := serve(ctx, root, func(c *config.Config) { c.AdditionalImageStores = []string{stacked} }); err == nil ||
		!strings.Contains(err.Error(), "additional image store "+stacked+" (additional_image_stores)") {
		t.Errorf("start with it: %v", err)
	}
	// The store itself is fine elsewhere.
	is, err := daemon.OpenImageStore(ctx, src, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	is.Close()
	s := serveWith(t, ctx, root)
	defer s.stop()
}
