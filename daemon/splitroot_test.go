package daemon_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
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
	mounts, err := sn.Prepare(ctx, "container", parent)
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if err := mount.All(mounts, target); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"one", "two"} {
		if b, err := os.ReadFile(filepath.Join(target, name)); err != nil || string(b) != name {
			t.Errorf("container sees %s: %q, %v", name, b, err)
		}
	}
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
