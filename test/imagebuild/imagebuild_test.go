package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

func requireBusybox(t *testing.T) {
	t.Helper()
	if err := CheckStaticBusybox(DefaultBusybox); err != nil {
		t.Fatalf("%v\nrun scripts/install-deps.sh (installs busybox-static)", err)
	}
}

func build(t *testing.T, opts Options) ([]byte, *Result) {
	t.Helper()
	var buf bytes.Buffer
	res, err := Build(&buf, opts)
	if err != nil {
		t.Fatalf("Build(%+v): %v", opts, err)
	}
	return buf.Bytes(), res
}

// readArchive returns the regular files of an archive by name.
func readArchive(t *testing.T, b []byte) (map[string][]byte, []string) {
	t.Helper()
	files := map[string][]byte{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading archive: %v", err)
		}
		order = append(order, hdr.Name)
		if !hdr.ModTime.Equal(Epoch) {
			t.Errorf("%s: mtime %v, want %v", hdr.Name, hdr.ModTime, Epoch)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = data
	}
	return files, order
}

type layerEntry struct {
	hdr  *tar.Header
	data []byte
}

func readLayer(t *testing.T, blob []byte) (map[string]layerEntry, digest.Digest) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatalf("layer is not gzip: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]layerEntry{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(Epoch) {
			t.Errorf("%s: uid %d gid %d mtime %v", hdr.Name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
		out[strings.TrimSuffix(hdr.Name, "/")] = layerEntry{hdr, data}
	}
	return out, digest.FromBytes(raw)
}

func TestRefName(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io/library/cs-busybox:latest":               "latest",
		"docker.io/library/cs-busybox":                      "latest",
		"localhost:5000/x/y:v1":                             "v1",
		"localhost:5000/x/y":                                "latest",
		"example.com/a:t@sha256:" + strings.Repeat("0", 64): "t",
	} {
		if got := RefName(in); got != want {
			t.Errorf("RefName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDeterministic(t *testing.T) {
	requireBusybox(t)
	a, ra := build(t, Options{})
	b, rb := build(t, Options{})
	if !bytes.Equal(a, b) {
		t.Fatal("two builds with the same options differ")
	}
	if ra.Manifest.Digest != rb.Manifest.Digest {
		t.Fatalf("manifest digests differ: %s vs %s", ra.Manifest.Digest, rb.Manifest.Digest)
	}
	_, rc := build(t, Options{Hello: "other\n"})
	if rc.Layers[0].DiffID == ra.Layers[0].DiffID {
		t.Error("different hello text gave the same first layer")
	}
	if rc.Layers[1].DiffID != ra.Layers[1].DiffID {
		t.Error("layer 2 should not depend on the hello text")
	}
	_, rn := build(t, Options{Name: "docker.io/library/other:v2"})
	if rn.Manifest.Digest != ra.Manifest.Digest {
		t.Error("the name should only change index.json, not the manifest")
	}
}

func TestArchiveStructure(t *testing.T) {
	requireBusybox(t)
	const name = "docker.io/library/cs-busybox:v1"
	b, res := build(t, Options{Name: name, Layers: 4})
	files, order := readArchive(t, b)

	if order[0] != ocispec.ImageLayoutFile || order[len(order)-1] != ocispec.ImageIndexFile {
		t.Errorf("archive order %v: want oci-layout first and index.json last", order)
	}
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(files[ocispec.ImageLayoutFile], &layout); err != nil || layout.Version != ocispec.ImageLayoutVersion {
		t.Fatalf("oci-layout %q: %v", files[ocispec.ImageLayoutFile], err)
	}
	for n, data := range files {
		if enc, ok := strings.CutPrefix(n, "blobs/sha256/"); ok {
			if got := digest.FromBytes(data).Encoded(); got != enc {
				t.Errorf("blob %s has digest %s", n, got)
			}
		}
	}

	var idx ocispec.Index
	if err := json.Unmarshal(files[ocispec.ImageIndexFile], &idx); err != nil {
		t.Fatal(err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index.json: %s", files[ocispec.ImageIndexFile])
	}
	md := idx.Manifests[0]
	if md.Annotations[AnnotationImageName] != name || md.Annotations[ocispec.AnnotationRefName] != "v1" {
		t.Errorf("index annotations %v", md.Annotations)
	}
	if md.Digest != res.Manifest.Digest || md.MediaType != ocispec.MediaTypeImageManifest {
		t.Errorf("index manifest descriptor %+v, result %+v", md, res.Manifest)
	}

	var mf ocispec.Manifest
	if err := json.Unmarshal(files["blobs/sha256/"+md.Digest.Encoded()], &mf); err != nil {
		t.Fatal(err)
	}
	if len(mf.Layers) != 4 {
		t.Fatalf("manifest has %d layers, want 4", len(mf.Layers))
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(files["blobs/sha256/"+mf.Config.Digest.Encoded()], &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture == "" || cfg.RootFS.Type != "layers" {
		t.Errorf("config %+v", cfg)
	}
	if len(cfg.Config.Env) == 0 || !strings.HasPrefix(cfg.Config.Env[0], "PATH=") || len(cfg.Config.Cmd) == 0 {
		t.Errorf("config env %v cmd %v", cfg.Config.Env, cfg.Config.Cmd)
	}
	if len(cfg.History) != 4 {
		t.Errorf("history has %d entries", len(cfg.History))
	}

	var diffIDs []digest.Digest
	layers := make([]map[string]layerEntry, len(mf.Layers))
	for i, l := range mf.Layers {
		if l.MediaType != ocispec.MediaTypeImageLayerGzip {
			t.Errorf("layer %d media type %s", i, l.MediaType)
		}
		blob := files["blobs/sha256/"+l.Digest.Encoded()]
		if int64(len(blob)) != l.Size {
			t.Errorf("layer %d size %d, descriptor says %d", i, len(blob), l.Size)
		}
		var diffID digest.Digest
		layers[i], diffID = readLayer(t, blob)
		if diffID != cfg.RootFS.DiffIDs[i] || diffID != res.Layers[i].DiffID {
			t.Errorf("layer %d diff id %s, config %s, result %s", i, diffID, cfg.RootFS.DiffIDs[i], res.Layers[i].DiffID)
		}
		diffIDs = append(diffIDs, diffID)
	}
	chain := identity.ChainIDs(diffIDs)
	for i := range chain {
		if res.Layers[i].ChainID != chain[i] {
			t.Errorf("layer %d chain id %s, want %s", i, res.Layers[i].ChainID, chain[i])
		}
	}
	if got := len(res.BlobDigests()); got != 6 {
		t.Errorf("BlobDigests has %d entries", got)
	}

	// Layer 1: busybox, applets, hello file.
	bb, ok := layers[0]["bin/busybox"]
	if !ok || bb.hdr.Mode&0o111 == 0 {
		t.Fatalf("layer 1 lacks an executable bin/busybox")
	}
	want, _ := os.ReadFile(DefaultBusybox)
	if !bytes.Equal(bb.data, want) {
		t.Error("bin/busybox differs from " + DefaultBusybox)
	}
	for _, a := range Applets {
		e, ok := layers[0]["bin/"+a]
		if !ok || e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != "busybox" {
			t.Errorf("bin/%s is not a symlink to busybox", a)
		}
	}
	if e := layers[0][strings.TrimPrefix(HelloPath, "/")]; string(e.data) != HelloText {
		t.Errorf("%s = %q", HelloPath, e.data)
	}
	if _, ok := layers[0][strings.TrimPrefix(RemovedPath, "/")]; !ok {
		t.Errorf("layer 1 lacks %s", RemovedPath)
	}
	// Layer 2 adds, layer 3 deletes with a whiteout and an opaque dir.
	if e := layers[1][strings.TrimPrefix(Layer2Path, "/")]; string(e.data) != Layer2Text {
		t.Errorf("layer 2 %s = %q", Layer2Path, e.data)
	}
	if _, ok := layers[2]["etc/.wh.cs-remove-me.txt"]; !ok {
		t.Errorf("layer 3 lacks the whiteout; has %v", keys(layers[2]))
	}
	if _, ok := layers[2]["var/.wh.cs-gone"]; !ok {
		t.Errorf("layer 3 lacks the directory whiteout; has %v", keys(layers[2]))
	}
	if _, ok := layers[2]["opt/cs/.wh..wh..opq"]; !ok {
		t.Errorf("layer 3 lacks the opaque marker; has %v", keys(layers[2]))
	}
	if _, ok := layers[3][strings.TrimPrefix(LayerFile(4), "/")]; !ok {
		t.Errorf("layer 4 lacks %s; has %v", LayerFile(4), keys(layers[3]))
	}
}

func keys(m map[string]layerEntry) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestLayerCounts(t *testing.T) {
	requireBusybox(t)
	for _, n := range []int{1, 2, 3, 5} {
		_, res := build(t, Options{Layers: n})
		if len(res.Layers) != n || len(res.ChainIDs()) != n || len(res.DiffIDs()) != n {
			t.Errorf("Layers=%d gave %d layers", n, len(res.Layers))
		}
	}
	if _, err := Build(io.Discard, Options{Layers: -1}); err == nil {
		t.Error("Layers=-1 should fail")
	}
}

func TestRejectsDynamicBusybox(t *testing.T) {
	// /bin/ls (coreutils) is dynamically linked on Debian.
	if err := CheckStaticBusybox("/bin/ls"); err == nil {
		t.Error("CheckStaticBusybox(/bin/ls) = nil, want an error for a dynamic binary")
	}
	if _, err := Build(io.Discard, Options{Busybox: "/nonexistent/busybox"}); err == nil {
		t.Error("Build with a missing busybox should fail")
	}
}

// TestContainerdImport imports the archive with containerd's own importer
// into a local content store, then applies the layers with containerd's
// archive package, and checks the resulting root filesystem.
func TestContainerdImport(t *testing.T) {
	requireBusybox(t)
	ctx := context.Background()
	b, res := build(t, Options{Layers: 4})
	dir := t.TempDir()
	cs, err := local.NewStore(filepath.Join(dir, "content"))
	if err != nil {
		t.Fatal(err)
	}
	idxDesc, err := archive.ImportIndex(ctx, cs, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("containerd ImportIndex: %v", err)
	}
	idxBlob, err := content.ReadBlob(ctx, cs, idxDesc)
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(idxBlob, &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 || idx.Manifests[0].Annotations[images.AnnotationImageName] != DefaultName {
		t.Fatalf("imported index: %s", idxBlob)
	}
	img := images.Image{Name: DefaultName, Target: idx.Manifests[0]}
	diffIDs, err := img.RootFS(ctx, cs, nil)
	if err != nil {
		t.Fatalf("RootFS: %v", err)
	}
	if len(diffIDs) != 4 || diffIDs[3] != res.Layers[3].DiffID {
		t.Fatalf("RootFS = %v", diffIDs)
	}
	mf, err := images.Manifest(ctx, cs, img.Target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if mf.Config.Digest != res.Config.Digest {
		t.Errorf("config %s, want %s", mf.Config.Digest, res.Config.Digest)
	}

	// Apply the layers in order, the way a naive (non-overlay) snapshotter
	// would, with containerd's archive.Apply (which handles whiteouts).
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, l := range mf.Layers {
		ra, err := cs.ReaderAt(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		dr, err := compression.DecompressStream(content.NewReader(ra))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := applyLayer(ctx, rootfs, dr); err != nil {
			t.Fatalf("apply layer %d: %v", i+1, err)
		}
		dr.Close()
		ra.Close()
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(rootfs, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	if got := read(HelloPath); got != HelloText {
		t.Errorf("%s = %q", HelloPath, got)
	}
	if got := read(Layer2Path); got != Layer2Text {
		t.Errorf("%s = %q", Layer2Path, got)
	}
	if got := read(LayerFile(4)); got != "added by layer 4\n" {
		t.Errorf("%s = %q", LayerFile(4), got)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, RemovedPath)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s should be deleted by the whiteout, Lstat: %v", RemovedPath, err)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, RemovedDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s should be deleted by the whiteout, Lstat: %v", RemovedDir, err)
	}
	ents, err := os.ReadDir(filepath.Join(rootfs, OpaqueDir))
	if err != nil || len(ents) != 1 || ents[0].Name() != "b.txt" {
		t.Errorf("%s should hold only b.txt: %v %v", OpaqueDir, ents, err)
	}
	// The applied busybox runs: proves the binary and applet links work.
	out, err := exec.Command(filepath.Join(rootfs, "bin/busybox"), "cat", filepath.Join(rootfs, HelloPath)).CombinedOutput()
	if err != nil || string(out) != HelloText {
		t.Errorf("busybox cat: %q %v", out, err)
	}
	if target, err := os.Readlink(filepath.Join(rootfs, "bin/sh")); err != nil || target != "busybox" {
		t.Errorf("bin/sh -> %q %v", target, err)
	}
}

func TestBuildFile(t *testing.T) {
	requireBusybox(t)
	p := filepath.Join(t.TempDir(), "img.tar")
	res, err := BuildFile(p, Options{Layers: 2})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := build(t, Options{Layers: 2})
	got, err := Sha256File(p)
	if err != nil {
		t.Fatal(err)
	}
	if got != digest.FromBytes(b) {
		t.Errorf("BuildFile output differs from Build output")
	}
	if len(res.Layers) != 2 {
		t.Errorf("%d layers", len(res.Layers))
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".imagebuild-*")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

// applyImage imports an archive with containerd's importer and applies its
// layers in order into a new directory, which it returns.
func applyImage(t *testing.T, b []byte) string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	cs, err := local.NewStore(filepath.Join(dir, "content"))
	if err != nil {
		t.Fatal(err)
	}
	idxDesc, err := archive.ImportIndex(ctx, cs, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := content.ReadBlob(ctx, cs, idxDesc)
	if err != nil {
		t.Fatal(err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(idx, &index); err != nil {
		t.Fatal(err)
	}
	mf, err := images.Manifest(ctx, cs, index.Manifests[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, l := range mf.Layers {
		ra, err := cs.ReaderAt(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		dr, err := compression.DecompressStream(content.NewReader(ra))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := applyLayer(ctx, rootfs, dr); err != nil {
			t.Fatalf("apply layer %d: %v", i+1, err)
		}
		dr.Close()
		ra.Close()
	}
	return rootfs
}

// statLine formats a file like busybox `stat -c '%u|%g|%a|%h|%F'`.
func statLine(t *testing.T, p string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return "<" + err.Error() + ">"
	}
	var kind string
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		kind = "regular file"
		if st.Size == 0 {
			kind = "regular empty file"
		}
	case unix.S_IFDIR:
		kind = "directory"
	case unix.S_IFLNK:
		kind = "symbolic link"
	case unix.S_IFIFO:
		kind = "fifo"
	case unix.S_IFCHR:
		kind = "character special file"
	default:
		kind = fmt.Sprintf("mode %o", st.Mode)
	}
	return fmt.Sprintf("%d|%d|%o|%d|%s", st.Uid, st.Gid, st.Mode&0o7777, st.Nlink, kind)
}

func TestFidelityAndBigFile(t *testing.T) {
	requireBusybox(t)
	const big = 3<<20 + 17
	b, res := build(t, Options{Layers: 1, Fidelity: true, BigFileSize: big})
	if len(res.Layers) != 3 {
		t.Fatalf("%d layers, want 1 + fidelity + big file", len(res.Layers))
	}
	// Deterministic, incompressible.
	if b2, _ := build(t, Options{Layers: 1, Fidelity: true, BigFileSize: big}); !bytes.Equal(b, b2) {
		t.Fatal("not deterministic")
	}
	if res.Layers[2].Descriptor.Size < big {
		t.Errorf("big-file layer is %d bytes compressed; the data should not compress", res.Layers[2].Descriptor.Size)
	}
	rootfs := applyImage(t, b)
	for _, f := range FidelityFiles() {
		if got := statLine(t, filepath.Join(rootfs, f.Path)); got != f.Stat {
			t.Errorf("%s: %s, want %s", f.Path, got, f.Stat)
		}
	}
	if target, err := os.Readlink(filepath.Join(rootfs, FidelityDir, "etclink")); err != nil || target != "/etc" {
		t.Errorf("etclink -> %q %v", target, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(rootfs, FidelityDir, "null"), &st); err != nil || unix.Major(uint64(st.Rdev)) != 1 || unix.Minor(uint64(st.Rdev)) != 3 {
		t.Errorf("null device: %v rdev %d", err, st.Rdev)
	}
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(rootfs, FidelityDir, "xattr"), XattrName, buf)
	if err != nil || string(buf[:n]) != XattrValue {
		t.Errorf("xattr %s = %q, %v", XattrName, buf[:max(n, 0)], err)
	}
	data, err := os.ReadFile(filepath.Join(rootfs, BigFilePath))
	if err != nil || !bytes.Equal(data, BigFileData(big)) {
		t.Errorf("big file: %d bytes, %v", len(data), err)
	}
	if mt := statMtime(t, filepath.Join(rootfs, FidelityDir, "owned")); mt != Epoch.Unix() {
		t.Errorf("mtime %d, want %d", mt, Epoch.Unix())
	}
}

func statMtime(t *testing.T, p string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Mtim.Sec
}
