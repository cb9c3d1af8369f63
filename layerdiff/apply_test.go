package layerdiff

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// capability is a valid VFS_CAP_REVISION_2 security.capability value
// (effective, permitted CAP_NET_BIND_SERVICE); the kernel rejects
// malformed ones.
func capability() string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000001)
	binary.LittleEndian.PutUint32(b[4:], 1<<unix.CAP_NET_BIND_SERVICE)
	return string(b)
}

var (
	longComponent = strings.Repeat("l", 150)                                                                   // > 100: needs PAX or GNU
	longPath      = strings.Repeat("a", 100) + "/" + strings.Repeat("b", 100) + "/" + strings.Repeat("c", 100) // > 255
)

// kindsLayer has every kind of entry a layer can hold.
func kindsLayer() []entry {
	setuid := fileE("bin/su", "#!/bin/sh\n")
	setuid.hdr.Mode = 0o4755
	owned := fileE("home/user/owned", "mine")
	owned.hdr.Uid, owned.hdr.Gid = 1000, 1001
	bigID := fileE("home/user/bigid", "pax uid")
	bigID.hdr.Uid, bigID.hdr.Gid = 3000000, 3000001 // beyond ustar's 7 octal digits: a PAX record
	xattrs := fileE("usr/bin/ping", "ping")
	xattrs.hdr.PAXRecords = map[string]string{
		"SCHILY.xattr.user.comment":         "hello",
		"SCHILY.xattr.security.capability":  capability(),
		"SCHILY.xattr.trusted.overlay.evil": "y", // refused by containerd: never honoured from a tar
	}
	paxTime := fileE("pax/mtime", "nanoseconds")
	paxTime.hdr.ModTime = time.Unix(1700000000, 123456789)
	paxTime.hdr.Format = tar.FormatPAX
	gnuLong := fileE("gnu/"+longComponent, "gnu long name")
	gnuLong.hdr.Format = tar.FormatGNU
	whiteout := fileE("etc/.wh.removed", "")
	whiteout.hdr.Uid, whiteout.hdr.Gid = 555, 556 // not in UIDs/GIDs
	charDev := entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}}
	blockDev := entry{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop9", Mode: 0o660, Devmajor: 7, Devminor: 9, Gid: 6}}
	fifo := entry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600}}
	globalPAX := entry{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "global"}}}
	return []entry{
		globalPAX,
		dirE("./"),
		dirE("bin/"), setuid,
		dirE("dev/"), charDev, blockDev,
		dirE("etc/"), fileE("etc/hosts", "127.0.0.1 localhost\n"), whiteout,
		fileE("etc/empty", ""),
		hardlinkE("etc/hosts.link", "etc/hosts"),
		symlinkE("etc/rel", "hosts"),
		symlinkE("etc/abs", "/etc/hosts"),
		symlinkE("etc/dangling", "/nowhere/at/all"),
		symlinkE("etc/longtarget", "/"+longPath),
		hardlinkE("etc/rel.link", "etc/rel"), // a hard link to a symlink
		dirE("home/"), dirE("home/user/"), owned, bigID,
		dirE("opq/"), fileE("opq/.wh..wh..opq", ""), fileE("opq/kept", "after the opaque marker"),
		dirE("run/"), fifo,
		dirE("usr/"), dirE("usr/bin/"), xattrs,
		paxTime, gnuLong,
		fileE(longPath, "deep"),
		fileE("pax/"+longComponent, "pax long name"),
	}
}

func TestApplyReassembleKinds(t *testing.T) {
	requireRoot(t)
	// Trailing zeros as tar(1)'s 10 KiB blocking leaves them, plus bytes
	// that are not zeros: all of it is part of the layer's digest.
	trailer := append(make([]byte, 8192), "trailing garbage"...)
	data := buildTar(t, kindsLayer(), trailer)
	a := checkRoundTrip(t, data, data, Uncompressed)
	dir := a.dir

	if want := []uint32{0, 1000, 3000000}; !slices.Equal(a.res.UIDs, want) {
		t.Errorf("UIDs = %v, want %v", a.res.UIDs, want)
	}
	if want := []uint32{0, 6, 1001, 3000001}; !slices.Equal(a.res.GIDs, want) {
		t.Errorf("GIDs = %v, want %v", a.res.GIDs, want)
	}

	// What the overlay upper directory holds.
	st := lstat(t, filepath.Join(dir, "etc/removed"))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout: mode %#o rdev %d, want a 0/0 char device", st.Mode, st.Rdev)
	}
	if _, err := os.Lstat(filepath.Join(dir, "etc/.wh.removed")); !os.IsNotExist(err) {
		t.Errorf("the .wh. file itself exists: %v", err)
	}
	if v, ok := getxattr(t, filepath.Join(dir, "opq"), "trusted.overlay.opaque"); !ok || v != "y" {
		t.Errorf("opq: trusted.overlay.opaque = %q %v, want y", v, ok)
	}
	if _, err := os.Lstat(filepath.Join(dir, "opq/.wh..wh..opq")); !os.IsNotExist(err) {
		t.Errorf("the opaque marker itself exists: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "opq/kept")); err != nil {
		t.Errorf("opq/kept: %v", err)
	}
	if a, b := lstat(t, filepath.Join(dir, "etc/hosts")), lstat(t, filepath.Join(dir, "etc/hosts.link")); a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard link: inodes %d %d nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	if a, b := lstat(t, filepath.Join(dir, "etc/rel")), lstat(t, filepath.Join(dir, "etc/rel.link")); a.Ino != b.Ino || a.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("hard link to a symlink: inodes %d %d mode %#o", a.Ino, b.Ino, a.Mode)
	}
	for name, want := range map[string]string{"etc/rel": "hosts", "etc/abs": "/etc/hosts", "etc/dangling": "/nowhere/at/all", "etc/longtarget": "/" + longPath} {
		if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != want {
			t.Errorf("readlink %s = %q %v, want %q", name, got, err, want)
		}
	}
	if st := lstat(t, filepath.Join(dir, "dev/null")); st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null: mode %#o rdev %d:%d", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if st := lstat(t, filepath.Join(dir, "dev/loop9")); st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != 7 || unix.Minor(st.Rdev) != 9 || st.Gid != 6 {
		t.Errorf("dev/loop9: mode %#o rdev %d:%d gid %d", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), st.Gid)
	}
	if st := lstat(t, filepath.Join(dir, "run/fifo")); st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("run/fifo: mode %#o", st.Mode)
	}
	if st := lstat(t, filepath.Join(dir, "bin/su")); st.Mode&0o7777 != 0o4755 {
		t.Errorf("bin/su: mode %#o, want 4755", st.Mode&0o7777)
	}
	if st := lstat(t, filepath.Join(dir, "home/user/owned")); st.Uid != 1000 || st.Gid != 1001 {
		t.Errorf("owned: %d:%d", st.Uid, st.Gid)
	}
	if st := lstat(t, filepath.Join(dir, "home/user/bigid")); st.Uid != 3000000 || st.Gid != 3000001 {
		t.Errorf("bigid: %d:%d", st.Uid, st.Gid)
	}
	ping := filepath.Join(dir, "usr/bin/ping")
	if v, ok := getxattr(t, ping, "user.comment"); !ok || v != "hello" {
		t.Errorf("user.comment = %q %v", v, ok)
	}
	if v, ok := getxattr(t, ping, "security.capability"); !ok || v != capability() {
		t.Errorf("security.capability = %x %v", v, ok)
	}
	if _, ok := getxattr(t, ping, "trusted.overlay.evil"); ok {
		t.Error("a trusted.* xattr from the tar was set")
	}
	if st := lstat(t, filepath.Join(dir, "pax/mtime")); st.Mtim.Nsec != 123456789 {
		t.Errorf("pax/mtime: nsec %d", st.Mtim.Nsec)
	}
	for _, name := range []string{"gnu/" + longComponent, "pax/" + longComponent, longPath} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			t.Errorf("long name: %v", err)
		}
	}
}

// TestApplyCompressions applies the same layer in every compression.
func TestApplyCompressions(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, smallLayer(), nil)
	for _, c := range []Compression{Uncompressed, Gzip, Zstd, Xz} {
		t.Run(c.String(), func(t *testing.T) {
			checkRoundTrip(t, data, compress(t, c, data), c)
		})
	}
	// bzip2 has no Go writer, and xz(1) makes other choices than
	// ulikunitz/xz: blobs made by the command-line tools from smallLayer.
	for name, c := range map[string]Compression{"small.tar.bz2": Bzip2, "small.tar.xz": Xz, "small.tar.zst": Zstd} {
		t.Run(name, func(t *testing.T) {
			blob, err := os.ReadFile(filepath.Join("testdata", name))
			if err != nil {
				t.Fatal(err)
			}
			checkRoundTrip(t, data, blob, c)
		})
	}
	t.Run("multistream-gzip", func(t *testing.T) {
		// gzip(1) decompresses concatenated members as one stream.
		half := len(data) / 2
		blob := append(compress(t, Gzip, data[:half]), compress(t, Gzip, data[half:])...)
		checkRoundTrip(t, data, blob, Gzip)
	})
	t.Run("no end-of-archive marker", func(t *testing.T) {
		cut := data[:len(data)-1024]
		checkRoundTrip(t, cut, compress(t, Gzip, cut), Gzip)
	})
	t.Run("empty", func(t *testing.T) {
		a := checkRoundTrip(t, nil, nil, Uncompressed)
		if len(listTree(t, a.dir)) != 1 {
			t.Errorf("an empty layer wrote %v", listTree(t, a.dir))
		}
	})
}

// smallLayer is the layer the compressed testdata hold.
func smallLayer() []entry {
	return []entry{
		dirE("etc/"),
		fileE("etc/os-release", "ID=layerdiff\n"),
		fileE("etc/.wh.passwd", ""),
		symlinkE("etc/link", "os-release"),
		fileE("data", strings.Repeat("compressible ", 2000)),
	}
}

func TestApplyRecordsNothingWithoutTarSplit(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, smallLayer(), nil)
	_, dir := layerDir(t)
	res, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reproducible || res.UncompressedDigest != sha(data) {
		t.Errorf("result %+v", res)
	}
}

// TestApplyParents: directories a layer implies take their attributes from
// the lower layers, not root 0755.
func TestApplyParents(t *testing.T) {
	requireRoot(t)
	lower := t.TempDir()
	if err := os.Mkdir(filepath.Join(lower, "srv"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(lower, "srv"), 33, 34); err != nil {
		t.Fatal(err)
	}
	data := buildTar(t, []entry{fileE("srv/www/index.html", "hi")}, nil)
	_, dir := layerDir(t)
	if _, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{Parents: []string{lower}}); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, filepath.Join(dir, "srv")); st.Mode&0o7777 != 0o750 || st.Uid != 33 || st.Gid != 34 {
		t.Errorf("srv: mode %#o owner %d:%d, want 0750 33:34", st.Mode&0o7777, st.Uid, st.Gid)
	}
}

func TestApplyNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(context.Background(), f, bytes.NewReader(nil), ApplyOptions{}); !errContains(err, "not a directory") {
		t.Errorf("Apply to a file: %v", err)
	}
}

// TestApplyGlobalHeaderNamedLikeAFile: a PAX global header is not a file;
// archive.Apply alone would remove what its name points to (here through a
// symlink, as tar-split refuses the same name twice).
func TestApplyGlobalHeaderNamedLikeAFile(t *testing.T) {
	requireRoot(t)
	data := buildTar(t, []entry{
		dirE("etc/"), fileE("etc/a", "kept"), symlinkE("l", "etc"),
		{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "l/a", PAXRecords: map[string]string{"comment": "x"}}},
	}, nil)
	a := checkRoundTrip(t, data, data, Uncompressed)
	if got, err := os.ReadFile(filepath.Join(a.dir, "etc/a")); err != nil || string(got) != "kept" {
		t.Errorf("etc/a = %q %v", got, err)
	}
}
