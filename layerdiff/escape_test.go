package layerdiff

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
)

// hostProbe is a path outside any test directory that an escaping entry
// would create; unique per run so that a leftover cannot hide a bug.
var hostProbe = fmt.Sprintf("/tmp/layerdiff-escape-%d", os.Getpid())

// TestApplyContainsEscapes: names with "..", absolute names, writes through
// symlinks to "/" or above the root all land inside dir, and the layer still
// reassembles exactly.
func TestApplyContainsEscapes(t *testing.T) {
	requireRoot(t)
	probe := strings.TrimPrefix(hostProbe, "/")
	data := buildTar(t, []entry{
		fileE("../escape1", "dotdot"),
		fileE("/abs/../../escape2", "absolute"),
		dirE("a/"),
		fileE("a/../../../escape3", "deep dotdot"),
		symlinkE("root", "/"),
		fileE("root/"+probe, "through an absolute symlink"),
		symlinkE("up", "../../.."),
		fileE("up/escape4", "through a relative symlink"),
		symlinkE("a/up2", "../../../../tmp"),
		fileE("a/up2/escape5", "through a nested relative symlink"),
		hardlinkE("hl", "../escape1"),
		hardlinkE("hl2", "root/escape2"),
		fileE("../.wh.escape6", ""), // a whiteout above the root
		fileE("root/.wh..wh..opq", ""),
	}, nil)
	sandbox, dir := layerDir(t)
	a, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{TarSplit: &bytes.Buffer{}})
	if err != nil {
		t.Fatal(err)
	}
	if !a.Reproducible {
		t.Errorf("not reproducible: %s", a.NotReproducible)
	}
	assertNothingEscaped(t, sandbox)

	for name, want := range map[string]string{
		"escape1":     "dotdot",
		"escape2":     "absolute",
		"escape3":     "deep dotdot",
		probe:         "through an absolute symlink",
		"escape4":     "through a relative symlink",
		"tmp/escape5": "through a nested relative symlink",
		"hl":          "dotdot",
		"hl2":         "absolute",
	} {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != want {
			t.Errorf("%s = %q %v, want %q", name, got, err, want)
		}
	}
	if st := lstat(t, filepath.Join(dir, "escape6")); st.Mode&unix.S_IFMT != unix.S_IFCHR {
		t.Errorf("escape6 whiteout: mode %#o", st.Mode)
	}
	if v, ok := getxattr(t, dir, "trusted.overlay.opaque"); !ok || v != "y" {
		t.Errorf("opaque marker through root symlink: %q %v, want the layer root opaque", v, ok)
	}

	// And it reassembles: the payloads are read where they were written.
	var ts bytes.Buffer
	_, dir2 := layerDir(t)
	res, err := Apply(context.Background(), dir2, bytes.NewReader(data), ApplyOptions{TarSplit: &ts})
	if err != nil {
		t.Fatal(err)
	}
	got, err := reassemble(t, dir2, ts.Bytes())
	if err != nil || !bytes.Equal(got, data) || sha(got) != res.UncompressedDigest {
		t.Errorf("reassembly: %v, equal %v", err, bytes.Equal(got, data))
	}
}

// TestApplyRefusesEscapes: what cannot be contained fails, with nothing
// written outside.
func TestApplyRefusesEscapes(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name    string
		entries []entry
		want    []string
	}{
		{"hard link above the root", []entry{hardlinkE("hl", "../../outside")}, []string{`"hl"`, "outside"}},
		{"hard link to the host", []entry{hardlinkE("hl", "/etc/passwd")}, []string{`"hl"`, "passwd"}},
		{"hard link through a symlink", []entry{symlinkE("s", "/"), hardlinkE("hl", "s/etc/passwd")}, []string{`"hl"`}},
		{"whiteout of a parent", []entry{dirE("d/"), fileE("d/.wh..", "")}, []string{"whiteout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sandbox, dir := layerDir(t)
			outside := filepath.Join(sandbox, "outside")
			if err := os.WriteFile(outside, []byte("outside"), 0o644); err != nil {
				t.Fatal(err)
			}
			var passwd unix.Stat_t
			if err := unix.Stat("/etc/passwd", &passwd); err != nil {
				t.Fatal(err)
			}
			_, err := Apply(context.Background(), dir, bytes.NewReader(buildTar(t, tc.entries, nil)), ApplyOptions{TarSplit: &bytes.Buffer{}})
			t.Logf("error: %v", err)
			if !errContains(err, tc.want...) {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
			if st := lstat(t, outside); st.Nlink != 1 {
				t.Errorf("%s has %d links", outside, st.Nlink)
			}
			if st := lstat(t, "/etc/passwd"); st.Nlink != passwd.Nlink {
				t.Errorf("/etc/passwd has %d links, had %d", st.Nlink, passwd.Nlink)
			}
			if err := os.Remove(outside); err != nil {
				t.Fatal(err)
			}
			assertNothingEscaped(t, sandbox)
		})
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
		fileE("dirlink/victim", "overwritten"),
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
	if got, _ := os.ReadFile(filepath.Join(dir, sandbox, "victim")); string(got) != "overwritten" {
		t.Errorf("dirlink/victim did not land in the layer: %q", got)
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
