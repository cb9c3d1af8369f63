package daemon_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	diffproxy "github.com/containerd/containerd/v2/core/diff/proxy"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// gzTar is a gzip layer holding one file.
func gzTar(t *testing.T, name, body string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(body))
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// TestSeparateImageStore: with image_store set, containerd (its own
// metadata store, in-process, over the socket) unpacks layers, through
// the daemon's diff service, into the image store with their blobs, and
// its containers' snapshots go to the root on mirrors of those layers;
// the root's snapshots keep the image store's layers from being removed;
// containerd's GC empties both.
func TestSeparateImageStore(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	dir := t.TempDir()
	root, imgRoot := filepath.Join(dir, "root"), filepath.Join(dir, "images")
	s, err := serve(ctx, root, func(c *config.Config) { c.ImageStore = imgRoot })
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	conn, err := grpc.NewClient("unix://"+s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	applier := diffproxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(diff.Applier)
	bdb, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	db := metadata.NewDB(bdb, s.client.Content, map[string]snapshots.Snapshotter{"cs": s.client.Snapshotter})
	if err := db.Init(ctx); err != nil {
		t.Fatal(err)
	}
	sn, cs := db.Snapshotter("cs"), db.ContentStore()

	// Unpack two layers as containerd's unpacker does.
	parent := ""
	var chain []string
	for i, name := range []string{"one", "two"} {
		blob := gzTar(t, name, name)
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		if err := content.WriteBlob(ctx, cs, "layer-"+name, bytes.NewReader(blob), desc); err != nil {
			t.Fatal(err)
		}
		ref := "sha256:" + strings.Repeat(string(rune('a'+i)), 64)
		key := "extract-" + name
		mounts, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(map[string]string{"containerd.io/snapshot.ref": ref}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := applier.Apply(ctx, desc, mounts); err != nil {
			t.Fatalf("apply layer %s: %v", name, err)
		}
		if err := sn.Commit(ctx, ref, key); err != nil {
			t.Fatal(err)
		}
		parent = ref
		chain = append(chain, ref)
	}
	count := func(dir string) int {
		entries, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
		return len(entries)
	}
	if n := count(imgRoot); n != 2 {
		t.Errorf("the image store holds %d snapshots, want the 2 layers", n)
	}
	if n := count(root); n != 0 {
		t.Errorf("the root holds %d snapshots before any container", n)
	}
	blobs, _ := os.ReadDir(filepath.Join(imgRoot, "content", "blobs", "sha256"))
	if len(blobs) < 2 {
		t.Errorf("the image store holds %d blobs, want the layers'", len(blobs))
	}

	// A container on them: in the root, seeing both layers.
	target := mountContainer(t, ctx, sn, "container", parent, "one", "two")
	os.WriteFile(filepath.Join(target, "written"), []byte("w"), 0o644)
	if err := mount.UnmountAll(target, 0); err != nil {
		t.Fatal(err)
	}
	if n := count(root); n != 3 {
		t.Errorf("the root holds %d snapshots, want the container's and 2 mirrors", n)
	}
	if _, err := sn.View(ctx, "view", chain[0]); err != nil {
		t.Errorf("view of the first layer: %v", err)
	}

	// The image store's layers cannot go while the root stacks on them.
	var layerKey string
	s.client.Snapshotter.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasSuffix(info.Name, "/"+chain[1]) {
			layerKey = info.Name
		}
		return nil
	})
	if err := s.client.Snapshotter.Remove(ctx, layerKey); err == nil || !errdefs.IsFailedPrecondition(err) {
		t.Errorf("removing a layer a container stacks on: %v, want FailedPrecondition", err)
	}

	// containerd's GC takes everything once nothing is referenced.
	for _, k := range []string{"container", "view"} {
		if err := sn.Remove(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range chain {
		if err := sn.Remove(ctx, c); err != nil && !errdefs.IsFailedPrecondition(err) {
			t.Fatal(err)
		}
	}
	if _, err := db.GarbageCollect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Stat(ctx, chain[0]); !errdefs.IsNotFound(err) {
		t.Errorf("layer after containerd's GC: %v", err)
	}
	if n := count(root) + count(imgRoot); n != 0 {
		var left []string
		s.client.Snapshotter.Walk(namespaces.WithNamespace(context.Background(), "x"), func(_ context.Context, info snapshots.Info) error {
			left = append(left, info.Name+" "+info.Kind.String())
			return nil
		})
		t.Errorf("after containerd's GC the roots hold %d snapshots: %v", n, left)
	}
}

// TestBadSeparateImageStore: an image store that cannot be made, or that
// another daemon holds, fails the start naming it, and the root is as it
// was.
func TestBadSeparateImageStore(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	s, err := serve(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.client.Snapshotter.Prepare(ctx, "kept", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	other, err := serve(ctx, filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.stop()
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(file, "images"), "not a directory"},
		{filepath.Join(dir, "other"), "in use by"},
	} {
		_, err := serve(ctx, root, func(c *config.Config) { c.ImageStore = tc.path })
		if err == nil || !strings.Contains(err.Error(), "image store "+tc.path+" (image_store)") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("image store %s: %v", tc.path, err)
		}
	}
	s, err = serve(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	if _, err := s.client.Snapshotter.Stat(ctx, "kept"); err != nil {
		t.Errorf("after the failed starts: %v", err)
	}
}

// containerdOn is containerd's metadata store (its database in dir) on
// the daemon s, with the diff service as containerd's unpacker calls it.
type containerdOn struct {
	sn      snapshots.Snapshotter
	cs      content.Store
	applier diff.Applier
	close   func()
}

func newContainerdOn(t *testing.T, ctx context.Context, s *served, dir string) *containerdOn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db := metadata.NewDB(bdb, s.client.Content, map[string]snapshots.Snapshotter{"cs": s.client.Snapshotter})
	if err := db.Init(ctx); err != nil {
		t.Fatal(err)
	}
	return &containerdOn{
		sn: db.Snapshotter("cs"), cs: db.ContentStore(),
		applier: diffproxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(diff.Applier),
		close:   func() { bdb.Close(); conn.Close() },
	}
}

// unpack unpacks a one-file layer on parent as containerd's unpacker does,
// and returns its chain key.
func (c *containerdOn) unpack(t *testing.T, ctx context.Context, name, parent string) string {
	t.Helper()
	blob := gzTar(t, name, name)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	if err := content.WriteBlob(ctx, c.cs, "layer-"+name, bytes.NewReader(blob), desc); err != nil {
		t.Fatal(err)
	}
	ref := digest.FromString(parent + "/" + name).String()
	key := "extract-" + name
	mounts, err := c.sn.Prepare(ctx, key, parent, snapshots.WithLabels(map[string]string{"containerd.io/snapshot.ref": ref}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.applier.Apply(ctx, desc, mounts); err != nil {
		t.Fatalf("apply layer %s: %v", name, err)
	}
	if err := c.sn.Commit(ctx, ref, key); err != nil {
		t.Fatal(err)
	}
	return ref
}

// A layer unpacked into the root while image_store is set (here: on a
// layer the root had before) keeps its tar-split in the root, where the
// root's start looks for the tar-splits of its snapshots: after restarts
// every tar-split a snapshot of either root names is still there.
func TestImageStoreRootLayersKeepTarSplits(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	dir := t.TempDir()
	root, imgRoot := filepath.Join(dir, "root"), filepath.Join(dir, "images")
	withImages := func(c *config.Config) { c.ImageStore = imgRoot }

	s, err := serve(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	c := newContainerdOn(t, ctx, s, dir)
	one := c.unpack(t, ctx, "one", "")
	c.close()
	s.stop()

	if s, err = serve(ctx, root, withImages); err != nil {
		t.Fatal(err)
	}
	c = newContainerdOn(t, ctx, s, dir)
	c.unpack(t, ctx, "two", one) // on the root's layer: in the root
	c.unpack(t, ctx, "three", "")
	c.close()
	s.stop()

	for range 2 {
		if s, err = serve(ctx, root, withImages); err != nil {
			t.Fatal(err)
		}
		tarSplits := 0
		if err := s.client.Snapshotter.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
			d := info.Labels[cslabels.TarSplit]
			if d == "" {
				return nil
			}
			tarSplits++
			if _, err := s.client.Content.Info(ctx, digest.Digest(d)); err != nil {
				t.Errorf("tar-split %s of snapshot %s: %v", d, info.Name, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if tarSplits != 3 {
			t.Errorf("%d snapshots name a tar-split, want the 3 layers", tarSplits)
		}
		s.stop()
	}
	if n := len(mustReadDir(t, filepath.Join(root, "snapshots"))); n != 2 {
		t.Errorf("the root holds %d snapshots, want layers one and two", n)
	}
}

// Containers started at once on an image store's layer, again and again
// (each round's removal prunes the mirrors), all get made: the mirrors'
// makers do not trip over each other.
func TestImageStoreConcurrentContainers(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	dir := t.TempDir()
	s, err := serve(ctx, filepath.Join(dir, "root"), func(c *config.Config) { c.ImageStore = filepath.Join(dir, "images") })
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	c := newContainerdOn(t, ctx, s, dir)
	defer c.close()
	top := c.unpack(t, ctx, "two", c.unpack(t, ctx, "one", ""))
	for round := range 10 {
		const n = 4
		errs := make(chan error, n)
		for i := range n {
			go func() {
				_, err := c.sn.Prepare(ctx, fmt.Sprintf("ctr-%d-%d", round, i), top)
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		for i := range n {
			if err := c.sn.Remove(ctx, fmt.Sprintf("ctr-%d-%d", round, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func mustReadDir(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}
