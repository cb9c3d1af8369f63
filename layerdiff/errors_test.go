package layerdiff

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vbatts/tar-split/tar/storage"
)

func TestApplyCorruptInput(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, smallLayer(), nil)
	gz, zst := compress(t, Gzip, data), compress(t, Zstd, data)
	flip := func(b []byte, at int) []byte {
		b = bytes.Clone(b)
		for i := at; i < at+16 && i < len(b); i++ {
			b[i] ^= 0x5a
		}
		return b
	}
	// Where the tar is cut: inside the content of "data", the last entry.
	dataAt := bytes.Index(data, []byte("compressible"))

	for _, tc := range []struct {
		name      string
		blob      []byte
		truncated bool
		want      []string // in the message
	}{
		{"truncated gzip", gz[:len(gz)/2], true, []string{"gzip"}},
		{"truncated gzip header", gz[:5], true, []string{"gzip", "header"}},
		{"truncated gzip trailer", gz[:len(gz)-4], true, []string{"gzip"}},
		{"corrupt gzip", flip(gz, len(gz)/2), false, []string{"gzip"}},
		{"corrupt gzip checksum", flip(gz, len(gz)-8), false, []string{"gzip"}},
		{"gzip then garbage", append(bytes.Clone(gz), "this is not gzip at all"...), false, []string{"gzip"}},
		{"truncated zstd", zst[:len(zst)/2], true, []string{"zstd"}},
		{"corrupt zstd", flip(zst, len(zst)/2), false, []string{"zstd"}},
		{"truncated tar in content", data[:dataAt+100], true, []string{`"data"`, "tar ends inside an entry"}},
		{"truncated tar in header", data[:512+100], true, []string{"tar ends inside an entry"}},
		{"truncated tar in gzip", compress(t, Gzip, data[:dataAt+100]), true, []string{`"data"`}},
		{"corrupt tar header", flip(data, 512+20), false, []string{"invalid tar header"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := applyLayer(t, tc.blob)
			if err == nil {
				t.Fatal("Apply succeeded")
			}
			t.Logf("error: %v", err)
			if errors.Is(err, ErrTruncated) != tc.truncated {
				t.Errorf("errors.Is(err, ErrTruncated) = %v, want %v", !tc.truncated, tc.truncated)
			}
			if !errContains(err, tc.want...) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestApplyMaxUncompressed(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, smallLayer(), nil)
	apply := func(blob []byte, max int64) error {
		_, dir := layerDir(t)
		_, err := Apply(context.Background(), dir, bytes.NewReader(blob), ApplyOptions{MaxUncompressed: max, TarSplit: &bytes.Buffer{}})
		return err
	}
	if err := apply(data, int64(len(data))); err != nil {
		t.Errorf("exactly at the bound: %v", err)
	}
	if err := apply(compress(t, Gzip, data), int64(len(data))-1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("one byte over: %v", err)
	}
	// A bomb: 256 MiB of zeros in a file, a few hundred KiB of zstd.
	bomb := compress(t, Zstd, buildTar(t, []entry{fileE("zeros", string(make([]byte, 256<<20)))}, nil))
	if err := apply(bomb, 1<<20); !errors.Is(err, ErrTooLarge) {
		t.Errorf("bomb: %v", err)
	}
	// A sparse file declares more than its stream holds.
	sparse, err := os.ReadFile("testdata/sparse-pax.tar")
	if err != nil {
		t.Fatal(err)
	}
	if err := apply(sparse, 100<<10); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "declare") {
		t.Errorf("sparse over the bound: %v", err)
	}
}

func TestApplyDuplicateEntries(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, []entry{fileE("dup", "one"), fileE("./dup", "two")}, nil)
	if _, err := applyLayer(t, data); !errors.Is(err, storage.ErrDuplicatePath) || !strings.Contains(err.Error(), `"./dup"`) {
		t.Errorf("duplicate with a tar-split: %v", err)
	}
	// Without a tar-split there is nothing to get wrong: the last one wins,
	// as in containerd.
	_, dir := layerDir(t)
	if _, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "dup")); string(got) != "two" {
		t.Errorf("dup = %q", got)
	}
}

func TestApplyOwnerOutOfRange(t *testing.T) {
	requireRoot(t)
	e := fileE("big", "x")
	e.hdr.Uid = 1 << 33
	if _, err := applyLayer(t, buildTar(t, []entry{e}, nil)); !errContains(err, "out of range", `"big"`) {
		t.Errorf("uid 2^33: %v", err)
	}
}

func TestApplyCancelled(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, dir := layerDir(t)
	_, err := Apply(ctx, dir, bytes.NewReader(buildTar(t, smallLayer(), nil)), ApplyOptions{TarSplit: &bytes.Buffer{}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// TestApplySparse: tar-split and the extractor both expand sparse files, so
// a layer with one is applied but cannot be reassembled as it was; old GNU
// sparse files containerd cannot apply at all.
func TestApplySparse(t *testing.T) {
	requireRoot(t)
	pax, err := os.ReadFile("testdata/sparse-pax.tar")
	if err != nil {
		t.Fatal(err)
	}
	a, err := applyLayer(t, pax)
	if err != nil {
		t.Fatal(err)
	}
	if a.res.Reproducible || !strings.Contains(a.res.NotReproducible, "sparse") {
		t.Errorf("PAX sparse: Reproducible %v %q", a.res.Reproducible, a.res.NotReproducible)
	}
	if a.res.UncompressedDigest != sha(pax) {
		t.Errorf("digest %s, want %s", a.res.UncompressedDigest, sha(pax))
	}
	// The content is the expanded one (written without holes).
	content, err := os.ReadFile(filepath.Join(a.dir, "hole"))
	if err != nil {
		t.Fatal(err)
	}
	if got := sha(content); got != "sha256:6715a368a98ffe63a5ba369342287b8587a31c3c5087ff770c5dc5cfe891d53a" {
		t.Errorf("expanded content %s", got)
	}
	// Both parsers expand it, so its checksum would match the expanded
	// file: Apply leaves it out so that Reassemble fails.
	if _, err := reassemble(t, a.dir, a.tarSplit); !errContains(err, "checksum", "hole") {
		t.Errorf("Reassemble of a sparse file: %v", err)
	}

	gnu, err := os.ReadFile("testdata/sparse-gnu.tar")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := applyLayer(t, gnu); !errContains(err, "GNU sparse", `"hole"`) {
		t.Errorf("old GNU sparse: %v", err)
	}
}

// TestApplyNotReproducible: layers whose extracted tree no longer holds a
// payload the tar-split refers to are reported, and Reassemble fails on
// them instead of returning other bytes.
func TestApplyNotReproducible(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name    string
		entries []entry
		want    string
	}{
		{"overwritten through a symlink", []entry{
			fileE("f", "first"), symlinkE("self", "."), fileE("self/f", "second"),
		}, "replaces"},
		{"directory replaced", []entry{
			dirE("d/"), fileE("d/x", "content"), symlinkE("alias", "."), symlinkE("alias/d", "/"),
		}, "removes"},
		{"symlink re-pointed", []entry{
			dirE("a/"), dirE("b/"), symlinkE("l", "a"), fileE("l/x", "one"), fileE("b/x", "two"),
			symlinkE("p", "."), symlinkE("p/l", "b"),
		}, "no longer names"},
		{"whiteout with content", []entry{fileE(".wh.gone", "content")}, "whiteout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := buildTar(t, tc.entries, nil)
			a, err := applyLayer(t, data)
			if err != nil {
				t.Fatal(err)
			}
			if a.res.Reproducible || !strings.Contains(a.res.NotReproducible, tc.want) {
				t.Errorf("Reproducible %v %q, want false %q", a.res.Reproducible, a.res.NotReproducible, tc.want)
			}
			got, err := reassemble(t, a.dir, a.tarSplit)
			t.Logf("Reassemble: %v", err)
			if err == nil || bytes.Equal(got, data) {
				t.Errorf("Reassemble: %d bytes, equal %v, error %v; want an error", len(got), bytes.Equal(got, data), err)
			}
		})
	}
}

// TestApplyLinkWithSize: a hard link whose header declares a size carries
// no content; tar-split alone would copy the linked file's content into the
// reassembled tar.
func TestApplyLinkWithSize(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, []entry{fileE("target", "target content"), hardlinkE("link", "target"), symlinkE("sym", "target")}, nil)
	// Declare a size in the headers of "link" and "sym".
	data = setHeaderSize(t, data, 1024, 14)
	data = setHeaderSize(t, data, 1536, 99)
	checkRoundTrip(t, data, data, Uncompressed)
}

// setHeaderSize rewrites the size field of the header block at off.
func setHeaderSize(t *testing.T, data []byte, off int, size int64) []byte {
	t.Helper()
	data = bytes.Clone(data)
	h := data[off : off+512]
	if h[156] != tar.TypeLink && h[156] != tar.TypeSymlink {
		t.Fatalf("no link header at %d: %q", off, h[:100])
	}
	copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	copy(h[148:156], "        ")
	var sum int64
	for _, b := range h {
		sum += int64(b)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return data
}

// TestApplyFailsEarlyInBigLayer: an extraction error with megabytes still
// to come returns promptly (nothing waits on a reader that stopped).
func TestApplyFailsEarlyInBigLayer(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, []entry{
		hardlinkE("broken", "missing"),
		fileE("big1", strings.Repeat("x", 4<<20)),
		fileE("big2", strings.Repeat("y", 4<<20)),
	}, nil)
	done := make(chan error, 1)
	go func() {
		_, err := applyLayer(t, compress(t, Gzip, data))
		done <- err
	}()
	select {
	case err := <-done:
		if !errContains(err, `"broken"`) {
			t.Errorf("error %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Apply hangs after an extraction error")
	}
}
