package layerdiff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/continuity/fs"
	"github.com/klauspost/compress/gzip"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
)

// hostProbe is a path outside any test directory that an escaping entry
// would create; unique per run so that a leftover cannot hide a bug.
var hostProbe = fmt.Sprintf("/tmp/layerdiff-escape-%d", os.Getpid())

// TestApplyRefusesEscapes: every entry that would land outside dir if
// extracted naively — what containerd's archive.Apply would have had to
// contain — fails with ErrEscape, naming the entry, before it is written.
func TestApplyRefusesEscapes(t *testing.T) {
	requireRoot(t)
	probe := strings.TrimPrefix(hostProbe, "/")
	for _, tc := range []struct {
		name    string
		entries []entry
		entry   string // the entry the error names, as archive.Apply cleaned it
		want    string // and what it says
	}{
		{"dotdot", []entry{fileE("../escape1", "dotdot")}, "../escape1", "name"},
		{"dotdot alone", []entry{dirE("../")}, "..", "name"},
		{"deep dotdot", []entry{dirE("a/"), fileE("a/../../escape3", "deep")}, "../escape3", "name"},
		{"whiteout above the root", []entry{fileE("../.wh.escape6", "")}, "../.wh.escape6", "name"},
		{"through an absolute symlink", []entry{
			symlinkE("root", "/"), fileE("root/"+probe, "x"),
		}, "root/" + probe, `symlink "root" -> "/"`},
		{"through an absolute symlink to a directory", []entry{
			symlinkE("tmp", "/tmp"), fileE("tmp/escape5", "x"),
		}, "tmp/escape5", "absolute"},
		{"through a relative symlink", []entry{
			symlinkE("up", "../../.."), fileE("up/escape4", "x"),
		}, "up/escape4", `symlink "up" -> "../../.."`},
		{"through a nested relative symlink", []entry{
			dirE("a/"), symlinkE("a/up2", "../../../../tmp"), fileE("a/up2/escape5", "x"),
		}, "a/up2/escape5", `"a/up2"`},
		{"through a chain of symlinks", []entry{
			dirE("d/"), symlinkE("d/l1", "l2"), symlinkE("d/l2", "../l3"), symlinkE("l3", ".."),
			fileE("d/l1/escape4", "x"),
		}, "d/l1/escape4", `symlink "l3" -> ".."`},
		{"through a symlink deeper in the path", []entry{
			symlinkE("root", "/"), fileE("root/tmp/escape5", "x"),
		}, "root/tmp/escape5", "root"},
		{"directory through a symlink", []entry{symlinkE("root", "/"), dirE("root/escape1/")}, "root/escape1", "parent"},
		{"symlink through a symlink", []entry{symlinkE("up", ".."), symlinkE("up/escape1", "/")}, "up/escape1", "parent"},
		{"whiteout through a symlink", []entry{symlinkE("root", "/"), fileE("root/.wh.escape1", "")}, "root/.wh.escape1", "parent"},
		{"opaque marker through a symlink", []entry{symlinkE("root", "/"), fileE("root/.wh..wh..opq", "")}, "root/.wh..wh..opq", "parent"},
		{"symlink replaced by one that escapes", []entry{
			// The second symlink replaces the first under another name
			// (tar-split refuses two entries with one name).
			dirE("d/"), symlinkE("l", "d"), fileE("l/ok", "inside"), symlinkE("self", "."),
			symlinkE("self/l", "/"), fileE("l/escape1", "x"),
		}, "l/escape1", "absolute"},
		{"hard link above the root", []entry{hardlinkE("hl", "../../outside")}, "hl", "hard link target"},
		{"hard link with dotdot inside", []entry{dirE("a/"), hardlinkE("hl", "a/../../outside")}, "hl", "hard link target"},
		{"hard link through a symlink", []entry{symlinkE("s", "/"), hardlinkE("hl", "s/etc/passwd")}, "hl", `symlink "s" -> "/"`},
		{"hard link through a relative symlink", []entry{symlinkE("s", ".."), hardlinkE("hl", "s/outside")}, "hl", "hard link target"},
		{"hard link target dotdot after a symlink", []entry{
			dirE("d/"), symlinkE("s", "d"), hardlinkE("hl", "s/../../outside"),
		}, "hl", "hard link target"},
		{"hard link through a symlink, absolute", []entry{
			dirE("etc/"), symlinkE("etc/up", "../.."), hardlinkE("hl", "/etc/up/outside"),
		}, "hl", `"etc/up" -> "../.."`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sandbox, dir := layerDir(t)
			_, err := applyHostile(t, sandbox, dir, buildTar(t, tc.entries, nil), nil)
			t.Logf("error: %v", err)
			if !errors.Is(err, ErrEscape) || !errContains(err, fmt.Sprintf("entry %q", tc.entry), tc.want) {
				t.Errorf("error %v, want ErrEscape naming entry %q and %q", err, tc.entry, tc.want)
			}
		})
	}
}

// applyHostile applies data to dir with a tar-split, with a file "outside"
// next to dir (for hard links to aim at), and checks that nothing outside
// dir was created or linked to.
func applyHostile(t *testing.T, sandbox, dir string, data []byte, parents []string) (ApplyResult, error) {
	t.Helper()
	outside := filepath.Join(sandbox, "outside")
	if err := os.WriteFile(outside, []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	var passwd unix.Stat_t
	if err := unix.Stat("/etc/passwd", &passwd); err != nil {
		t.Fatal(err)
	}
	res, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{TarSplit: &bytes.Buffer{}, Parents: parents})
	if st := lstat(t, outside); st.Nlink != 1 {
		t.Errorf("%s has %d links", outside, st.Nlink)
	}
	if got, _ := os.ReadFile(outside); string(got) != "outside" {
		t.Errorf("%s = %q", outside, got)
	}
	if st := lstat(t, "/etc/passwd"); st.Nlink != passwd.Nlink {
		t.Errorf("/etc/passwd has %d links, had %d", st.Nlink, passwd.Nlink)
	}
	if err := os.Remove(outside); err != nil {
		t.Fatal(err)
	}
	assertNothingEscaped(t, sandbox)
	return res, err
}

// TestApplyRefusesEscapesThroughExisting: symlinks the upper directory
// already holds, or the lower directories do, count as the layer's own.
func TestApplyRefusesEscapesThroughExisting(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name         string
		upper, lower []entry // applied first, without checks of their own
		entries      []entry
		entry, want  string // "" if the layer applies
	}{
		{"symlink in the upper dir", []entry{symlinkE("pre", "/")}, nil,
			[]entry{fileE("pre/escape1", "x")}, "pre/escape1", `symlink "pre" -> "/"`},
		{"symlink in a lower dir", nil, []entry{symlinkE("lib", "/tmp")},
			[]entry{fileE("lib/escape5", "x")}, "lib/escape5", "in lower"},
		{"relative symlink in a lower dir", nil, []entry{dirE("usr/"), symlinkE("usr/lib", "../../../..")},
			[]entry{fileE("usr/lib/escape1", "x")}, "usr/lib/escape1", `symlink "usr/lib" -> "../../../.." (in lower`},
		{"symlink in a lower dir merged under an upper dir", []entry{dirE("usr/")}, []entry{dirE("usr/"), symlinkE("usr/l", "/")},
			[]entry{fileE("usr/l/escape1", "x")}, "usr/l/escape1", "in lower"},
		{"hard link through a lower symlink", nil, []entry{symlinkE("s", "/")},
			[]entry{hardlinkE("hl", "s/etc/passwd")}, "hl", "in lower"},
		// What overlay would not show of a lower symlink is not followed.
		{"lower symlink under an upper directory", []entry{dirE("lib/")}, []entry{symlinkE("lib", "/tmp")},
			[]entry{fileE("lib/inside", "x")}, "", ""},
		{"lower symlink replaced by the layer", nil, []entry{symlinkE("lib", "/tmp")},
			[]entry{dirE("lib/"), fileE("lib/inside", "x")}, "", ""},
		{"lower symlink under an opaque directory", []entry{dirE("usr/"), fileE("usr/.wh..wh..opq", "")}, []entry{dirE("usr/"), symlinkE("usr/l", "/")},
			[]entry{fileE("usr/l/inside", "x")}, "", ""},
		{"lower symlink inside the root", nil, []entry{dirE("usr/"), dirE("usr/lib/"), symlinkE("lib", "usr/lib")},
			[]entry{fileE("lib/inside", "x")}, "", ""},
		// Directories verified for earlier entries, then changed.
		{"verified directory replaced by a symlink", []entry{dirE("a/"), dirE("a/b/")}, nil,
			[]entry{fileE("a/b/f", "x"), symlinkE("a/b", "/"), fileE("a/b/escape1", "x")}, "a/b/escape1", `symlink "a/b" -> "/"`},
		{"verified directory's parent replaced by a symlink", []entry{dirE("a/"), dirE("a/b/"), dirE("a/b/c/")}, nil,
			[]entry{fileE("a/b/c/f", "x"), symlinkE("a/b", "/"), fileE("a/b/c/escape1", "x")}, "a/b/c/escape1", `symlink "a/b" -> "/"`},
		{"verified directory's parent replaced by a hard link to a symlink", []entry{dirE("a/"), dirE("a/b/"), dirE("a/b/c/"), symlinkE("s", "/")}, nil,
			[]entry{fileE("a/b/c/f", "x"), hardlinkE("a/b", "s"), fileE("a/b/c/escape1", "x")}, "a/b/c/escape1", `symlink "a/b" -> "/"`},
		{"target of a verified symlink replaced", []entry{dirE("a/")}, nil,
			[]entry{symlinkE("l", "a"), fileE("l/f", "x"), symlinkE("a", "/"), fileE("l/escape1", "x")}, "l/escape1", `symlink "a" -> "/"`},
		{"lower symlink uncovered under a verified directory", []entry{dirE("u/"), dirE("u/d/"), fileE("u/.wh.l", "")}, []entry{dirE("u/"), symlinkE("u/l", "/")},
			[]entry{fileE("u/d/f", "x"), dirE("u/l/"), fileE("u/l/inside", "x")}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sandbox, dir := layerDir(t)
			lower := t.TempDir()
			for _, pre := range []struct {
				dir     string
				entries []entry
			}{{dir, tc.upper}, {lower, tc.lower}} {
				if len(pre.entries) == 0 {
					continue
				}
				if _, err := Apply(context.Background(), pre.dir, bytes.NewReader(buildTar(t, pre.entries, nil)), ApplyOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			parents := []string{lower}
			if tc.lower == nil {
				parents = nil
			}
			data := buildTar(t, tc.entries, nil)
			res, err := applyHostile(t, sandbox, dir, data, parents)
			t.Logf("error: %v", err)
			if tc.entry == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !res.Reproducible {
					t.Errorf("not reproducible: %s", res.NotReproducible)
				}
				return
			}
			if !errors.Is(err, ErrEscape) || !errContains(err, fmt.Sprintf("entry %q", tc.entry), tc.want) {
				t.Errorf("error %v, want ErrEscape naming entry %q and %q", err, tc.entry, tc.want)
			}
		})
	}
}

// TestApplyAllowsWhatStaysInside: absolute symlink targets, "./" prefixes,
// ".." that stays inside, absolute names and hard link targets (taken
// relative to the root, as containers/storage does), symlinks that escape
// but are not written through, and writes through symlinks that stay inside
// all apply and reassemble bit for bit.
func TestApplyAllowsWhatStaysInside(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, []entry{
		dirE("./"),
		dirE("./bin/"),
		fileE("./bin/busybox", "busybox"),
		symlinkE("./bin/sh", "/bin/busybox"),
		dirE("./etc/"),
		fileE("./etc/hosts", "hosts"),
		symlinkE("etc/abs", "/etc/hosts"),
		symlinkE("root", "/"),
		symlinkE("up", "../../.."),
		symlinkE("etc/dangling", "/nowhere"),
		dirE("a/"),
		dirE("a/b/"),
		fileE("a/b/../c", "dotdot inside"),
		fileE("a/b/./d", "dot inside"),
		fileE("/abs/name", "absolute name"),
		fileE("/x/../../rooted", "absolute name with dotdot"),
		hardlinkE("hl-abs", "/etc/hosts"),
		hardlinkE("hl-dotdot", "a/b/../c"),
		hardlinkE("hl-rooted", "/../etc/hosts"),
		dirE("usr/"),
		dirE("usr/lib/"),
		symlinkE("lib", "usr/lib"),
		fileE("lib/through", "through an inside symlink"),
		symlinkE("a/b/top", "../.."),
		fileE("a/b/top/via-top", "through a symlink to the root"),
		hardlinkE("hl-through", "lib/through"),
		symlinkE("dirlink", "a"),
		fileE("a/after", "not through the link"),
	}, nil)
	sandbox, _ := layerDir(t)
	a := checkRoundTrip(t, data, data, Uncompressed)
	assertNothingEscaped(t, sandbox)
	for name, want := range map[string]string{
		"bin/sh":          "busybox",
		"a/c":             "dotdot inside",
		"a/b/d":           "dot inside",
		"abs/name":        "absolute name",
		"rooted":          "absolute name with dotdot",
		"hl-abs":          "hosts",
		"hl-dotdot":       "dotdot inside",
		"hl-rooted":       "hosts",
		"usr/lib/through": "through an inside symlink",
		"via-top":         "through a symlink to the root",
		"hl-through":      "through an inside symlink",
		"dirlink/after":   "not through the link",
	} {
		p, err := fs.RootPath(a.dir, name)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(p); err != nil || string(got) != want {
			t.Errorf("%s = %q %v, want %q", name, got, err, want)
		}
	}
	for name, want := range map[string]string{"bin/sh": "/bin/busybox", "root": "/", "up": "../../..", "lib": "usr/lib"} {
		if got, err := os.Readlink(filepath.Join(a.dir, name)); err != nil || got != want {
			t.Errorf("%s -> %q %v, want %q", name, got, err, want)
		}
	}
}

// TestApplyReplacesSymlinkNotTarget: an entry named like an existing
// symlink replaces the symlink; the file it points to is untouched.
func TestApplyReplacesSymlinkNotTarget(t *testing.T) {
	requireRoot(t)
	sandbox, dir := layerDir(t)
	victim := filepath.Join(sandbox, "victim")
	if err := os.WriteFile(victim, []byte("original"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := buildTar(t, []entry{
		symlinkE("link", victim),
		fileE("link", "overwritten"), // a duplicate: only without tar-split
		symlinkE("dirlink", sandbox),
		fileE("dirlink", "replaced"),
	}, nil)
	if _, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(victim); string(got) != "original" {
		t.Errorf("victim = %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "link")); string(got) != "overwritten" {
		t.Errorf("link = %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "dirlink")); string(got) != "replaced" {
		t.Errorf("dirlink = %q", got)
	}
	// Writing through it is refused.
	data = buildTar(t, []entry{symlinkE("dirlink", sandbox), fileE("dirlink/victim", "overwritten")}, nil)
	_, dir2 := layerDir(t)
	if _, err := Apply(context.Background(), dir2, bytes.NewReader(data), ApplyOptions{}); !errors.Is(err, ErrEscape) || !errContains(err, `"dirlink/victim"`) {
		t.Errorf("through dirlink: %v", err)
	}
	if got, _ := os.ReadFile(victim); string(got) != "original" {
		t.Errorf("victim = %q", got)
	}
}

// assertNothingEscaped checks the sandbox holds only the layer directory and
// that the host probe was not created.
func assertNothingEscaped(t *testing.T, sandbox string) {
	t.Helper()
	entries, err := os.ReadDir(sandbox)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "layer" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("sandbox holds %v, want only layer", names)
	}
	for _, p := range []string{hostProbe, "/escape1", "/escape2", "/escape3", "/escape4", "/tmp/escape5", "/escape6"} {
		if _, err := os.Lstat(p); err == nil {
			os.Remove(p)
			t.Errorf("%s was created outside the layer", p)
		}
	}
}

// craftTarSplit writes a tar-split with one file entry.
func craftTarSplit(t *testing.T, name string, size int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	p := storage.NewJSONPacker(zw)
	if _, err := p.AddEntry(storage.Entry{Type: storage.SegmentType, Payload: make([]byte, 512)}); err != nil {
		t.Fatal(err)
	}
	e := storage.Entry{Type: storage.FileType, Size: size, Payload: make([]byte, 8)}
	e.SetName(name)
	if _, err := p.AddEntry(e); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReassembleStaysInside: a tar-split naming paths through symlinks out
// of the layer, or special files, fails without reading them.
func TestReassembleStaysInside(t *testing.T) {
	requireRoot(t)
	hostFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(hostFile, []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := applyLayer(t, buildTar(t, []entry{
		symlinkE("root", "/"),
		symlinkE("secretlink", hostFile),
		dirE("d/"),
	}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(a.dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(a.dir, "zero"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5))); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"root" + hostFile, "../../../../" + hostFile, hostFile, "secretlink", "root/etc/passwd",
		"fifo", "zero", "d", ".", "",
	} {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			done := make(chan struct{})
			var got []byte
			var err error
			go func() {
				defer close(done)
				got, err = reassemble(t, a.dir, craftTarSplit(t, name, 11))
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Reassemble hangs")
			}
			t.Logf("error: %v", err)
			if err == nil || bytes.Contains(got, []byte("host secret")) {
				t.Errorf("read %q, error %v", got, err)
			}
		})
	}
}

func TestReassembleBadTarSplit(t *testing.T) {
	dir := t.TempDir()
	if _, err := Reassemble(dir, strings.NewReader("not gzip")); !errContains(err, "tar-split") {
		t.Errorf("not gzip: %v", err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(`{"type":2,"payload":"AAAA"`)) // cut JSON
	zw.Close()
	if _, err := reassemble(t, dir, buf.Bytes()); err == nil {
		t.Error("truncated JSON: no error")
	}
	if _, err := Reassemble(filepath.Join(dir, "missing"), bytes.NewReader(craftTarSplit(t, "x", 1))); err == nil {
		t.Error("missing dir: no error")
	}
}

// TestReassembleClose: closing early stops the reassembly.
func TestReassembleClose(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, []entry{fileE("big", strings.Repeat("x", 1<<20)), fileE("big2", strings.Repeat("y", 1<<20))}, nil)
	a, err := applyLayer(t, data)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := Reassemble(a.dir, bytes.NewReader(a.tarSplit))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1000)
	if _, err := rc.Read(buf); err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Read(buf); err == nil {
		t.Error("read after Close")
	}
}

// TestReassembleChangedFile: a file of the layer whose content or size
// changed since it was applied fails the reassembly, naming it, rather
// than yield other bytes; Close without reading releases everything.
func TestReassembleChangedFile(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, []entry{fileE("dir/a", "first file"), fileE("dir/b", "second file")}, nil)
	for _, tc := range []struct {
		name   string
		change func(path string) error
		want   []string
	}{
		{"grown", func(p string) error { return os.WriteFile(p, []byte("second file, longer"), 0o644) }, []string{"dir/b", "19 bytes, the tar recorded 11"}},
		{"truncated", func(p string) error { return os.Truncate(p, 3) }, []string{"dir/b", "3 bytes"}},
		{"same size, other bytes", func(p string) error { return os.WriteFile(p, []byte("SECOND FILE"), 0o644) }, []string{"checksum", "dir/b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := applyLayer(t, data)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.change(filepath.Join(a.dir, "dir", "b")); err != nil {
				t.Fatal(err)
			}
			got, err := reassemble(t, a.dir, a.tarSplit)
			if !errContains(err, tc.want...) {
				t.Errorf("error %v, want one naming %q", err, tc.want)
			}
			if bytes.Contains(got, []byte("SECOND")) || bytes.Contains(got, []byte("longer")) {
				t.Errorf("the changed content came out: %q", got)
			}
			if a, err := os.ReadFile(filepath.Join(a.dir, "dir", "a")); err != nil || string(a) != "first file" {
				t.Errorf("the layer's other file: %q %v", a, err)
			}
		})
	}
	a, err := applyLayer(t, data)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := Reassemble(a.dir, bytes.NewReader(a.tarSplit))
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Errorf("Close before any read: %v", err)
	}
	if n, err := io.Copy(io.Discard, rc); n != 0 || err == nil {
		t.Errorf("copy after Close: %d bytes, %v", n, err)
	}
}
