package differ_test

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/differ"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

type env struct {
	ctx  context.Context
	sn   *snapshotter.Snapshotter
	cs   *contentstore.Store
	db   *metadata.DB
	root string
	diff *differ.Service
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvLimited(t, 0)
}

func newEnvLimited(t *testing.T, maxLayerSize int64) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the differ writes overlay whiteouts and must run as root")
	}
	root := t.TempDir()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	db, err := metadata.Open(ctx, filepath.Join(root, metadata.FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cs, err := contentstore.New(filepath.Join(root, "content"), db)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{ctx: ctx, cs: cs, db: db, root: root}
	e.sn, err = snapshotter.New(ctx, root, db, snapshotter.Options{
		Removed: func(ctx context.Context, id string, l map[string]string) { e.diff.Released(ctx, id, l) },
	})
	if err != nil {
		t.Fatal(err)
	}
	e.diff = differ.New(e.sn, cs, db, maxLayerSize)
	return e
}

func layerBlob(t *testing.T, files map[string]string) (blob []byte, tarball []byte) {
	t.Helper()
	var entries []tarEntry
	for name, body := range files {
		entries = append(entries, tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}, body: body})
	}
	return gzipTar(t, entries)
}

func (e *env) store(t *testing.T, blob []byte) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	if err := content.WriteBlob(e.ctx, e.cs, "pull-"+desc.Digest.Encoded(), bytes.NewReader(blob), desc); err != nil {
		t.Fatal(err)
	}
	return desc
}

func apiMounts(mounts []mount.Mount) []*types.Mount {
	var out []*types.Mount
	for _, m := range mounts {
		out = append(out, &types.Mount{Type: m.Type, Source: m.Source, Options: m.Options})
	}
	return out
}

func apiDesc(d ocispec.Descriptor) *types.Descriptor {
	return &types.Descriptor{MediaType: d.MediaType, Digest: d.Digest.String(), Size: d.Size}
}

// TestApplyAndCompare: a layer applied by the differ gets its records on
// the committed snapshot; Compare answers with its original blob; removing
// the snapshot releases the tar-split.
func TestApplyAndCompare(t *testing.T) {
	e := newEnv(t)
	blob, tarball := layerBlob(t, map[string]string{"etc/hello": "hello"})
	desc := e.store(t, blob)

	mounts, err := e.sn.Prepare(e.ctx, "extract", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.diff.Apply(e.ctx, &diffapi.ApplyRequest{Diff: apiDesc(desc), Mounts: apiMounts(mounts)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Applied.Digest != digest.FromBytes(tarball).String() || resp.Applied.Size != int64(len(tarball)) {
		t.Errorf("applied %+v, want the diff ID %s", resp.Applied, digest.FromBytes(tarball))
	}
	if got, _ := os.ReadFile(filepath.Join(mounts[0].Source, "etc/hello")); string(got) != "hello" {
		t.Errorf("file not extracted: %q", got)
	}
	if err := e.sn.Commit(e.ctx, "layer", "extract", snapshots.WithLabels(map[string]string{"containerd.io/snapshot.ref": "x"})); err != nil {
		t.Fatal(err)
	}
	info, err := e.sn.Stat(e.ctx, "layer")
	if err != nil {
		t.Fatal(err)
	}
	ts := info.Labels[cslabels.TarSplit]
	if ts == "" || info.Labels[cslabels.CompressedDigest] != desc.Digest.String() || info.Labels["containerd.io/snapshot.ref"] != "x" {
		t.Fatalf("committed labels %v", info.Labels)
	}

	view, err := e.sn.View(e.ctx, "view", "layer")
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.diff.Diff(e.ctx, &diffapi.DiffRequest{Right: apiMounts(view), MediaType: ocispec.MediaTypeImageLayerGzip})
	if err != nil {
		t.Fatal(err)
	}
	if d.Diff.Digest != desc.Digest.String() {
		t.Errorf("compare gave %s, want the original blob %s", d.Diff.Digest, desc.Digest)
	}
	// An active snapshot's changes are containerd's differ's to compute.
	active, err := e.sn.Prepare(e.ctx, "container", "layer")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.diff.Diff(e.ctx, &diffapi.DiffRequest{Left: apiMounts(view), Right: apiMounts(active)}); !errdefs.IsNotImplemented(errgrpc.ToNative(err)) {
		t.Errorf("compare of an active snapshot: %v", err)
	}
	for _, key := range []string{"container", "view", "layer"} {
		if err := e.sn.Remove(e.ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.cs.Info(e.ctx, digest.Digest(ts)); !errdefs.IsNotFound(err) {
		t.Errorf("tar-split outlived its snapshot: %v", err)
	}
}

// TestApplyRefusals: what the differ does not do answers NotImplemented (the
// diff service then asks containerd's own); a blob that is not what its
// descriptor says is refused; nothing is recorded either way.
func TestApplyRefusals(t *testing.T) {
	e := newEnv(t)
	blob, _ := layerBlob(t, map[string]string{"a": "a"})
	desc := e.store(t, blob)
	mounts, err := e.sn.Prepare(e.ctx, "extract", "")
	if err != nil {
		t.Fatal(err)
	}
	wrong := desc
	wrong.Digest = digest.FromString("other")
	encrypted := desc
	encrypted.MediaType = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
	for name, c := range map[string]struct {
		req  *diffapi.ApplyRequest
		want func(error) bool
	}{
		"encrypted": {&diffapi.ApplyRequest{Diff: apiDesc(encrypted), Mounts: apiMounts(mounts)}, errdefs.IsNotImplemented},
		"not ours":  {&diffapi.ApplyRequest{Diff: apiDesc(desc), Mounts: []*types.Mount{{Type: "bind", Source: t.TempDir()}}}, errdefs.IsNotImplemented},
		"tmpfs":     {&diffapi.ApplyRequest{Diff: apiDesc(desc), Mounts: []*types.Mount{{Type: "tmpfs", Source: "none"}}}, errdefs.IsNotImplemented},
		"unknown blob": {&diffapi.ApplyRequest{Diff: apiDesc(wrong), Mounts: apiMounts(mounts)}, func(err error) bool {
			return errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err)
		}},
		"no descriptor": {&diffapi.ApplyRequest{Mounts: apiMounts(mounts)}, errdefs.IsInvalidArgument},
	} {
		_, err := e.diff.Apply(e.ctx, c.req)
		if err = errgrpc.ToNative(err); !c.want(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := e.sn.Commit(e.ctx, "layer", "extract"); err != nil {
		t.Fatal(err)
	}
	info, _ := e.sn.Stat(e.ctx, "layer")
	for k := range info.Labels {
		if strings.HasPrefix(k, cslabels.Prefix) {
			t.Errorf("refused applies left label %s", k)
		}
	}
}

// TestApplyOverLimit: a layer expanding past max_layer_size is refused with
// InvalidArgument naming the limit; the blob stays, the daemon keeps no
// tar-split of it.
func TestApplyOverLimit(t *testing.T) {
	e := newEnvLimited(t, 64<<10)
	blob, _ := layerBlob(t, map[string]string{"big": strings.Repeat("0", 1<<20)})
	desc := e.store(t, blob)
	mounts, err := e.sn.Prepare(e.ctx, "extract", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.diff.Apply(e.ctx, &diffapi.ApplyRequest{Diff: apiDesc(desc), Mounts: apiMounts(mounts)})
	if !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("apply over the limit: %v, want InvalidArgument saying too large", err)
	}
	n := 0
	e.cs.Walk(e.ctx, func(content.Info) error { n++; return nil })
	if n != 1 {
		t.Errorf("%d blobs after the refusal, want the layer's only", n)
	}
	// Within the limit, the same layer applies.
	small, _ := layerBlob(t, map[string]string{"small": "x"})
	if _, err := e.diff.Apply(e.ctx, &diffapi.ApplyRequest{Diff: apiDesc(e.store(t, small)), Mounts: apiMounts(mounts)}); err != nil {
		t.Fatal(err)
	}
}

// TestSharedTarSplit: two snapshots applying the same layer on different
// parents share one tar-split blob, each holding its own reference; the
// blob outlives the first one's removal and goes with the second.
func TestSharedTarSplit(t *testing.T) {
	e := newEnv(t)
	shared, _ := layerBlob(t, map[string]string{"etc/shared": "shared"})
	sharedDesc := e.store(t, shared)
	var tarSplits []string
	for i, base := range []string{"first", "second"} {
		b, _ := layerBlob(t, map[string]string{"etc/" + base: base})
		layers := []ocispec.Descriptor{e.store(t, b), sharedDesc}
		parent := ""
		for j, desc := range layers {
			key := base + "-extract-" + string(rune('0'+j))
			name := base + "-layer-" + string(rune('0'+j))
			mounts, err := e.sn.Prepare(e.ctx, key, parent)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.diff.Apply(e.ctx, &diffapi.ApplyRequest{Diff: apiDesc(desc), Mounts: apiMounts(mounts)}); err != nil {
				t.Fatalf("apply %d of %s: %v", j, base, err)
			}
			if err := e.sn.Commit(e.ctx, name, key); err != nil {
				t.Fatal(err)
			}
			parent = name
		}
		info, err := e.sn.Stat(e.ctx, parent)
		if err != nil {
			t.Fatal(err)
		}
		if info.Labels[cslabels.TarSplit] == "" {
			t.Fatalf("image %d: no tar-split recorded: %v", i, info.Labels)
		}
		tarSplits = append(tarSplits, info.Labels[cslabels.TarSplit])
	}
	if tarSplits[0] != tarSplits[1] {
		t.Fatalf("the same layer has tar-splits %s and %s", tarSplits[0], tarSplits[1])
	}
	ts := digest.Digest(tarSplits[0])
	refs := func() int {
		t.Helper()
		info, err := e.cs.Info(e.ctx, ts)
		if errdefs.IsNotFound(err) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for k := range info.Labels {
			if strings.HasPrefix(k, cslabels.BlobRefPrefix) {
				n++
			}
		}
		return n
	}
	if n := refs(); n != 2 {
		t.Fatalf("shared tar-split has %d references, want 2", n)
	}
	for _, key := range []string{"first-layer-1", "first-layer-0"} {
		if err := e.sn.Remove(e.ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if n := refs(); n != 1 {
		t.Fatalf("after removing the first chain the shared tar-split has %d references, want 1", n)
	}
	// The second chain's layer still diffs back to its original blob.
	lower, err := e.sn.View(e.ctx, "lower", "second-layer-0")
	if err != nil {
		t.Fatal(err)
	}
	view, err := e.sn.View(e.ctx, "view", "second-layer-1")
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.diff.Diff(e.ctx, &diffapi.DiffRequest{Left: apiMounts(lower), Right: apiMounts(view), MediaType: ocispec.MediaTypeImageLayerGzip})
	if err != nil {
		t.Fatal(err)
	}
	if d.Diff.Digest != sharedDesc.Digest.String() {
		t.Errorf("compare gave %s, want %s", d.Diff.Digest, sharedDesc.Digest)
	}
	for _, key := range []string{"view", "lower", "second-layer-1", "second-layer-0"} {
		if err := e.sn.Remove(e.ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.cs.Info(e.ctx, ts); !errdefs.IsNotFound(err) {
		t.Errorf("tar-split outlived both snapshots: %v", err)
	}
}

// cutAfterCommit is a content store whose writers commit and then fail, as
// a daemon killed right after the commit leaves things.
type cutAfterCommit struct{ content.Store }

func (c cutAfterCommit) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	w, err := c.Store.Writer(ctx, opts...)
	return cutWriter{w}, err
}

type cutWriter struct{ content.Writer }

func (w cutWriter) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	if err := w.Writer.Commit(ctx, size, expected, opts...); err != nil {
		return err
	}
	return errdefs.ErrUnavailable
}

// TestApplyCutAfterTarSplit: an Apply cut short once its tar-split blob
// holds the snapshot's reference (the daemon killed there) leaves a record
// naming it, so removing the snapshot releases the blob: none leaks.
func TestApplyCutAfterTarSplit(t *testing.T) {
	e := newEnv(t)
	blob, _ := layerBlob(t, map[string]string{"etc/cut": "cut"})
	desc := e.store(t, blob)
	before := blobCount(t, e)
	cut := differ.New(e.sn, cutAfterCommit{e.cs}, e.db, 0)
	mounts, err := e.sn.Prepare(e.ctx, "extract", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cut.Apply(e.ctx, &diffapi.ApplyRequest{Diff: apiDesc(desc), Mounts: apiMounts(mounts)}); err == nil {
		t.Fatal("Apply whose tar-split commit was cut short succeeded")
	}
	if n := blobCount(t, e); n != before+1 {
		t.Fatalf("%d blobs after the cut Apply, want %d (its tar-split)", n, before+1)
	}
	if err := e.sn.Remove(e.ctx, "extract"); err != nil {
		t.Fatal(err)
	}
	if n := blobCount(t, e); n != before {
		t.Errorf("%d blobs after the snapshot went, want %d: the tar-split leaked", n, before)
	}
}

func blobCount(t *testing.T, e *env) int {
	t.Helper()
	n := 0
	if err := e.cs.Walk(e.ctx, func(content.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestReleaseOrphans: a snapshot removed without Released being called (the
// daemon killed in between) leaves its tar-split's reference; the start-up
// sweep releases it, and keeps the references of snapshots still there.
func TestReleaseOrphans(t *testing.T) {
	e := newEnv(t)
	before := blobCount(t, e)
	for i, name := range []string{"kept", "removed"} {
		blob, _ := layerBlob(t, map[string]string{"etc/" + name: name})
		desc := e.store(t, blob)
		mounts, err := e.sn.Prepare(e.ctx, name+"-extract", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.diff.Apply(e.ctx, &diffapi.ApplyRequest{Diff: apiDesc(desc), Mounts: apiMounts(mounts)}); err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
		if err := e.sn.Commit(e.ctx, name, name+"-extract"); err != nil {
			t.Fatal(err)
		}
	}
	kept, err := e.sn.Stat(e.ctx, "kept")
	if err != nil {
		t.Fatal(err)
	}
	// The same root without the Removed hook: a removal whose release the
	// kill cut off.
	cut, err := snapshotter.New(e.ctx, e.root, e.db, snapshotter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cut.Remove(e.ctx, "removed"); err != nil {
		t.Fatal(err)
	}
	if n := blobCount(t, e); n != before+4 {
		t.Fatalf("%d blobs, want %d (two layers, two tar-splits)", n, before+4)
	}
	if err := e.diff.ReleaseOrphans(e.ctx); err != nil {
		t.Fatal(err)
	}
	if n := blobCount(t, e); n != before+3 {
		t.Errorf("%d blobs after the sweep, want %d: the removed snapshot's tar-split is still there", n, before+3)
	}
	if _, err := e.cs.Info(e.ctx, digest.Digest(kept.Labels[cslabels.TarSplit])); err != nil {
		t.Errorf("the sweep released the tar-split of a snapshot still there: %v", err)
	}
}
