package layerdiff

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
)

// The hostile-layer suite: layers built to escape the layer directory,
// exhaust the disk, the memory or the CPU, or confuse the extractor. Each
// is applied twice, recording a tar-split (as the daemon does) and not, into
// a layer directory next to a sentinel directory, and must either apply
// with its entries inside the layer directory or fail with a clear error —
// naming the entry, or the limit — and a zero ApplyResult. Either way
// nothing outside the layer directory may change.
//
// escape_test.go and errors_test.go cover the plain path traversal,
// symlink, hard link, truncation and corruption cases in more variants;
// this suite covers what they do not and puts a sentinel next to every
// case.

// hostileEnv is where a hostile case runs.
type hostileEnv struct {
	sandbox  string // holds layer/, sentinel/ and outside, nothing else
	dir      string // the layer directory
	sentinel string // sandbox/sentinel: a file, a directory, a symlink
}

// outcome is what a case must come to: an error matching is (if set)
// whose message contains every part of errHas, or, if errHas is empty and
// is nil, success checked by check.
type outcome struct {
	is     error
	errHas []string
	check  func(t *testing.T, e hostileEnv, res ApplyResult)
}

func (o outcome) fails() bool { return o.is != nil || len(o.errHas) > 0 }

type hostileCase struct {
	name  string
	build func(t *testing.T, e hostileEnv) []byte
	max   int64 // ApplyOptions.MaxUncompressed
	want  outcome
	// plain, if set, is the outcome without a tar-split (duplicates are
	// refused only with one).
	plain *outcome
	// timeout bounds the Apply (default 30 s): cases built to expand are
	// refused long before.
	timeout time.Duration
}

func entries(es ...entry) func(*testing.T, hostileEnv) []byte {
	return func(t *testing.T, _ hostileEnv) []byte { return buildTar(t, es, nil) }
}

func charE(name string, major, minor int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: name, Mode: 0o666, Devmajor: major, Devminor: minor}}
}

func blockE(name string, major, minor int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: name, Mode: 0o660, Devmajor: major, Devminor: minor}}
}

func fifoE(name string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: name, Mode: 0o600}}
}

func modeE(e entry, mode int64, uid, gid int) entry {
	e.hdr.Mode, e.hdr.Uid, e.hdr.Gid = mode, uid, gid
	return e
}

// ok is a success outcome with checks.
func ok(check func(t *testing.T, e hostileEnv, res ApplyResult)) outcome {
	return outcome{check: check}
}

// refused is an error outcome.
func refused(is error, errHas ...string) outcome { return outcome{is: is, errHas: errHas} }

// readIn reads the file name in the layer directory, not following a
// symlink at the end.
func readIn(t *testing.T, dir, name string) string {
	t.Helper()
	fd, err := unix.Open(filepath.Join(dir, name), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return string(b)
}

func wantFileType(t *testing.T, dir, name string, typ uint32, perm uint32) unix.Stat_t {
	t.Helper()
	st := lstat(t, filepath.Join(dir, name))
	if st.Mode&unix.S_IFMT != typ || st.Mode&0o7777 != perm {
		t.Errorf("%s: mode %#o, want type %#o perm %#o", name, st.Mode, typ, perm)
	}
	return st
}

func TestApplyHostileLayers(t *testing.T) {
	requireRoot(t)
	long4000 := strings.Repeat("n", 4000)
	// A 3,600-byte path of 36 components of 99 bytes: under PATH_MAX
	// with the test's root in front, each component under NAME_MAX.
	var comps []string
	for i := range 36 {
		comps = append(comps, fmt.Sprintf("%02d", i)+strings.Repeat("c", 97))
	}
	path3600 := strings.Join(comps, "/")
	// Over PATH_MAX as a whole.
	path5000 := strings.Repeat(strings.Repeat("p", 99)+"/", 50) + "f"

	cases := []hostileCase{
		// Path traversal beyond escape_test.go: aimed at the sentinel.
		{name: "dotdot into the sentinel", build: entries(fileE("../sentinel/pwned", "x")),
			want: refused(ErrEscape, `entry "../sentinel/pwned"`, "leads outside the root")},
		{name: "absolute name with dotdot stays inside", build: entries(fileE("/../../../../sentinel/pwned", "inside")),
			want: ok(func(t *testing.T, e hostileEnv, _ ApplyResult) {
				if got := readIn(t, e.dir, "sentinel/pwned"); got != "inside" {
					t.Errorf("sentinel/pwned = %q", got)
				}
			})},
		{name: "absolute symlink to the sentinel, written through", build: func(t *testing.T, e hostileEnv) []byte {
			return buildTar(t, []entry{symlinkE("s", e.sentinel), fileE("s/pwned", "x")}, nil)
		}, want: refused(ErrEscape, `entry "s/pwned"`, `symlink "s"`, "absolute")},
		{name: "relative symlink to the sentinel, written through", build: entries(
			dirE("a/"), symlinkE("a/s", "../../sentinel"), dirE("a/s/pwned/")),
			want: refused(ErrEscape, `entry "a/s/pwned"`, `symlink "a/s" -> "../../sentinel"`)},
		{name: "absolute symlink to the sentinel, not written through", build: func(t *testing.T, e hostileEnv) []byte {
			return buildTar(t, []entry{symlinkE("s", e.sentinel), symlinkE("f", e.sentinel+"/file")}, nil)
		}, want: ok(func(t *testing.T, e hostileEnv, _ ApplyResult) {
			if got, _ := os.Readlink(filepath.Join(e.dir, "s")); got != e.sentinel {
				t.Errorf("s -> %q", got)
			}
		})},
		{name: "hard link to the sentinel's absolute path", build: func(t *testing.T, e hostileEnv) []byte {
			// Rooted at the layer, where nothing has that name.
			return buildTar(t, []entry{hardlinkE("hl", e.sentinel+"/file")}, nil)
		}, want: refused(nil, `"hl"`, "no such file")},
		{name: "hard link to a symlink to the sentinel", build: func(t *testing.T, e hostileEnv) []byte {
			// Links the symlink itself; the entry's mode is not applied
			// through it.
			hl := hardlinkE("hl", "s")
			hl.hdr.Mode = 0o777
			return buildTar(t, []entry{symlinkE("s", e.sentinel+"/file"), hl}, nil)
		}, want: ok(func(t *testing.T, e hostileEnv, _ ApplyResult) {
			if st := lstat(t, filepath.Join(e.dir, "hl")); st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Nlink != 2 {
				t.Errorf("hl: mode %#o, %d links", st.Mode, st.Nlink)
			}
		})},
		{name: "directory entry over a symlink to the sentinel", build: func(t *testing.T, e hostileEnv) []byte {
			d := dirE("s/")
			d.hdr.Mode = 0o777
			return buildTar(t, []entry{symlinkE("s", e.sentinel), d}, nil)
		}, want: refused(storage.ErrDuplicatePath, `"s/"`),
			plain: &outcome{check: func(t *testing.T, e hostileEnv, _ ApplyResult) {
				wantFileType(t, e.dir, "s", unix.S_IFDIR, 0o777)
			}}},

		// Symlink loops: refused when written through, kept otherwise.
		{name: "symlink loop written through", build: entries(symlinkE("a", "b"), symlinkE("b", "a"), fileE("a/x", "x")),
			want: refused(nil, `entry "a/x"`, "too many levels of symbolic links")},
		{name: "self loop written through", build: entries(symlinkE("l", "l"), dirE("l/d/")),
			want: refused(nil, `entry "l/d"`, "too many levels of symbolic links")},
		{name: "41 symlinks in one path", build: entries(dirE("d/"), symlinkE("d/self", "."),
			fileE("d/"+strings.Repeat("self/", 41)+"f", "x")),
			want: refused(nil, "too many levels of symbolic links")},
		{name: "symlink loop as hard link target's parent", build: entries(symlinkE("a", "b"), symlinkE("b", "a"), hardlinkE("hl", "a/x")),
			want: refused(nil, `entry "hl"`, "too many levels of symbolic links")},
		{name: "symlink loop not written through", build: entries(symlinkE("a", "b"), symlinkE("b", "a"), symlinkE("l", "l"), hardlinkE("hl", "a")),
			want: ok(func(t *testing.T, e hostileEnv, _ ApplyResult) {
				if got, _ := os.Readlink(filepath.Join(e.dir, "hl")); got != "b" {
					t.Errorf("hl -> %q, want the symlink a itself", got)
				}
			})},

		// Device nodes: created as containers/storage and containerd
		// create them when running as root, inside the layer only.
		{name: "device nodes and a fifo", build: entries(dirE("dev/"), charE("dev/mem", 1, 1), blockE("dev/sda", 8, 0), fifoE("dev/fifo"),
			modeE(hardlinkE("dev/mem2", "dev/mem"), 0o666, 0, 0)),
			want: ok(func(t *testing.T, e hostileEnv, _ ApplyResult) {
				if st := wantFileType(t, e.dir, "dev/mem", unix.S_IFCHR, 0o666); st.Rdev != unix.Mkdev(1, 1) || st.Nlink != 2 {
					t.Errorf("dev/mem: rdev %#x, %d links", st.Rdev, st.Nlink)
				}
				if st := wantFileType(t, e.dir, "dev/sda", unix.S_IFBLK, 0o660); st.Rdev != unix.Mkdev(8, 0) {
					t.Errorf("dev/sda: rdev %#x", st.Rdev)
				}
				wantFileType(t, e.dir, "dev/fifo", unix.S_IFIFO, 0o600)
			})},
		{name: "device node through a symlink to the sentinel", build: func(t *testing.T, e hostileEnv) []byte {
			return buildTar(t, []entry{symlinkE("dev", e.sentinel), charE("dev/mem", 1, 1)}, nil)
		}, want: refused(ErrEscape, `entry "dev/mem"`)},
		{name: "fifo through a relative symlink out", build: entries(symlinkE("run", "../sentinel"), fifoE("run/fifo")),
			want: refused(ErrEscape, `entry "run/fifo"`)},
		{name: "device node replacing a symlink to the sentinel", build: func(t *testing.T, e hostileEnv) []byte {
			return buildTar(t, []entry{symlinkE("dev", e.sentinel+"/file"), charE("dev", 1, 3)}, nil)
		}, want: refused(storage.ErrDuplicatePath, `"dev"`),
			plain: &outcome{check: func(t *testing.T, e hostileEnv, _ ApplyResult) {
				wantFileType(t, e.dir, "dev", unix.S_IFCHR, 0o666)
			}}},
		{name: "file written over a fifo and a device", build: entries(fifoE("fifo"), charE("null", 1, 3), fileE("fifo", "file"), fileE("null", "file")),
			want: refused(storage.ErrDuplicatePath, `"fifo"`),
			plain: &outcome{check: func(t *testing.T, e hostileEnv, _ ApplyResult) {
				// Replaced, not opened: opening the fifo would block,
				// writing the device would write /dev/null.
				for _, n := range []string{"fifo", "null"} {
					wantFileType(t, e.dir, n, unix.S_IFREG, 0o644)
					if got := readIn(t, e.dir, n); got != "file" {
						t.Errorf("%s = %q", n, got)
					}
				}
			}}},

		// Set-user-ID and set-group-ID: kept, as the layer says, after the
		// chown that would clear them.
		{name: "setuid and setgid", build: func(t *testing.T, _ hostileEnv) []byte {
			return buildTar(t, []entry{
				modeE(dirE("shared/"), 0o2775, 0, 50),
				modeE(dirE("tmp/"), 0o1777, 0, 0),
				modeE(fileE("su", "#!/bin/sh\n"), 0o4755, 1000, 1000),
				modeE(fileE("sg", "#!/bin/sh\n"), 0o2755, 0, 50),
				modeE(fileE("both", "#!/bin/sh\n"), 0o6711, 1000, 50),
				modeE(fileE("shared/in", "x"), 0o4750, 1000, 1000),
				modeE(charE("tty", 5, 0), 0o6620, 0, 5),
			}, nil)
		}, want: ok(func(t *testing.T, e hostileEnv, res ApplyResult) {
			for name, want := range map[string]struct {
				typ, perm, uid, gid uint32
			}{
				"shared":    {unix.S_IFDIR, 0o2775, 0, 50},
				"tmp":       {unix.S_IFDIR, 0o1777, 0, 0},
				"su":        {unix.S_IFREG, 0o4755, 1000, 1000},
				"sg":        {unix.S_IFREG, 0o2755, 0, 50},
				"both":      {unix.S_IFREG, 0o6711, 1000, 50},
				"shared/in": {unix.S_IFREG, 0o4750, 1000, 1000},
				"tty":       {unix.S_IFCHR, 0o6620, 0, 5},
			} {
				st := wantFileType(t, e.dir, name, want.typ, want.perm)
				if st.Uid != want.uid || st.Gid != want.gid {
					t.Errorf("%s: owner %d:%d, want %d:%d", name, st.Uid, st.Gid, want.uid, want.gid)
				}
			}
			if !slices.Equal(res.UIDs, []uint32{0, 1000}) || !slices.Equal(res.GIDs, []uint32{0, 5, 50, 1000}) {
				t.Errorf("UIDs %v GIDs %v", res.UIDs, res.GIDs)
			}
		})},
		{name: "setuid file through a symlink out", build: entries(symlinkE("bin", "../sentinel"), modeE(fileE("bin/su", "x"), 0o4755, 0, 0)),
			want: refused(ErrEscape, `entry "bin/su"`)},

		// Huge sparse files: their holes are not in the stream; the sizes
		// files declare count against the limit, checked before any hole
		// is expanded, by the extractor and by tar-split's parser alike.
		{name: "PAX 1.0 sparse file of 1 TiB", max: 64 << 20, build: func(t *testing.T, _ hostileEnv) []byte { return sparseTar(t, "1.0", "hole", 1<<40) },
			want: refused(ErrTooLarge, "hole", "files declare more than 67108864 bytes"), timeout: 10 * time.Second},
		{name: "PAX 0.1 sparse file of 1 TiB", max: 64 << 20, build: func(t *testing.T, _ hostileEnv) []byte { return sparseTar(t, "0.1", "hole", 1<<40) },
			want: refused(ErrTooLarge, "hole", "67108864"), timeout: 10 * time.Second},
		{name: "PAX 0.0 sparse file of 1 TiB", max: 64 << 20, build: func(t *testing.T, _ hostileEnv) []byte { return sparseTar(t, "0.0", "hole", 1<<40) },
			want: refused(ErrTooLarge, "hole", "67108864"), timeout: 10 * time.Second},
		{name: "sparse file of 1 TiB, gzip", max: 64 << 20, build: func(t *testing.T, _ hostileEnv) []byte {
			return compress(t, Gzip, sparseTar(t, "1.0", "hole", 1<<40))
		}, want: refused(ErrTooLarge, "hole", "67108864"), timeout: 10 * time.Second},
		{name: "sparse file of 2^63-1 bytes after another file", max: 64 << 20, build: func(t *testing.T, _ hostileEnv) []byte {
			// The declared total must not wrap around.
			b := buildTar(t, []entry{fileE("small", "small")}, nil)
			return append(b[:len(b)-1024], sparseTar(t, "1.0", "hole", math.MaxInt64)...)
		}, want: refused(ErrTooLarge, "hole", "67108864"), timeout: 10 * time.Second},
		{name: "sparse file with a negative size", build: func(t *testing.T, _ hostileEnv) []byte { return sparseTar(t, "0.1", "hole", -1) },
			want: refused(nil, "invalid tar header"), timeout: 10 * time.Second},
		{name: "old GNU sparse file of 1 TiB, no limit", build: func(t *testing.T, _ hostileEnv) []byte { return oldGNUSparse(t, 1<<40) },
			want: refused(nil, "old GNU sparse files are not supported", `"hole"`), timeout: 10 * time.Second},
		{name: "sparse file of 1 TiB typed as contiguous", max: 64 << 20, build: func(t *testing.T, _ hostileEnv) []byte {
			// Type '7' is not a regular file to the extractor, but both
			// parsers expand its holes all the same.
			return setTypeflag(sparseTar(t, "1.0", "hole", 1<<40), 1024, tar.TypeCont)
		}, want: refused(nil, "hole"), timeout: 10 * time.Second},
		{name: "sparse file of 1 TiB typed as contiguous, no limit", build: func(t *testing.T, _ hostileEnv) []byte {
			return setTypeflag(sparseTar(t, "1.0", "hole", 1<<40), 1024, tar.TypeCont)
		}, want: refused(nil, "hole", "unhandled tar header type 55"), timeout: 10 * time.Second},
		{name: "sparse file within the limit", max: 64 << 20, build: func(t *testing.T, _ hostileEnv) []byte { return sparseTar(t, "1.0", "hole", 8<<20) },
			want: ok(func(t *testing.T, e hostileEnv, res ApplyResult) {
				st := wantFileType(t, e.dir, "hole", unix.S_IFREG, 0o644)
				if st.Size != 8<<20 {
					t.Errorf("hole: %d bytes", st.Size)
				}
				if got := readIn(t, e.dir, "hole"); got[:5] != "hello" || strings.Trim(got[5:], "\x00") != "" {
					t.Errorf("hole: content %q...", got[:16])
				}
			})},

		// Names longer than NAME_MAX and PATH_MAX: the kernel's error,
		// naming the entry.
		{name: "4,000-byte name", build: entries(fileE(long4000, "x")),
			want: refused(nil, "file name too long", `"`+long4000+`"`)},
		{name: "4,000-byte directory name", build: entries(dirE(long4000+"/"), fileE(long4000+"/f", "x")),
			want: refused(nil, "file name too long")},
		{name: "4,000-byte hard link target", build: entries(hardlinkE("hl", long4000)),
			want: refused(nil, "file name too long", `"hl"`)},
		{name: "3,600-byte path", build: entries(fileE(path3600, "deep")),
			want: ok(func(t *testing.T, e hostileEnv, res ApplyResult) {
				if got := readIn(t, e.dir, path3600); got != "deep" {
					t.Errorf("content %q", got)
				}
			})},
		{name: "5,000-byte path", build: entries(fileE(path5000, "x")),
			want: refused(nil, "file name too long")},
		{name: "5,000-byte symlink target", build: entries(symlinkE("l", strings.Repeat("t", 5000))),
			want: refused(nil, "file name too long", `"l"`)},

		// Truncation, beyond errors_test.go.
		{name: "empty layer", build: func(*testing.T, hostileEnv) []byte { return nil },
			want: ok(func(t *testing.T, e hostileEnv, res ApplyResult) {
				if res.UncompressedSize != 0 || res.UncompressedDigest != sha(nil) {
					t.Errorf("result %+v", res)
				}
			})},
		{name: "tar truncated in a PAX header", build: func(t *testing.T, _ hostileEnv) []byte {
			e := fileE("pax", "x")
			e.hdr.PAXRecords = map[string]string{"comment": strings.Repeat("c", 2000)}
			return buildTar(t, []entry{e}, nil)[:1024]
		}, want: refused(ErrTruncated, "before the first entry")},
		{name: "tar truncated in a GNU long name", build: func(t *testing.T, _ hostileEnv) []byte {
			e := fileE(strings.Repeat("g", 3000), "x")
			e.hdr.Format = tar.FormatGNU
			return buildTar(t, []entry{fileE("first", "1"), e}, nil)[:2048]
		}, want: refused(ErrTruncated, `"first"`)},
		{name: "tar truncated in a sparse map", build: func(t *testing.T, _ hostileEnv) []byte {
			return sparseTar(t, "1.0", "hole", 1<<20)[:1024+3]
		}, want: refused(ErrTruncated)},
		{name: "tar truncated in the last entry's padding", build: func(t *testing.T, _ hostileEnv) []byte {
			// Every byte of content is there: Go's tar reader (so
			// containerd) takes the end of the stream for the end of the
			// archive.
			return buildTar(t, []entry{fileE("f", "content")}, nil)[:512+100]
		}, want: ok(func(t *testing.T, e hostileEnv, res ApplyResult) {
			if got := readIn(t, e.dir, "f"); got != "content" {
				t.Errorf("f = %q", got)
			}
		})},
		{name: "tar truncated in the end-of-archive marker", build: func(t *testing.T, _ hostileEnv) []byte {
			b := buildTar(t, []entry{fileE("f", "content")}, nil)
			return b[:1024+512+100]
		}, want: refused(ErrTruncated)},
		{name: "tar without an end-of-archive marker", build: func(t *testing.T, _ hostileEnv) []byte {
			// Ends at an entry boundary: complete as far as a tar reader
			// can tell, as for containerd and containers/storage. The
			// layer's digest is the caller's check.
			b := buildTar(t, []entry{fileE("f", "content")}, nil)
			return b[:1024]
		}, want: ok(func(t *testing.T, e hostileEnv, res ApplyResult) {
			if got := readIn(t, e.dir, "f"); got != "content" {
				t.Errorf("f = %q", got)
			}
		})},
		{name: "gzip truncated at the end of a member's data", build: func(t *testing.T, _ hostileEnv) []byte {
			gz := compress(t, Gzip, buildTar(t, []entry{fileE("f", "content")}, nil))
			return gz[:len(gz)-8] // no CRC-32 and size
		}, want: refused(ErrTruncated, "gzip")},
		{name: "zstd truncated", build: func(t *testing.T, _ hostileEnv) []byte {
			zst := compress(t, Zstd, buildTar(t, []entry{fileE("f", strings.Repeat("content", 1000))}, nil))
			return zst[:len(zst)-3]
		}, want: refused(ErrTruncated, "zstd")},
		{name: "xz truncated", build: func(t *testing.T, _ hostileEnv) []byte {
			b, err := os.ReadFile("testdata/small.tar.xz")
			if err != nil {
				t.Fatal(err)
			}
			return b[:len(b)/2]
		}, want: refused(nil, "xz")},
		{name: "bzip2 truncated", build: func(t *testing.T, _ hostileEnv) []byte {
			b, err := os.ReadFile("testdata/small.tar.bz2")
			if err != nil {
				t.Fatal(err)
			}
			return b[:len(b)/2]
		}, want: refused(ErrTruncated, "bzip2")},

		// Decompression bombs: a few hundred KiB that expand to GiBs are
		// cut off one byte past the limit, which the error names.
		{name: "gzip bomb after the archive", max: 8 << 20, build: func(t *testing.T, _ hostileEnv) []byte {
			return append(compress(t, Gzip, buildTar(t, []entry{fileE("f", "content")}, nil)), zeroBomb(t, Gzip)...)
		}, want: refused(ErrTooLarge, "decompresses to more than 8388608 bytes", "after the end of the archive"), timeout: 10 * time.Second},
		{name: "zstd bomb of many entries", max: 1 << 20, build: func(t *testing.T, _ hostileEnv) []byte {
			// Headers: no file declares anything.
			var many []entry
			for i := range 5000 {
				many = append(many, fileE(fmt.Sprintf("f%05d", i), ""))
			}
			return compress(t, Zstd, buildTar(t, many, nil))
		}, want: refused(ErrTooLarge, "decompresses to more than 1048576 bytes"), timeout: 20 * time.Second},
		{name: "zstd bomb after the archive", max: 8 << 20, build: func(t *testing.T, _ hostileEnv) []byte {
			return append(compress(t, Zstd, buildTar(t, []entry{fileE("f", "content")}, nil)), zeroBomb(t, Zstd)...)
		}, want: refused(ErrTooLarge, "8388608"), timeout: 10 * time.Second},
		{name: "file declaring 1 TiB", max: 8 << 20, build: func(t *testing.T, _ hostileEnv) []byte { return tarHeader(t, "huge", 1<<40) },
			want: refused(ErrTooLarge, `"huge"`, "files declare more than 8388608 bytes")},
		{name: "file declaring 1 TiB, no limit", build: func(t *testing.T, _ hostileEnv) []byte { return tarHeader(t, "huge", 1<<40) },
			want: refused(ErrTruncated, `"huge"`)},

		// Duplicates: refused with a tar-split (it cannot record two
		// entries for one path, nor can containers/storage's); without,
		// the last one wins, as in containerd.
		{name: "same file twice", build: entries(fileE("f", "one"), fileE("f", "two")),
			want: refused(storage.ErrDuplicatePath, `"f"`),
			plain: &outcome{check: func(t *testing.T, e hostileEnv, _ ApplyResult) {
				if got := readIn(t, e.dir, "f"); got != "two" {
					t.Errorf("f = %q", got)
				}
			}}},
		{name: "file then directory", build: entries(fileE("x", "file"), dirE("x/"), fileE("x/y", "in")),
			want: refused(storage.ErrDuplicatePath, `"x/"`),
			plain: &outcome{check: func(t *testing.T, e hostileEnv, _ ApplyResult) {
				if got := readIn(t, e.dir, "x/y"); got != "in" {
					t.Errorf("x/y = %q", got)
				}
			}}},
		{name: "directory then file", build: entries(dirE("d/"), fileE("d/a", "in"), fileE("d", "file")),
			want: refused(storage.ErrDuplicatePath, `"d"`),
			plain: &outcome{check: func(t *testing.T, e hostileEnv, _ ApplyResult) {
				if got := readIn(t, e.dir, "d"); got != "file" {
					t.Errorf("d = %q", got)
				}
			}}},
		{name: "directory twice", build: entries(modeE(dirE("d/"), 0o755, 0, 0), fileE("d/a", "in"), modeE(dirE("d/"), 0o700, 1000, 1000)),
			want: refused(storage.ErrDuplicatePath, `"d/"`),
			plain: &outcome{check: func(t *testing.T, e hostileEnv, _ ApplyResult) {
				// Merged: the second's metadata, the first's content.
				if st := wantFileType(t, e.dir, "d", unix.S_IFDIR, 0o700); st.Uid != 1000 {
					t.Errorf("d: uid %d", st.Uid)
				}
				if got := readIn(t, e.dir, "d/a"); got != "in" {
					t.Errorf("d/a = %q", got)
				}
			}}},
		{name: "hard link to a file replaced later", build: entries(fileE("f", "one"), hardlinkE("hl", "f"), symlinkE("self", "."), fileE("self/f", "two")),
			// Under another name: tar-split cannot tell, the extractor can.
			want: ok(func(t *testing.T, e hostileEnv, res ApplyResult) {
				if f, hl := readIn(t, e.dir, "f"), readIn(t, e.dir, "hl"); f != "two" || hl != "one" {
					t.Errorf("f = %q, hl = %q", f, hl)
				}
				if res.Reproducible || !strings.Contains(res.NotReproducible, "replaces") {
					t.Errorf("Reproducible %v %q", res.Reproducible, res.NotReproducible)
				}
			}),
			plain: &outcome{check: func(t *testing.T, e hostileEnv, _ ApplyResult) {
				if f, hl := readIn(t, e.dir, "f"), readIn(t, e.dir, "hl"); f != "two" || hl != "one" {
					t.Errorf("f = %q, hl = %q", f, hl)
				}
			}}},
		{name: "hard link to a file replaced by a symlink to the sentinel", build: func(t *testing.T, e hostileEnv) []byte {
			return buildTar(t, []entry{fileE("f", "one"), hardlinkE("hl", "f"), symlinkE("self", "."),
				symlinkE("self/f", e.sentinel+"/file"), hardlinkE("hl2", "f"), fileE("hl2", "replaced")}, nil)
		}, want: refused(storage.ErrDuplicatePath, `"hl2"`),
			plain: &outcome{check: func(t *testing.T, e hostileEnv, _ ApplyResult) {
				if got := readIn(t, e.dir, "hl2"); got != "replaced" {
					t.Errorf("hl2 = %q", got)
				}
				if got := readIn(t, e.dir, "hl"); got != "one" {
					t.Errorf("hl = %q", got)
				}
			}}},
		{name: "hard link to itself", build: entries(hardlinkE("a", "a")), want: refused(nil, `"a"`, "no such file")},
		{name: "hard link to a directory", build: entries(dirE("d/"), hardlinkE("hl", "d")), want: refused(nil, `"hl"`, "operation not permitted")},

		// Entry kinds no layer should hold.
		{name: "unknown entry type", build: func(t *testing.T, _ hostileEnv) []byte {
			b := buildTar(t, []entry{fileE("odd", "")}, nil)
			return setTypeflag(b, 0, 'Z')
		}, want: refused(nil, `"odd"`, "unhandled tar header type 90")},
		{name: "directory with sparse headers", build: func(t *testing.T, _ hostileEnv) []byte {
			return setTypeflag(sparseTar(t, "0.1", "dir", 1<<40), 1024, tar.TypeDir)
		}, want: refused(nil, "invalid tar header")},
	}

	for _, tc := range cases {
		for _, record := range []bool{true, false} {
			want := tc.want
			mode := "tar-split"
			if !record {
				mode = "plain"
				if tc.plain != nil {
					want = *tc.plain
				}
			}
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				e := newHostileEnv(t)
				blob := tc.build(t, e)
				before := sandboxState(t, e)
				passwd := lstat(t, "/etc/passwd")
				opts := ApplyOptions{MaxUncompressed: tc.max}
				var ts bytes.Buffer
				if record {
					opts.TarSplit = &ts
				}
				timeout := orDefault(tc.timeout, 30*time.Second)
				ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
				defer cancel()
				start := time.Now()
				res, err := Apply(ctx, e.dir, bytes.NewReader(blob), opts)
				took := time.Since(start)
				t.Logf("%v after %v", err, took.Round(time.Millisecond))
				if took > timeout {
					t.Errorf("Apply took %v, want under %v", took, timeout)
				}

				after := sandboxState(t, e)
				checkSandbox(t, before, after)
				if st := lstat(t, "/etc/passwd"); st.Nlink != passwd.Nlink || st.Mode != passwd.Mode {
					t.Errorf("/etc/passwd changed")
				}
				for _, p := range []string{hostProbe, "/pwned", "/tmp/pwned", "/dev/pwned"} {
					if _, err := os.Lstat(p); err == nil {
						t.Errorf("%s was created", p)
					}
				}

				if !want.fails() {
					if err != nil {
						t.Fatalf("Apply: %v", err)
					}
					if res.UncompressedDigest == "" || res.CompressedDigest == "" {
						t.Errorf("result %+v", res)
					}
					if want.check != nil {
						want.check(t, e, res)
					}
					return
				}
				if err == nil {
					t.Fatal("Apply succeeded")
				}
				if !reflectZero(res) {
					t.Errorf("a failed Apply reported %+v", res)
				}
				if want.is != nil && !errors.Is(err, want.is) {
					t.Errorf("error %v, want one matching %v", err, want.is)
				}
				if !errContains(err, want.errHas...) {
					t.Errorf("error %q, want one containing %q", err, want.errHas)
				}
				if !strings.HasPrefix(err.Error(), "layerdiff: ") {
					t.Errorf("error %q does not say where it comes from", err)
				}
			})
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func reflectZero(res ApplyResult) bool {
	return res.Compression == 0 && res.CompressedDigest == "" && res.CompressedSize == 0 &&
		res.UncompressedDigest == "" && res.UncompressedSize == 0 && res.UIDs == nil && res.GIDs == nil &&
		!res.Reproducible && res.NotReproducible == ""
}

// newHostileEnv makes the sandbox: the empty layer directory, a sentinel
// directory next to it (a file, a directory, a symlink) and a file.
func newHostileEnv(t *testing.T) hostileEnv {
	t.Helper()
	sandbox, dir := layerDir(t)
	e := hostileEnv{sandbox: sandbox, dir: dir, sentinel: filepath.Join(sandbox, "sentinel")}
	for _, err := range []error{
		os.Mkdir(e.sentinel, 0o755),
		os.WriteFile(filepath.Join(e.sentinel, "file"), []byte("sentinel"), 0o644),
		os.Mkdir(filepath.Join(e.sentinel, "dir"), 0o700),
		os.Symlink("file", filepath.Join(e.sentinel, "link")),
		os.WriteFile(filepath.Join(sandbox, "outside"), []byte("outside"), 0o600),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// sandboxState describes everything in the sandbox but the layer
// directory's contents: type, mode, owner, links, size, times and content.
func sandboxState(t *testing.T, e hostileEnv) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.Walk(e.sandbox, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.sandbox, p)
		if rel == "layer" {
			state[rel] = fmt.Sprintf("%v", fi.Mode()) // its contents are the layer's
			return filepath.SkipDir
		}
		st := lstat(t, p)
		desc := fmt.Sprintf("mode %#o owner %d:%d links %d size %d mtime %d.%d ctime %d.%d",
			st.Mode, st.Uid, st.Gid, st.Nlink, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" sha256 %x", sha256.Sum256(b))
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			desc += " -> " + target
		}
		state[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}

func checkSandbox(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, a := range after {
		if b, ok := before[p]; !ok {
			t.Errorf("%s was created outside the layer: %s", p, a)
		} else if a != b {
			t.Errorf("%s changed outside the layer:\n%s\n%s", p, b, a)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("%s was removed outside the layer", p)
		}
	}
}

// paxRecord formats one PAX extended header record.
func paxRecord(k, v string) string {
	rec := " " + k + "=" + v + "\n"
	for n := len(rec) + 1; ; n++ {
		if len(strconv.Itoa(n))+len(rec) == n {
			return strconv.Itoa(n) + rec
		}
	}
}

// rawHeader is a ustar header block; size is written in base-256 if octal
// cannot hold it.
func rawHeader(name string, typeflag byte, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:100], name)
	copy(h[100:108], "0000644\x00")
	copy(h[108:116], "0000000\x00")
	copy(h[116:124], "0000000\x00")
	setNumeric(h[124:136], size)
	copy(h[136:148], fmt.Sprintf("%011o\x00", epochTime.Unix()))
	h[156] = typeflag
	copy(h[257:265], "ustar\x0000")
	setChecksum(h)
	return h
}

func setNumeric(f []byte, n int64) {
	if n >= 0 && n < 1<<33 {
		copy(f, fmt.Sprintf("%0*o\x00", len(f)-1, n))
		return
	}
	clear(f)
	binary.BigEndian.PutUint64(f[len(f)-8:], uint64(n))
	if n >= 0 {
		f[0] |= 0x80
	} else {
		for i := range len(f) - 8 {
			f[i] = 0xff
		}
	}
}

func setChecksum(h []byte) {
	copy(h[148:156], "        ")
	var sum int64
	for _, b := range h[:512] {
		sum += int64(b)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

// setTypeflag rewrites the typeflag of the header block at off.
func setTypeflag(data []byte, off int, typeflag byte) []byte {
	data = bytes.Clone(data)
	data[off+156] = typeflag
	setChecksum(data[off : off+512])
	return data
}

func padBlock(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// tarHeader is a tar of one regular file header declaring size, cut off
// after the header.
func tarHeader(t *testing.T, name string, size int64) []byte {
	t.Helper()
	return rawHeader(name, tar.TypeReg, size)
}

// sparseTar is a complete tar of one GNU PAX sparse file (format "0.0",
// "0.1" or "1.0") of realsize bytes, "hello" at offset 0 and holes for the
// rest. Go's tar writer cannot write them.
func sparseTar(t *testing.T, format, name string, realsize int64) []byte {
	t.Helper()
	size := strconv.FormatInt(realsize, 10)
	var recs []string
	data := []byte("hello")
	ustarName := name
	switch format {
	case "0.0":
		recs = []string{paxRecord("GNU.sparse.size", size), paxRecord("GNU.sparse.numblocks", "1"),
			paxRecord("GNU.sparse.offset", "0"), paxRecord("GNU.sparse.numbytes", "5")}
	case "0.1":
		recs = []string{paxRecord("GNU.sparse.size", size), paxRecord("GNU.sparse.numblocks", "1"),
			paxRecord("GNU.sparse.map", "0,5"), paxRecord("GNU.sparse.name", name)}
		ustarName = "GNUSparseFile.0/" + name
	case "1.0":
		recs = []string{paxRecord("GNU.sparse.major", "1"), paxRecord("GNU.sparse.minor", "0"),
			paxRecord("GNU.sparse.name", name), paxRecord("GNU.sparse.realsize", size)}
		data = append(padBlock([]byte("1\n0\n5\n")), data...)
		ustarName = "GNUSparseFile.0/" + name
	default:
		t.Fatalf("sparse format %q", format)
	}
	pax := []byte(strings.Join(recs, ""))
	var b []byte
	b = append(b, rawHeader("PaxHeaders.0/"+name, tar.TypeXHeader, int64(len(pax)))...)
	b = append(b, padBlock(pax)...)
	b = append(b, rawHeader(ustarName, tar.TypeReg, int64(len(data)))...)
	b = append(b, padBlock(data)...)
	return append(b, make([]byte, 1024)...)
}

// oldGNUSparse is testdata/sparse-gnu.tar claiming realsize bytes.
func oldGNUSparse(t *testing.T, realsize int64) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/sparse-gnu.tar")
	if err != nil {
		t.Fatal(err)
	}
	if b[156] != tar.TypeGNUSparse {
		t.Fatalf("typeflag %q", b[156])
	}
	setNumeric(b[483:495], realsize)
	setChecksum(b[:512])
	return b
}

var (
	bombOnce sync.Once
	bombs    map[Compression][]byte
)

// zeroBomb is 1 GiB of zeros in concatenated gzip members or zstd frames
// of 64 MiB each: about 1 MiB of gzip, 50 KiB of zstd. The standard
// library's gzip: klauspost/compress v1.18.1 writes invalid deflate data at
// level 9 for input of one repeated byte (fixed in v1.18.2).
func zeroBomb(t *testing.T, c Compression) []byte {
	t.Helper()
	bombOnce.Do(func() {
		zeros := make([]byte, 64<<20)
		bombs = map[Compression][]byte{}
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		zw.Write(zeros)
		zw.Close()
		var zst bytes.Buffer
		sw, _ := zstd.NewWriter(&zst, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
		sw.Write(zeros)
		sw.Close()
		bombs[Gzip] = bytes.Repeat(gz.Bytes(), 16)
		bombs[Zstd] = bytes.Repeat(zst.Bytes(), 16)
	})
	return bombs[c]
}

// fastDir is a directory for tests of many files: under /dev/shm when it is
// a tmpfs (creating 100,000 files on a busy disk takes half a minute, on
// tmpfs two seconds), else the test's temporary directory.
func fastDir(t *testing.T) string {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err == nil && fs.Type == unix.TMPFS_MAGIC {
		if dir, err := os.MkdirTemp("/dev/shm", "layerdiff-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// TestApplyManyFiles: a layer of 100,000 files, generated in memory,
// applies in time linear in its entries, and reassembles bit for bit.
func TestApplyManyFiles(t *testing.T) {
	requireRoot(t)
	const dirs, perDir = 100, 1000
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%03d/", d), Mode: 0o755, ModTime: epochTime}); err != nil {
			t.Fatal(err)
		}
		for f := range perDir {
			body := ""
			if f%100 == 0 {
				body = fmt.Sprintf("file %d/%d", d, f)
			}
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%03d/f%04d", d, f), Mode: 0o644, Size: int64(len(body)),
				Uid: f % 7, Gid: d % 5, ModTime: epochTime}
			if err := tw.WriteHeader(hdr); err != nil {
				t.Fatal(err)
			}
			io.WriteString(tw, body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	blob := compress(t, Gzip, data)
	sandbox := fastDir(t)
	dir := filepath.Join(sandbox, "layer")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var ts bytes.Buffer
	start := time.Now()
	res, err := Apply(context.Background(), dir, bytes.NewReader(blob), ApplyOptions{TarSplit: &ts, MaxUncompressed: int64(len(data))})
	took := time.Since(start)
	t.Logf("%d entries, %d bytes of tar, %d of gzip, %d of tar-split: applied in %v", dirs*(perDir+1), len(data), len(blob), ts.Len(), took)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Reproducible || res.UncompressedDigest != sha(data) || len(res.UIDs) != 7 || len(res.GIDs) != 5 {
		t.Errorf("result: reproducible %v %q, digest %s, UIDs %v, GIDs %v", res.Reproducible, res.NotReproducible, res.UncompressedDigest, res.UIDs, res.GIDs)
	}
	n := 0
	for d := range dirs {
		ents, err := os.ReadDir(filepath.Join(dir, fmt.Sprintf("d%03d", d)))
		if err != nil {
			t.Fatal(err)
		}
		n += len(ents)
	}
	if n != dirs*perDir {
		t.Errorf("%d files, want %d", n, dirs*perDir)
	}
	if got := readIn(t, dir, "d042/f0500"); got != "file 42/500" {
		t.Errorf("d042/f0500 = %q", got)
	}
	if ents, _ := os.ReadDir(sandbox); len(ents) != 1 {
		t.Errorf("sandbox holds %d entries", len(ents))
	}
	rc, err := Reassemble(dir, bytes.NewReader(ts.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != string(res.UncompressedDigest) {
		t.Errorf("reassembled %s, want %s", got, res.UncompressedDigest)
	}
	// Generous: two seconds on tmpfs, half a minute on a busy disk.
	if took > 2*time.Minute {
		t.Errorf("applying took %v", took)
	}
}

// TestApplySparseCancelled: with no limit, a sparse file of 1 TiB is
// expanded as containerd expands it, but cancelling stops both parsers
// promptly: its holes read nothing from the stream, where cancellation
// used to be noticed.
func TestApplySparseCancelled(t *testing.T) {
	requireRoot(t)
	for _, record := range []bool{true, false} {
		t.Run(fmt.Sprintf("tar-split=%v", record), func(t *testing.T) {
			_, dir := layerDir(t)
			opts := ApplyOptions{}
			if record {
				opts.TarSplit = &bytes.Buffer{}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := Apply(ctx, dir, bytes.NewReader(sparseTar(t, "1.0", "hole", 1<<40)), opts)
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"hole"`) {
					t.Errorf("error %v, want the deadline, naming the entry", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Apply goes on expanding after its context ended")
			}
		})
	}
}

// TestApplyDeepTree: a thousand files a thousand directories deep (a
// 2,000-byte path each; a few hundred KiB of gzip) apply in seconds, over a
// lower directory too, with and without entries for their directories. Each
// name used to cost a walk of its path, an lstat per component each
// resolving the path so far again: 90 s to 3 min for this layer.
func TestApplyDeepTree(t *testing.T) {
	requireRoot(t)
	verifyShortcuts = false // the check is the slow walk
	t.Cleanup(func() { verifyShortcuts = true })
	const depth, leaves = 1000, 1000
	lower := t.TempDir()
	if err := os.MkdirAll(filepath.Join(lower, strings.Repeat("d/", 10)), 0o750); err != nil {
		t.Fatal(err)
	}
	for _, withLower := range []bool{false, true} {
		for _, dirEntries := range []bool{true, false} {
			t.Run(fmt.Sprintf("lower=%v,dir-entries=%v", withLower, dirEntries), func(t *testing.T) {
				var buf bytes.Buffer
				tw := tar.NewWriter(&buf)
				p := ""
				for range depth {
					p += "d/"
					tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p, Mode: 0o755, ModTime: epochTime})
				}
				for i := range leaves {
					if dirEntries {
						tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("%sl%d/", p, i), Mode: 0o755, ModTime: epochTime})
					}
					tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%sl%d/f", p, i), Mode: 0o644, ModTime: epochTime})
				}
				if err := tw.Close(); err != nil {
					t.Fatal(err)
				}
				sandbox := fastDir(t)
				dir := filepath.Join(sandbox, "layer")
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				opts := ApplyOptions{TarSplit: &bytes.Buffer{}}
				if withLower {
					opts.Parents = []string{lower}
				}
				start := time.Now()
				res, err := Apply(context.Background(), dir, bytes.NewReader(compress(t, Gzip, buf.Bytes())), opts)
				took := time.Since(start)
				t.Logf("%d bytes of tar: applied in %v", buf.Len(), took)
				if err != nil {
					t.Fatal(err)
				}
				if !res.Reproducible {
					t.Errorf("not reproducible: %s", res.NotReproducible)
				}
				if st := lstat(t, filepath.Join(dir, p, "l999", "f")); st.Mode&unix.S_IFMT != unix.S_IFREG {
					t.Errorf("deepest file: mode %#o", st.Mode)
				}
				if took > time.Minute {
					t.Errorf("applying took %v", took)
				}
			})
		}
	}
}
