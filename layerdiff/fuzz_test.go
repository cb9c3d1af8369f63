package layerdiff

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tstar "github.com/vbatts/tar-split/archive/tar"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
)

// Fuzzing: the seed corpora are in testdata/fuzz/<Fuzz...>/; as unit tests
// these run over them, and scripts/fuzz.sh runs each target for $FUZZTIME.

// fuzzMax bounds each input's expansion: a fuzzed sparse file or declared
// size then costs nothing, and the bound's own path is exercised.
const fuzzMax = 1 << 20

// fuzzLower is a lower directory with what the escape checker must see
// through: symlinks out (absolute and relative), one inside, a directory
// with content, an opaque directory.
func fuzzLower(f *testing.F) string {
	lower := filepath.Join(f.TempDir(), "lower")
	for _, err := range []error{
		os.MkdirAll(filepath.Join(lower, "usr/lib"), 0o755),
		os.Symlink("/", filepath.Join(lower, "root")),
		os.Symlink("../../../../..", filepath.Join(lower, "up")),
		os.Symlink("usr/lib", filepath.Join(lower, "lib")),
		os.Symlink("/tmp", filepath.Join(lower, "usr/tmp")),
		os.WriteFile(filepath.Join(lower, "usr/lib/libc"), []byte("libc"), 0o644),
		os.MkdirAll(filepath.Join(lower, "opq/sub"), 0o700),
	} {
		if err != nil {
			f.Fatal(err)
		}
	}
	// Not all file systems take trusted xattrs (or the process the right
	// to set them): the opaque directory is then a plain one.
	unix.Setxattr(filepath.Join(lower, "opq"), "trusted.overlay.opaque", []byte("y"), 0)
	return lower
}

// treeState describes every file under root: type, mode, owner, links,
// size, content digest, symlink target, modification time.
func treeState(tb testing.TB, root string, skip string) map[string]string {
	tb.Helper()
	state := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("%#o %d:%d %d %d %d.%d", st.Mode, st.Uid, st.Gid, st.Nlink, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %x", sha256.Sum256(b))
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		}
		rel, _ := filepath.Rel(root, p)
		state[rel] = desc
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return state
}

func sameState(tb testing.TB, what string, before, after map[string]string) {
	tb.Helper()
	for p, a := range after {
		if b, ok := before[p]; !ok {
			tb.Fatalf("%s: %s was created: %s", what, p, a)
		} else if a != b {
			tb.Fatalf("%s: %s changed: %s, was %s", what, p, a, b)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			tb.Fatalf("%s: %s was removed", what, p)
		}
	}
}

// FuzzApply applies arbitrary bytes as a layer blob, over a lower
// directory for inputs of an even number of 512-byte blocks. Apply must not panic, must return
// either an error and a zero result, or digests and sizes of exactly the
// input; a reproducible layer must reassemble to exactly its uncompressed
// bytes; and nothing outside the layer directory may change — neither the
// sandbox around it (the layer directory is four levels deep, so that
// relative escapes land in it) nor the lower directory.
func FuzzApply(f *testing.F) {
	lower := fuzzLower(f)
	lowerState := treeState(f, lower, "")
	f.Fuzz(func(t *testing.T, data []byte) {
		sandbox := t.TempDir()
		dir := filepath.Join(sandbox, "a/b/c/layer")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"sentinel", "a/sentinel", "a/b/sentinel", "a/b/c/sentinel"} {
			if err := os.WriteFile(filepath.Join(sandbox, p), []byte(p), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		sandboxBefore := treeState(t, sandbox, dir)
		var parents []string
		if len(data)/512%2 == 0 {
			parents = []string{lower}
		}
		var ts bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := Apply(ctx, dir, bytes.NewReader(data), ApplyOptions{TarSplit: &ts, MaxUncompressed: fuzzMax, Parents: parents})

		sameState(t, "sandbox", sandboxBefore, treeState(t, sandbox, dir))
		sameState(t, "lower", lowerState, treeState(t, lower, ""))
		if err != nil {
			if !reflectZero(res) {
				t.Fatalf("Apply failed (%v) but reported %+v", err, res)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Apply of %d bytes took a minute: %v", len(data), err)
			}
			if !strings.HasPrefix(err.Error(), "layerdiff: ") {
				t.Fatalf("error %q does not say where it comes from", err)
			}
			return
		}
		if res.CompressedDigest != sha(data) || res.CompressedSize != int64(len(data)) {
			t.Fatalf("compressed %s %d, want %s %d", res.CompressedDigest, res.CompressedSize, sha(data), len(data))
		}
		uncompressed := data
		if res.Compression != Uncompressed {
			rc, _, err := Decompress(bytes.NewReader(data))
			if err != nil {
				t.Fatalf("Apply took a %v layer Decompress refuses: %v", res.Compression, err)
			}
			uncompressed, err = io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatalf("Apply took a %v layer Decompress fails: %v", res.Compression, err)
			}
		}
		if res.UncompressedDigest != sha(uncompressed) || res.UncompressedSize != int64(len(uncompressed)) {
			t.Fatalf("uncompressed %s %d, want %s %d", res.UncompressedDigest, res.UncompressedSize, sha(uncompressed), len(uncompressed))
		}
		if !res.Reproducible {
			if res.NotReproducible == "" {
				t.Fatal("not reproducible, and no reason")
			}
			return
		}
		got, err := reassemble(t, dir, ts.Bytes())
		if err != nil {
			t.Fatalf("reproducible layer does not reassemble: %v", err)
		}
		if !bytes.Equal(got, uncompressed) {
			t.Fatalf("reassembled %d bytes %s, want %d bytes %s (first difference at %d)",
				len(got), sha(got), len(uncompressed), sha(uncompressed), firstDiff(got, uncompressed))
		}
		sameState(t, "sandbox after Reassemble", sandboxBefore, treeState(t, sandbox, dir))
	})
}

// FuzzSplitStream runs arbitrary bytes through the tar-split half of
// Apply alone (splitStream: tar-split's parser, the recorder's corrections
// and the batching tee), without a file system. The tee must hand on
// exactly the bytes the parser read, and hash them; when the record
// accounts for every byte, replaying it with each entry's content (as
// tar-split's reader returns it) must give the input back byte for byte —
// which is what Reassemble relies on.
func FuzzSplitStream(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		var js bytes.Buffer
		rec := &recorder{packer: storage.NewJSONPacker(&js), max: fuzzMax}
		h := sha256.New()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		src := newPrefetcher(bytes.NewReader(data), nil)
		defer src.stopAndWait()
		stream, done := splitStream(ctx, src, h, rec)
		passed, readErr := io.ReadAll(stream) // the parser's error, or nil at its end
		stream.Close()
		err := <-done
		if readErr != err {
			t.Fatalf("the stream ended with %v, the parser with %v", readErr, err)
		}
		if !bytes.HasPrefix(data, passed) {
			t.Fatalf("the stream passed on %d bytes that are not the input's first (first difference at %d)", len(passed), firstDiff(passed, data))
		}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("parsing %d bytes took a minute", len(data))
			}
			return
		}
		if len(passed) != len(data) || !bytes.Equal(h.Sum(nil), sha256Sum(data)) {
			t.Fatalf("passed on %d of %d bytes", len(passed), len(data))
		}
		if rec.notReproducible != "" || rec.total != int64(len(data)) {
			return
		}
		// Each entry's content as tar-split's own reader returns it.
		contents := map[string][]byte{}
		tr := tstar.NewReader(bytes.NewReader(data))
		for {
			hdr, err := tr.Next()
			if err != nil {
				break
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("tar-split's reader parsed %q once, not twice: %v", hdr.Name, err)
			}
			if _, ok := contents[hdr.Name]; !ok {
				contents[hdr.Name] = b
			}
		}
		var out bytes.Buffer
		getter := fileGetterFunc(func(name string) (io.ReadCloser, error) {
			b, ok := contents[name]
			if !ok {
				return nil, fmt.Errorf("no entry %q", name)
			}
			return io.NopCloser(bytes.NewReader(b)), nil
		})
		if err := asm.WriteOutputTarStream(getter, storage.NewJSONUnpacker(&js), &out); err != nil {
			t.Fatalf("replaying the record: %v", err)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("replayed %d bytes, want %d (first difference at %d)", out.Len(), len(data), firstDiff(out.Bytes(), data))
		}
	})
}

type fileGetterFunc func(string) (io.ReadCloser, error)

func (g fileGetterFunc) Get(name string) (io.ReadCloser, error) { return g(name) }

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}
