package layerdiff

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// epochTime is every test entry's mtime, so that built tars are
// deterministic (the bzip2/xz testdata were made from them).
var epochTime = time.Unix(1700000000, 0)

// entry is one tar entry to build: a header and its content.
type entry struct {
	hdr  tar.Header
	body string
}

func dirE(name string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

func fileE(name, body string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}, body: body}
}

func symlinkE(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func hardlinkE(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

// buildTar writes entries with archive/tar, then appends trailer (bytes
// after the end-of-archive marker, as tar(1)'s blocking adds).
func buildTar(t testing.TB, entries []entry, trailer []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.ModTime.IsZero() && h.Typeflag != tar.TypeXGlobalHeader {
			h.ModTime = epochTime
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatalf("tar body %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	buf.Write(trailer)
	return buf.Bytes()
}

// compress compresses data with an implementation independent of the
// decoder Apply uses where there is one (standard library gzip).
func compress(t testing.TB, c Compression, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	switch c {
	case Uncompressed:
		return data
	case Gzip:
		w = gzip.NewWriter(&buf)
	case Zstd:
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w = zw
	case Xz:
		xw, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w = xw
	case Bzip2:
		t.Fatal("no bzip2 writer; use testdata")
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sha(data []byte) digest.Digest {
	s := sha256.Sum256(data)
	return digest.Digest("sha256:" + hex.EncodeToString(s[:]))
}

// layerDir returns an empty directory to apply a layer to, inside a
// sandbox directory that should hold nothing else afterwards.
func layerDir(t testing.TB) (sandbox, dir string) {
	t.Helper()
	sandbox = t.TempDir()
	dir = filepath.Join(sandbox, "layer")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return sandbox, dir
}

// applied is a layer applied with a tar-split recorded.
type applied struct {
	res      ApplyResult
	tarSplit []byte
	dir      string
}

func applyLayer(t testing.TB, blob []byte) (applied, error) {
	t.Helper()
	_, dir := layerDir(t)
	var ts bytes.Buffer
	res, err := Apply(context.Background(), dir, bytes.NewReader(blob), ApplyOptions{TarSplit: &ts})
	return applied{res: res, tarSplit: ts.Bytes(), dir: dir}, err
}

// Both ways out are checked: Read (through the goroutine's pipe) and
// WriteTo (straight into the destination), which must agree.
func reassemble(t testing.TB, dir string, tarSplit []byte) ([]byte, error) {
	t.Helper()
	var data [2][]byte
	var errs [2]error
	for i, out := range []func(io.Reader) ([]byte, error){
		io.ReadAll,
		func(r io.Reader) ([]byte, error) {
			var b bytes.Buffer
			n, err := r.(io.WriterTo).WriteTo(&b)
			if err == nil && n != int64(b.Len()) {
				t.Errorf("WriteTo said %d bytes, wrote %d", n, b.Len())
			}
			return b.Bytes(), err
		},
	} {
		rc, err := Reassemble(dir, bytes.NewReader(tarSplit))
		if err != nil {
			return nil, err
		}
		data[i], errs[i] = out(rc)
		if cerr := rc.Close(); errs[i] == nil && cerr != nil {
			t.Errorf("closing reassembly: %v", cerr)
		}
	}
	if (errs[0] == nil) != (errs[1] == nil) || errs[0] == nil && !bytes.Equal(data[0], data[1]) {
		t.Errorf("Read and WriteTo disagree: %d bytes, %v; %d bytes, %v", len(data[0]), errs[0], len(data[1]), errs[1])
	}
	return data[0], errs[0]
}

// checkRoundTrip applies blob (tarData compressed), then checks digests,
// sizes and that Reassemble returns tarData exactly.
func checkRoundTrip(t *testing.T, tarData, blob []byte, want Compression) applied {
	t.Helper()
	a, err := applyLayer(t, blob)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	r := a.res
	if r.Compression != want {
		t.Errorf("Compression = %v, want %v", r.Compression, want)
	}
	if r.CompressedDigest != sha(blob) || r.CompressedSize != int64(len(blob)) {
		t.Errorf("compressed = %s %d, want %s %d", r.CompressedDigest, r.CompressedSize, sha(blob), len(blob))
	}
	if r.UncompressedDigest != sha(tarData) || r.UncompressedSize != int64(len(tarData)) {
		t.Errorf("uncompressed = %s %d, want %s %d", r.UncompressedDigest, r.UncompressedSize, sha(tarData), len(tarData))
	}
	if !r.Reproducible {
		t.Fatalf("not reproducible: %s", r.NotReproducible)
	}
	got, err := reassemble(t, a.dir, a.tarSplit)
	if err != nil {
		t.Fatalf("Reassemble: %v", err)
	}
	if sha(got) != r.UncompressedDigest || !bytes.Equal(got, tarData) {
		t.Fatalf("Reassemble returned %d bytes %s, want %d bytes %s (first difference at %d)",
			len(got), sha(got), len(tarData), sha(tarData), firstDiff(got, tarData))
	}
	return a
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func lstat(t testing.TB, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat: %v", err)
	}
	return st
}

func getxattr(t testing.TB, p, name string) (string, bool) {
	t.Helper()
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, name, buf)
	if err == unix.ENODATA {
		return "", false
	}
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", p, name, err)
	}
	return string(buf[:n]), true
}

// listTree returns the relative paths under root, for "nothing else was
// written" checks.
func listTree(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: device nodes, ownership, trusted xattrs, mounts")
	}
}

func errContains(err error, parts ...string) bool {
	if err == nil {
		return false
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			return false
		}
	}
	return true
}
