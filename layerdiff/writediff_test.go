package layerdiff

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// tree creates files (name → content; a name ending in "/" is a
// directory) under root.
func tree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func whiteout(t *testing.T, p string) {
	t.Helper()
	if err := unix.Mknod(p, unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
}

func opaque(t *testing.T, p string) {
	t.Helper()
	if err := unix.Setxattr(p, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
}

type tarEntry struct {
	hdr  *tar.Header
	body string
}

func readTar(t *testing.T, data []byte) (names []string, entries map[string]tarEntry) {
	t.Helper()
	entries = map[string]tarEntry{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names, entries
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		entries[hdr.Name] = tarEntry{hdr, string(body)}
	}
}

func TestWriteDiff(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	lower1, lower2, upper := filepath.Join(base, "l1"), filepath.Join(base, "l2"), filepath.Join(base, "upper")
	tree(t, lower1, map[string]string{
		"a": "lower a", "b": "lower b", "keep": "keep", "o/y": "lower y", "d/x": "lower x", "d/w": "lower w",
	})
	tree(t, lower2, map[string]string{"fromlower2": "l2", "d/": ""})
	whiteout(t, filepath.Join(lower2, "d/x")) // hidden in the merged lowers
	tree(t, upper, map[string]string{
		"a":   "upper a",   // modified
		"c":   "upper c",   // added
		"o/z": "upper z",   // added in an opaque directory
		"d/x": "upper x",   // added again over a lower whiteout
		"h1":  "hard link", // two names, one inode
	})
	whiteout(t, filepath.Join(upper, "b"))
	opaque(t, filepath.Join(upper, "o"))
	if err := os.Link(filepath.Join(upper, "h1"), filepath.Join(upper, "h2")); err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	if err := WriteDiff(context.Background(), &buf, []string{lower2, lower1}, upper); err != nil {
		t.Fatal(err)
	}
	names, entries := readTar(t, buf.Bytes())
	t.Logf("entries: %q", names)

	want := []string{"a", ".wh.b", "c", "d/", "d/x", "h1", "h2", "o/", "o/.wh..wh..opq", "o/z"}
	got := slices.Clone(names)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("entries %q, want %q", got, want)
	}
	for name, body := range map[string]string{"a": "upper a", "c": "upper c", "o/z": "upper z", "d/x": "upper x", "h1": "hard link"} {
		if e, ok := entries[name]; !ok || e.body != body || e.hdr.Typeflag != tar.TypeReg {
			t.Errorf("%s: %+v", name, e)
		}
	}
	if e := entries["h2"]; e.hdr == nil || e.hdr.Typeflag != tar.TypeLink || e.hdr.Linkname != "h1" {
		t.Errorf("h2: %+v", e.hdr)
	}
	for _, name := range []string{".wh.b", "o/.wh..wh..opq"} {
		if e := entries[name]; e.hdr == nil || e.hdr.Typeflag != tar.TypeReg || e.hdr.Size != 0 {
			t.Errorf("%s: %+v", name, e.hdr)
		}
	}
	// The opaque marker follows its directory, as tar(1) would order it.
	if i, j := slices.Index(names, "o/"), slices.Index(names, "o/.wh..wh..opq"); i < 0 || j < i {
		t.Errorf("o/ at %d, its opaque marker at %d", i, j)
	}

	// The diff applies, with a tar-split, to the same upper directory.
	a := checkRoundTrip(t, buf.Bytes(), buf.Bytes(), Uncompressed)
	var diff2 bytes.Buffer
	if err := WriteDiff(context.Background(), &diff2, []string{lower2, lower1}, a.dir); err != nil {
		t.Fatal(err)
	}
	names2, _ := readTar(t, diff2.Bytes())
	if !slices.Equal(names2, names) {
		t.Errorf("diff of the applied diff: %q, want %q", names2, names)
	}
}

func TestWriteDiffBaseLayer(t *testing.T) {
	requireRoot(t)
	upper := t.TempDir()
	tree(t, upper, map[string]string{"etc/hosts": "localhost", "empty/": ""})
	opaque(t, upper) // a layer hiding everything below it
	for _, lowers := range [][]string{nil, {t.TempDir()}} {
		var buf bytes.Buffer
		if err := WriteDiff(context.Background(), &buf, lowers, upper); err != nil {
			t.Fatal(err)
		}
		names, _ := readTar(t, buf.Bytes())
		if want := []string{".wh..wh..opq", "empty/", "etc/", "etc/hosts"}; !slices.Equal(names, want) {
			t.Errorf("lowers %v: entries %q, want %q", lowers, names, want)
		}
	}
}

func TestWriteDiffBadLower(t *testing.T) {
	requireRoot(t)
	var buf bytes.Buffer
	if err := WriteDiff(context.Background(), &buf, []string{"/tmp/a:b"}, t.TempDir()); err == nil {
		t.Error("a lower with ':' was accepted")
	}
	if err := WriteDiff(context.Background(), &buf, []string{filepath.Join(t.TempDir(), "missing")}, t.TempDir()); err == nil {
		t.Error("a missing lower was accepted")
	}
}

// TestWriteDiffOpaqueOrder: every opaque directory is listed once, before
// its marker, whether it is new, under a new parent, or unchanged.
func TestWriteDiffOpaqueOrder(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	lower, upper := filepath.Join(base, "lower"), filepath.Join(base, "upper")
	tree(t, lower, map[string]string{"u/hidden": "x", "v/hidden": "x"})
	tree(t, upper, map[string]string{"n/o/k": "k", "u/": "", "v/w": "w", "z": "z"})
	for _, d := range []string{"n/o", "u", "v"} {
		opaque(t, filepath.Join(upper, d))
	}
	// u is the same directory as in the lower (mode, size, mtime): the
	// diff reports no change for it, only its marker.
	for _, root := range []string{lower, upper} {
		if err := os.Chtimes(filepath.Join(root, "u"), epochTime, epochTime); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := WriteDiff(context.Background(), &buf, []string{lower}, upper); err != nil {
		t.Fatal(err)
	}
	names, _ := readTar(t, buf.Bytes())
	t.Logf("entries: %q", names)
	want := []string{"n/", "n/o/", "n/o/.wh..wh..opq", "n/o/k", "u/", "u/.wh..wh..opq", "v/", "v/.wh..wh..opq", "v/w", "z"}
	if !slices.Equal(names, want) {
		t.Errorf("entries %q, want %q", names, want)
	}
	checkRoundTrip(t, buf.Bytes(), buf.Bytes(), Uncompressed)
}

func TestWriteDiffCancelled(t *testing.T) {
	requireRoot(t)
	upper := t.TempDir()
	tree(t, upper, map[string]string{"a": "a"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := WriteDiff(ctx, io.Discard, nil, upper); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
