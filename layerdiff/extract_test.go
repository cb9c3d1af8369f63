package layerdiff

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestApplyOwnersInSetgidDirectory: the extractor skips chown when a new
// inode already has the entry's owner; in a set-group-ID directory it takes
// the directory's group instead, so chown is needed there.
func TestApplyOwnersInSetgidDirectory(t *testing.T) {
	requireRoot(t)
	sg := dirE("sg/")
	sg.hdr.Mode = 0o2775
	sg.hdr.Gid = 1234
	sub := dirE("sg/sub/")
	data := buildTar(t, []entry{
		sg, fileE("sg/f", "root's"), sub, symlinkE("sg/l", "f"),
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "sg/fifo", Mode: 0o600}},
		fileE("plain", "root's too"),
	}, nil)
	a := checkRoundTrip(t, data, data, Uncompressed)
	for _, name := range []string{"sg/f", "sg/sub", "sg/l", "sg/fifo", "plain"} {
		if st := lstat(t, filepath.Join(a.dir, name)); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s: owner %d:%d, want 0:0", name, st.Uid, st.Gid)
		}
	}
	if st := lstat(t, filepath.Join(a.dir, "sg")); st.Mode&0o7777 != 0o2775 || st.Gid != 1234 {
		t.Errorf("sg: mode %#o gid %d", st.Mode&0o7777, st.Gid)
	}
}

// TestApplySetgidParentFromLower: a directory the tar implies takes its
// attributes, set-group-ID included, from a lower layer; files in it keep
// their own group.
func TestApplySetgidParentFromLower(t *testing.T) {
	requireRoot(t)
	lower := t.TempDir()
	if err := os.Mkdir(filepath.Join(lower, "srv"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(lower, "srv"), 33, 34); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(lower, "srv"), 0o750|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	data := buildTar(t, []entry{fileE("srv/index.html", "hi")}, nil)
	_, dir := layerDir(t)
	if _, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{Parents: []string{lower}}); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, filepath.Join(dir, "srv")); st.Mode&0o7777 != 0o2750 || st.Gid != 34 {
		t.Errorf("srv: mode %#o gid %d", st.Mode&0o7777, st.Gid)
	}
	if st := lstat(t, filepath.Join(dir, "srv/index.html")); st.Uid != 0 || st.Gid != 0 {
		t.Errorf("srv/index.html: owner %d:%d, want 0:0", st.Uid, st.Gid)
	}
}

// TestApplyReplacesWhatIsThere: entries over what the directory already
// holds (a file, a directory with content, a symlink, a file over a
// directory) replace it as archive.Apply does; the files keep their mode,
// owner and time whatever the umask.
func TestApplyReplacesWhatIsThere(t *testing.T) {
	requireRoot(t)
	_, dir := layerDir(t)
	for name, body := range map[string]string{"file": "old", "dir/inner": "old", "todir": "old"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	f := fileE("file", "new")
	f.hdr.Mode = 0o777
	f.hdr.Uid, f.hdr.Gid = 7, 8
	f.hdr.ModTime = time.Unix(1600000000, 5)
	f.hdr.Format = tar.FormatPAX
	data := buildTar(t, []entry{f, fileE("dir", "a file now"), fileE("link", "not through it"), dirE("todir/")}, nil)
	var ts bytes.Buffer
	res, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{TarSplit: &ts})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Reproducible {
		t.Errorf("not reproducible: %s", res.NotReproducible)
	}
	if st := lstat(t, filepath.Join(dir, "file")); st.Mode&0o7777 != 0o777 || st.Uid != 7 || st.Gid != 8 || st.Mtim.Sec != 1600000000 || st.Mtim.Nsec != 5 {
		t.Errorf("file: mode %#o owner %d:%d mtime %d.%d", st.Mode&0o7777, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec)
	}
	for name, want := range map[string]string{"file": "new", "dir": "a file now", "link": "not through it"} {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != want {
			t.Errorf("%s: %q %v, want %q", name, got, err, want)
		}
	}
	if fi, err := os.Lstat(filepath.Join(dir, "todir")); err != nil || !fi.IsDir() {
		t.Errorf("todir: %v %v", fi, err)
	}
	if got, err := reassemble(t, dir, ts.Bytes()); err != nil || !bytes.Equal(got, data) {
		t.Errorf("Reassemble: %d bytes, %v", len(got), err)
	}
}

// TestApplyHandsOverWhatItHas: bytes the parser has read reach the
// extractor before the parser waits for more input, however few they are.
// The input here sends the rest of the layer only once the first file is
// on disk.
func TestApplyHandsOverWhatItHas(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, []entry{fileE("first", "small"), fileE("second", "more")}, nil)
	cut := 3 * 512 // the first header, its content block, the second header
	_, dir := layerDir(t)
	pr, pw := io.Pipe()
	go func() {
		pw.Write(data[:cut])
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if _, err := os.Lstat(filepath.Join(dir, "first")); err == nil {
				pw.Write(data[cut:])
				pw.Close()
				return
			}
		}
		pw.CloseWithError(errors.New("the first file was not extracted before the rest came"))
	}()
	var ts bytes.Buffer
	if _, err := Apply(context.Background(), dir, pr, ApplyOptions{TarSplit: &ts}); err != nil {
		t.Fatal(err)
	}
	if got, err := reassemble(t, dir, ts.Bytes()); err != nil || !bytes.Equal(got, data) {
		t.Errorf("Reassemble: %d bytes, %v", len(got), err)
	}
}

// TestApplyModeUnderDefaultACL: a default ACL, not the umask, masks the mode
// of files created in its directory; the extractor, which skips chmod when
// creation alone gives the mode, must not skip it there. The directory gets
// its ACL from its entry's xattrs, in a second entry after a first file.
func TestApplyModeUnderDefaultACL(t *testing.T) {
	requireRoot(t)
	// posix_acl_xattr: version 2, then (tag, perm, id) entries: owner rwx,
	// group r-x, other ---.
	acl := make([]byte, 4+3*8)
	binary.LittleEndian.PutUint32(acl, 2)
	for i, e := range [][2]uint16{{0x01, 7}, {0x04, 5}, {0x20, 0}} {
		binary.LittleEndian.PutUint16(acl[4+8*i:], e[0])
		binary.LittleEndian.PutUint16(acl[6+8*i:], e[1])
		binary.LittleEndian.PutUint32(acl[8+8*i:], 0xffffffff)
	}
	probe := t.TempDir()
	if err := unix.Setxattr(probe, "system.posix_acl_default", acl, 0); err != nil {
		t.Skipf("no default ACLs here: %v", err)
	}
	data := buildTar(t, []entry{
		dirE("d/"), fileE("d/before", "x"), withDefaultACL("d/", acl), fileE("d/after", "y"),
		withDefaultACL("e/", acl), fileE("e/f", "z"),
	}, nil)
	// tar-split refuses the second "d/": apply without one.
	_, dir := layerDir(t)
	if _, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d/before", "d/after", "e/f"} {
		if st := lstat(t, filepath.Join(dir, name)); st.Mode&0o7777 != 0o644 {
			t.Errorf("%s: mode %#o, want 0644", name, st.Mode&0o7777)
		}
	}
}

func withDefaultACL(name string, acl []byte) entry {
	e := dirE(name)
	e.hdr.PAXRecords = map[string]string{"SCHILY.xattr.system.posix_acl_default": string(acl)}
	return e
}
