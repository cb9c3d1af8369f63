package differ_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/differ"
	"github.com/cs-snapshotter/cs-snapshotter/layerdiff"
)

// withAhead makes e's content store unpack blobs ahead into e's differ.
func (e *env) withAhead(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(e.root, "unpack-ahead")
	hook, err := e.diff.UnpackAhead(e.ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	e.cs.SetIngestHook(hook)
	t.Cleanup(func() { e.cs.SetIngestHook(nil); e.diff.Close(e.ctx) })
	return dir
}

// waitStaged waits until n blobs are unpacked ahead, untaken.
func (e *env) waitStaged(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); differ.AheadStaged(e.diff) != n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d blobs unpacked ahead, want %d", differ.AheadStaged(e.diff), n)
		}
	}
}

type tarEntry struct {
	hdr  tar.Header
	body string
}

func gzipTar(t *testing.T, entries []tarEntry) (blob, tarball []byte) {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, en := range entries {
		h := en.hdr
		h.Size = int64(len(en.body))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(en.body))
	}
	tw.Close()
	var gb bytes.Buffer
	gw := gzip.NewWriter(&gb)
	gw.Write(tb.Bytes())
	gw.Close()
	return gb.Bytes(), tb.Bytes()
}

// bothWays applies base, then layer on it, in two stores: in place, and
// with layer unpacked ahead (base is applied before unpacking ahead
// starts). It returns both layers' directories and labels, the store that
// unpacked ahead and its staging directory.
type bothWays struct {
	e                  *env
	staging            string
	wantUpper, upper   string
	wantLabels, labels map[string]string
}

func unpackBothWays(t *testing.T, base, layer []tarEntry) bothWays {
	t.Helper()
	baseBlob, _ := gzipTar(t, base)
	blob, _ := gzipTar(t, layer)
	var b bothWays
	plain := newEnv(t)
	plain.applyOn(t, "base", "", baseBlob)
	b.wantUpper, b.wantLabels = plain.applyOn(t, "layer", "base", blob)

	b.e = newEnv(t)
	b.e.applyOn(t, "base", "", baseBlob)
	b.staging = b.e.withAhead(t)
	desc := b.e.store(t, blob)
	b.e.waitStaged(t, 1)
	b.upper, b.labels = b.e.applyDesc(t, "layer", "base", desc.Digest, desc.Size)
	return b
}

// applyOn prepares key on parent, applies blob into it and commits it.
func (e *env) applyOn(t *testing.T, key, parent string, blob []byte) (upper string, labels map[string]string) {
	t.Helper()
	desc := e.store(t, blob)
	return e.applyDesc(t, key, parent, desc.Digest, int64(len(blob)))
}

func (e *env) applyDesc(t *testing.T, key, parent string, dgst digest.Digest, size int64) (string, map[string]string) {
	t.Helper()
	mounts, err := e.sn.Prepare(e.ctx, key+"-active", parent)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.diff.Apply(e.ctx, &diffapi.ApplyRequest{Diff: apiDesc(descOf(dgst, size)), Mounts: apiMounts(mounts)}); err != nil {
		t.Fatal(err)
	}
	if err := e.sn.Commit(e.ctx, key, key+"-active"); err != nil {
		t.Fatal(err)
	}
	info, err := e.sn.Stat(e.ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	upper := mounts[0].Source
	for _, o := range mounts[0].Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
	}
	return upper, info.Labels
}

// tree describes dir: every path's type, mode, owner, content or link
// target or device, hard link count and extended attributes; not times.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(dir, p)
		line := rel + " " + fi.Mode().String() + " " + itoa(st.Uid) + ":" + itoa(st.Gid)
		switch {
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			line += " " + string(b)
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			line += " -> " + l
		case fi.Mode()&os.ModeDevice != 0:
			line += " dev " + itoa(uint32(st.Rdev))
		}
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			line += " links " + itoa(uint32(st.Nlink))
		}
		buf := make([]byte, 4096)
		n, _ := unix.Llistxattr(p, buf)
		keys := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
		slices.Sort(keys)
		for _, k := range keys {
			if k == "" {
				continue
			}
			v := make([]byte, 256)
			m, _ := unix.Lgetxattr(p, k, v)
			line += " " + k + "=" + string(v[:max(m, 0)])
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func descOf(dgst digest.Digest, size int64) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: dgst, Size: size}
}

// TestUnpackAhead: a layer unpacked as its blob was written is moved into
// the snapshot it is applied to, and ends up as it would have unpacked
// there: the same tree (whiteouts, an opaque directory, hard links,
// directories the tar implies, which take the parent's attributes), the
// same records, a tar-split that reassembles the layer bit for bit.
func TestUnpackAhead(t *testing.T) {
	base := []tarEntry{
		{hdr: tar.Header{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o2750, Uid: 7, Gid: 8}},
		{hdr: tar.Header{Name: "opt/old", Typeflag: tar.TypeReg}, body: "old"},
		{hdr: tar.Header{Name: "var/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "var/lib/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 3, PAXRecords: map[string]string{"SCHILY.xattr.user.note": "kept"}}},
		{hdr: tar.Header{Name: "var/lib/gone", Typeflag: tar.TypeReg}, body: "x"},
	}
	layer := []tarEntry{
		{hdr: tar.Header{Name: "opt/new", Typeflag: tar.TypeReg, Uid: 1, Gid: 2}, body: "new"}, // opt implied
		{hdr: tar.Header{Name: "opt/.wh.old", Typeflag: tar.TypeReg}},
		{hdr: tar.Header{Name: "var/lib/deep/file", Typeflag: tar.TypeReg}, body: "deep"}, // var, var/lib, var/lib/deep implied
		{hdr: tar.Header{Name: "var/lib/deep/link", Typeflag: tar.TypeLink, Linkname: "var/lib/deep/file"}},
		{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "etc/.wh..wh..opq", Typeflag: tar.TypeReg}},
		{hdr: tar.Header{Name: "etc/sym", Typeflag: tar.TypeSymlink, Linkname: "/opt/new"}},
		{hdr: tar.Header{Name: ".wh..wh..opq", Typeflag: tar.TypeReg}},
	}
	_, tarball := gzipTar(t, layer)
	b := unpackBothWays(t, base, layer)
	e, staging, upper, labels, wantUpper, wantLabels := b.e, b.staging, b.upper, b.labels, b.wantUpper, b.wantLabels
	if n := differ.AheadStaged(e.diff); n != 0 {
		t.Errorf("%d unpacked ahead left after the apply", n)
	}
	if left, _ := os.ReadDir(staging); len(left) != 0 {
		t.Errorf("staging directory holds %v: the layer was unpacked again, not adopted", left)
	}
	if got, want := tree(t, upper), tree(t, wantUpper); !slices.Equal(got, want) {
		t.Errorf("adopted layer:\n%s\nunpacked in place:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, k := range []string{cslabels.CompressedDigest, cslabels.UncompressedDigest, cslabels.UncompressedSize, cslabels.Compression, cslabels.TarSplit} {
		if labels[k] == "" || labels[k] != wantLabels[k] {
			t.Errorf("label %s: %q, unpacked in place %q", k, labels[k], wantLabels[k])
		}
	}
	ra, err := e.cs.ReaderAt(e.ctx, descOf(digest.Digest(labels[cslabels.TarSplit]), -1))
	if err != nil {
		t.Fatal(err)
	}
	defer ra.Close()
	rc, err := layerdiff.Reassemble(upper, io.NewSectionReader(ra, 0, ra.Size()))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, tarball) {
		t.Errorf("reassembled %d bytes (%v), want the layer's %d", len(got), err, len(tarball))
	}
}

// TestUnpackAheadRedone: a layer unpacked ahead is unpacked again onto its
// parents when they are not what the extraction assumed (a symlink where
// the layer implies a directory), and when the snapshot is not empty; the
// results are those of an unpacking in place, and nothing is left staged.
func TestUnpackAheadRedone(t *testing.T) {
	base := []tarEntry{
		{hdr: tar.Header{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "usr/lib/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "lib", Typeflag: tar.TypeSymlink, Linkname: "usr/lib"}},
	}
	layer := []tarEntry{{hdr: tar.Header{Name: "lib/x/file", Typeflag: tar.TypeReg}, body: "x"}}
	b := unpackBothWays(t, base, layer)
	upper, wantUpper, staging := b.upper, b.wantUpper, b.staging
	if got, want := tree(t, upper), tree(t, wantUpper); !slices.Equal(got, want) {
		t.Errorf("layer:\n%s\nunpacked in place:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	waitEmpty(t, staging)
}

func waitEmpty(t *testing.T, dir string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		left, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still holds %v", dir, left)
		}
	}
}

// TestUnpackAheadBadBlob: a blob that looks compressed but is not a layer
// is not unpacked ahead, leaves nothing staged, and its Apply fails as it
// would without unpacking ahead, naming the problem; the store is intact:
// the blob is there, the snapshot is removed, a good layer applies after.
func TestUnpackAheadBadBlob(t *testing.T) {
	e := newEnv(t)
	staging := e.withAhead(t)
	bad := append([]byte{0x1f, 0x8b, 0x08}, bytes.Repeat([]byte("not gzip"), 100)...)
	desc := e.store(t, bad)
	waitEmpty(t, staging)
	mounts, err := e.sn.Prepare(e.ctx, "bad", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.diff.Apply(e.ctx, &diffapi.ApplyRequest{Diff: apiDesc(desc), Mounts: apiMounts(mounts)})
	if err == nil || !strings.Contains(err.Error(), "gzip") || !strings.Contains(err.Error(), desc.Digest.String()) {
		t.Fatalf("apply of a bad blob: %v", err)
	}
	if errdefs.IsNotImplemented(errgrpc.ToNative(err)) {
		t.Errorf("a bad blob must not go to containerd's differ: %v", err)
	}
	if _, err := e.cs.Info(e.ctx, desc.Digest); err != nil {
		t.Errorf("the blob is gone: %v", err)
	}
	if err := e.sn.Remove(e.ctx, "bad"); err != nil {
		t.Fatal(err)
	}
	blob, _ := gzipTar(t, []tarEntry{{hdr: tar.Header{Name: "ok", Typeflag: tar.TypeReg}, body: "ok"}})
	d := e.store(t, blob)
	e.waitStaged(t, 1)
	upper, labels := e.applyDesc(t, "good", "", d.Digest, d.Size)
	if b, _ := os.ReadFile(filepath.Join(upper, "ok")); string(b) != "ok" || labels[cslabels.TarSplit] == "" {
		t.Errorf("good layer after a bad one: %q, labels %v", b, labels)
	}
	if sts, err := e.cs.ListStatuses(e.ctx); err != nil || len(sts) != 0 {
		t.Errorf("ingests left: %v %v", sts, err)
	}
}
