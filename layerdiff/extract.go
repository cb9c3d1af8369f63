package layerdiff

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/containerd/continuity/fs"
	"github.com/containerd/log"
	"github.com/moby/sys/userns"
	"golang.org/x/sys/unix"
)

// extractor is containerd's archive.Apply (pkg/archive applyNaive and
// createTarFile, with OverlayConvertWhiteout and WithParents) with the same
// results and checks, minus the system calls that do nothing for an overlay
// upper directory filled in one pass:
//
//   - a parent directory is resolved and made (mkparent, an lstat) once,
//     not per entry, until an entry changes what is on disk (removes
//     something, adds a symlink or a hard link, which may be one); and
//     resolved with one openat2 when no component is a symlink, instead of
//     fs.RootPath's lstat per component, each resolving the path so far
//     again (quadratic in the depth), which only symlinks still need;
//   - a regular file is created with O_EXCL instead of after an lstat (what
//     is already there is removed only then), written, and then owned,
//     given its xattrs, mode and times through its descriptor: no second
//     chmod, no lstat before it;
//   - chown is skipped when the new inode already has the entry's owner
//     (the creating process's, in a parent without set-group-ID), as
//     containers/storage skips it;
//   - large payloads are written in large chunks.
//
// Other entry kinds go as in archive.Apply, path by path.
type extractor struct {
	root    string
	parents []string
	v       *vetter
	uid     int
	gid     int
	buf     []byte

	dirs []madeDir // for their times, set at the end
	// made maps a parent directory as a tar name writes it (filepath.Split)
	// to where it resolved, made and known to be a directory.
	made map[string]string
	// dirMode caches the mode of directories files are created in, to know
	// whether a new inode takes the directory's group.
	dirMode map[string]uint32
	// defaultACL caches whether directories have a default ACL; umask is
	// the process's, -1 if unknown.
	defaultACL map[string]bool
	umask      int
	// upper and lowers resolve paths within root and parents without
	// following symlinks, for resolvePath.
	upper  plainResolver
	lowers []plainResolver
	// disturbed: an entry replaced or removed something already in the
	// directory, or landed elsewhere than its name says (through a
	// symlink). Otherwise every file written is still where its name
	// leads, and Apply need not check that again.
	disturbed bool
	// unp records the directories mkparent makes without the parents.
	unp *Unparented
}

func newExtractor(root string, parents []string, v *vetter) *extractor {
	return &extractor{
		root:       root,
		parents:    parents,
		v:          v,
		uid:        os.Geteuid(),
		gid:        os.Getegid(),
		made:       map[string]string{},
		dirMode:    map[string]uint32{},
		defaultACL: map[string]bool{},
		umask:      processUmask(),
		upper:      plainResolver{root: root},
		lowers:     lowerResolvers(parents),
	}
}

func lowerResolvers(parents []string) []plainResolver {
	rs := make([]plainResolver, len(parents))
	for i, p := range parents {
		rs[i].root = p
	}
	return rs
}

// changed forgets what is known of the tree, after an entry that may change
// how names resolve or what directories exist.
func (e *extractor) changed() {
	clear(e.made)
	clear(e.dirMode)
	clear(e.defaultACL)
}

const whiteoutOpaqueDir = ".wh..wh..opq"

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

func (e *extractor) apply(ctx context.Context, r io.Reader) error {
	defer func() {
		e.upper.close()
		for i := range e.lowers {
			e.lowers[i].close()
		}
	}()
	tr := tar.NewReader(r)
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	e.buf = *bp
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		hdr.Name = filepath.Clean(hdr.Name)
		accept, err := e.v.filter(hdr)
		if err != nil {
			return err
		}
		if !accept {
			continue
		}
		if (hdr.Typeflag == tar.TypeBlock || hdr.Typeflag == tar.TypeChar) && userns.RunningInUserNS() {
			log.G(ctx).Warnf("file %q ignored: archive may not be supported on system", hdr.Name)
			continue
		}
		if err := e.entry(ctx, hdr, tr); err != nil {
			return err
		}
	}
	for _, d := range e.dirs {
		// Where archive.Apply looks for it again. Unless an entry
		// replaced or removed something, or went through a symlink, it is
		// where it was made: every directory on the way was made (or
		// found) as one and is still there.
		p := d.path
		if e.disturbed {
			var err error
			if p, err = e.rootPath(d.hdr.Name); err != nil {
				return err
			}
		}
		if err := chtimes(p, d.hdr); err != nil {
			return err
		}
	}
	return nil
}

func (e *extractor) entry(ctx context.Context, hdr *tar.Header, tr io.Reader) error {
	// Split name and resolve symlinks for the root directory, as
	// archive.Apply.
	ppath, base := filepath.Split(hdr.Name)
	parent, known := e.made[ppath]
	if !known {
		var err error
		parent, err = e.rootPath(ppath)
		if err != nil {
			return fmt.Errorf("failed to get root path: %w", err)
		}
	}
	p := filepath.Join(parent, filepath.Join("/", base))
	if p == e.root {
		return nil
	}
	if p != filepath.Join(e.root, hdr.Name) {
		e.disturbed = true
	}
	if e.v.track {
		if err := e.v.trackEntry(hdr, p); err != nil {
			return err
		}
	}
	if !known {
		if parent != e.root {
			if err := e.mkparent(ctx, parent); err != nil {
				return err
			}
		}
		e.made[ppath] = parent
	}

	if strings.HasPrefix(base, whiteoutPrefix) {
		return e.whiteout(hdr, p)
	}

	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // may still come in a tar
		return e.regular(ctx, hdr, p, parent, tr)
	case tar.TypeDir, tar.TypeBlock, tar.TypeChar, tar.TypeFifo, tar.TypeLink, tar.TypeSymlink:
	case tar.TypeXGlobalHeader:
		return nil // the vetter filters these out
	default:
		return fmt.Errorf("unhandled tar header type %d", hdr.Typeflag)
	}

	// If something is there, remove and replace it, unless both are
	// directories: then merge (apply the entry's metadata).
	var st unix.Stat_t
	exists := false
	if err := unix.Lstat(p, &st); err == nil {
		exists = true
		if st.Mode&unix.S_IFMT != unix.S_IFDIR || hdr.Typeflag != tar.TypeDir {
			if err := e.remove(hdr, p, st.Mode); err != nil {
				return err
			}
			exists = false
		}
	}
	mode := uint32(hdr.Mode & 0o7777)
	fresh := true // a new inode of the process's own
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !exists {
			if err := os.Mkdir(p, hdr.FileInfo().Mode()); err != nil {
				return err
			}
		} else {
			fresh = false
		}
	case tar.TypeBlock, tar.TypeChar, tar.TypeFifo:
		fmode := mode
		switch hdr.Typeflag {
		case tar.TypeBlock:
			fmode |= unix.S_IFBLK
		case tar.TypeChar:
			fmode |= unix.S_IFCHR
		case tar.TypeFifo:
			fmode |= unix.S_IFIFO
		}
		if err := unix.Mknod(p, fmode, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))); err != nil {
			return &os.PathError{Op: "mknod", Path: p, Err: err}
		}
	case tar.TypeLink:
		target, err := e.hardlinkRootPath(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := os.Link(target, p); err != nil {
			return err
		}
		fresh = false // the linked inode keeps its owner
		e.changed()   // it may be a symlink
	case tar.TypeSymlink:
		if err := os.Symlink(hdr.Linkname, p); err != nil {
			return err
		}
		e.changed()
	}

	if !fresh || !e.owned(hdr, parent) {
		if err := os.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
			return chownError(p, hdr, err)
		}
	}
	if err := e.xattrs(ctx, hdr, p, -1); err != nil {
		return err
	}
	// After chown, which can clear set-user-ID bits. Not through a
	// symlink: a hard link entry can make one.
	chmod := hdr.Typeflag != tar.TypeSymlink
	if hdr.Typeflag == tar.TypeLink {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		chmod = st.Mode&unix.S_IFMT != unix.S_IFLNK
	}
	if chmod {
		if err := os.Chmod(p, hdr.FileInfo().Mode()); err != nil {
			return err
		}
	}
	if err := chtimes(p, hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		if e.unp != nil {
			e.unp.set(relTo(e.root, p))
		}
		e.dirs = append(e.dirs, madeDir{hdr, p})
		// Entries in it need not resolve it again, nor look at its mode.
		e.dirMode[p] = uint32(hdr.Mode & 0o7777)
		delete(e.defaultACL, p) // its xattrs may have set one
		if p == filepath.Join(e.root, hdr.Name) {
			e.made[hdr.Name+"/"] = p
		}
	}
	return nil
}

type madeDir struct {
	hdr  *tar.Header
	path string
}

// remove removes what is at p for hdr to replace it.
func (e *extractor) remove(hdr *tar.Header, p string, mode uint32) error {
	e.disturbed = true
	if mode&unix.S_IFMT == unix.S_IFDIR && e.v.track {
		e.v.removesDir(hdr, p)
	}
	e.changed()
	return os.RemoveAll(p)
}

// whiteout converts a whiteout entry as archive.OverlayConvertWhiteout.
func (e *extractor) whiteout(hdr *tar.Header, p string) error {
	base := filepath.Base(p)
	dir := filepath.Dir(p)
	var err error
	if base == whiteoutOpaqueDir {
		err = unix.Setxattr(dir, "trusted.overlay.opaque", []byte{'y'}, 0)
	} else {
		original := filepath.Join(dir, base[len(whiteoutPrefix):])
		// archive.Apply's validateWhiteout.
		prefix := dir
		if prefix[len(prefix)-1] != filepath.Separator {
			prefix += string(filepath.Separator)
		}
		if !strings.HasPrefix(original, prefix) {
			return fmt.Errorf("invalid whiteout name: %v: invalid archive", base)
		}
		if err = unix.Mknod(original, unix.S_IFCHR, 0); err == nil {
			err = os.Chown(original, hdr.Uid, hdr.Gid)
		}
	}
	if err != nil {
		return fmt.Errorf("failed to convert whiteout file %q: %w", hdr.Name, err)
	}
	return nil
}

// regular writes a regular file at p, in the directory parent.
func (e *extractor) regular(ctx context.Context, hdr *tar.Header, p, parent string, tr io.Reader) error {
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	mode := uint32(hdr.Mode & 0o7777)
	fd, err := unix.Open(p, flags, mode)
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		if err := e.remove(hdr, p, st.Mode); err != nil {
			return err
		}
		fd, err = unix.Open(p, flags, mode)
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: p, Err: err}
	}
	err = e.fill(ctx, fd, hdr, p, parent, tr)
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = &os.PathError{Op: "close", Path: p, Err: cerr}
	}
	return err
}

func (e *extractor) fill(ctx context.Context, fd int, hdr *tar.Header, p, parent string, tr io.Reader) error {
	for done := false; !done; {
		// A sparse file's holes read nothing from the stream, where
		// cancellation would otherwise show.
		if err := ctx.Err(); err != nil {
			return err
		}
		// Fill the buffer, so that a large file is written in large
		// chunks; the tar reader says io.EOF at the end of the entry.
		n := 0
		for n < len(e.buf) {
			m, err := tr.Read(e.buf[n:])
			n += m
			if err == io.EOF {
				done = true
				break
			}
			if err != nil {
				return err
			}
		}
		for b := e.buf[:n]; len(b) > 0; {
			w, err := unix.Write(fd, b)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return &os.PathError{Op: "write", Path: p, Err: err}
			}
			b = b[w:]
		}
	}
	if !e.owned(hdr, parent) {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return chownError(p, hdr, &os.PathError{Op: "fchown", Path: p, Err: err})
		}
	}
	if err := e.xattrs(ctx, hdr, p, fd); err != nil {
		return err
	}
	if mode := uint32(hdr.Mode & 0o7777); !e.createsWithMode(mode, parent) {
		if err := unix.Fchmod(fd, mode); err != nil {
			return &os.PathError{Op: "fchmod", Path: p, Err: err}
		}
	}
	ts := times(hdr)
	if _, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0); errno != 0 {
		return fmt.Errorf("failed call to UtimesNanoAt for %s: %w", p, errno)
	}
	return nil
}

// owned reports whether a new inode made by the process in parent already
// has hdr's owner: the process's, and its group unless parent hands its own
// down (set-group-ID).
func (e *extractor) owned(hdr *tar.Header, parent string) bool {
	if hdr.Uid != e.uid || hdr.Gid != e.gid {
		return false
	}
	m, ok := e.dirMode[parent]
	if !ok {
		var st unix.Stat_t
		if err := unix.Lstat(parent, &st); err != nil {
			return false
		}
		m = st.Mode
		e.dirMode[parent] = m
	}
	return m&unix.S_ISGID == 0
}

// createsWithMode reports whether a file created in parent with mode has
// it exactly: no set-ID or sticky bits (which creation or chown can drop),
// none the umask takes away, and no default ACL in parent (which would
// stand in for the umask).
func (e *extractor) createsWithMode(mode uint32, parent string) bool {
	if mode&0o7000 != 0 || e.umask < 0 || mode&uint32(e.umask) != 0 {
		return false
	}
	acl, ok := e.defaultACL[parent]
	if !ok {
		_, err := unix.Getxattr(parent, "system.posix_acl_default", nil)
		acl = err == nil || !(errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP))
		e.defaultACL[parent] = acl
	}
	return !acl
}

// processUmask reads the process's umask, -1 if it cannot.
func processUmask() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return -1
			}
			return int(m)
		}
	}
	return -1
}

func chownError(p string, hdr *tar.Header, err error) error {
	err = fmt.Errorf("failed to Lchown %q for UID %d, GID %d: %w", p, hdr.Uid, hdr.Gid, err)
	if errors.Is(err, syscall.EINVAL) && userns.RunningInUserNS() {
		err = fmt.Errorf("%w (Hint: try increasing the number of subordinate IDs in /etc/subuid and /etc/subgid)", err)
	}
	return err
}

// xattrs sets hdr's SCHILY.xattr records on p, through fd if it is not
// -1, as archive.Apply: trusted.* refused (and ignored), unsupported ones
// ignored.
func (e *extractor) xattrs(ctx context.Context, hdr *tar.Header, p string, fd int) error {
	for key, value := range hdr.PAXRecords {
		key, ok := strings.CutPrefix(key, "SCHILY.xattr.")
		if !ok {
			continue
		}
		var err error
		switch {
		case strings.HasPrefix(key, "trusted."):
			err = fmt.Errorf("admin attributes from archive not supported: %w", unix.ENOTSUP)
		case fd >= 0:
			err = unix.Fsetxattr(fd, key, []byte(value), 0)
		default:
			err = unix.Lsetxattr(p, key, []byte(value), 0)
		}
		if err == nil {
			continue
		}
		if errors.Is(err, syscall.EPERM) && strings.HasPrefix(key, "user.") {
			// In the user.* namespace, only regular files and
			// directories can have extended attributes.
			if fi, err := os.Lstat(p); err == nil && (!fi.Mode().IsRegular() && !fi.Mode().IsDir()) {
				log.G(ctx).WithError(err).Warnf("ignored xattr %s in archive", key)
				continue
			}
		}
		if errors.Is(err, syscall.ENOTSUP) {
			log.G(ctx).WithError(err).Warnf("ignored xattr %s in archive", key)
			continue
		}
		return fmt.Errorf("failed to setxattr %q for key %q: %w", p, key, err)
	}
	return nil
}

var (
	minTime = time.Unix(0, 0)
	maxTime = time.Unix(0, 1<<63-1)
)

func boundTime(t time.Time) time.Time {
	if t.Before(minTime) || t.After(maxTime) {
		return minTime
	}
	return t
}

// times are hdr's access and modification times as archive.Apply sets
// them.
func times(hdr *tar.Header) [2]unix.Timespec {
	atime := hdr.AccessTime
	if atime.Before(hdr.ModTime) {
		atime = hdr.ModTime
	}
	return [2]unix.Timespec{
		unix.NsecToTimespec(boundTime(atime).UnixNano()),
		unix.NsecToTimespec(boundTime(hdr.ModTime).UnixNano()),
	}
}

func chtimes(p string, hdr *tar.Header) error {
	ts := times(hdr)
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("failed call to UtimesNanoAt for %s: %w", p, err)
	}
	return nil
}

// hardlinkRootPath is archive.Apply's: the target's parent resolved in
// root, the target itself not followed, anything leading out clamped to
// root.
func (e *extractor) hardlinkRootPath(linkname string) (string, error) {
	ppath, base := filepath.Split(linkname)
	ppath, err := e.rootPath(ppath)
	if err != nil {
		return "", err
	}
	targetPath := filepath.Join(ppath, base)
	if !strings.HasPrefix(targetPath, e.root) {
		targetPath = e.root
	}
	return targetPath, nil
}

// rootPath is fs.RootPath(e.root, name), archive.Apply's resolution: name
// within the root, symlinks followed as if the root were "/".
func (e *extractor) rootPath(name string) (string, error) {
	return resolvePath(&e.upper, e.root, name)
}

// resolvePath is fs.RootPath(root, name), r resolving in root. When no
// component of name that exists is a symlink, which one openat2 tells, that
// is name joined to root, and fs.RootPath's lstat of every prefix (each
// resolving the path so far again: quadratic in the depth) is skipped.
func resolvePath(r *plainResolver, root, name string) (string, error) {
	if !hasDotDot(name) {
		rel := strings.TrimLeft(filepath.Clean("/"+name), "/")
		if res := r.resolve(rel); res == plainDir || res == plainMissing {
			p := filepath.Join(root, rel)
			if verifyShortcuts {
				if q, err := fs.RootPath(root, name); err != nil || q != p {
					panic(fmt.Sprintf("layerdiff: resolvePath(%q, %q) = %q, fs.RootPath says %q, %v", root, name, p, q, err))
				}
			}
			return p, nil
		}
	}
	return fs.RootPath(root, name)
}

// mkparent is archive.Apply's: it makes the missing directories of path,
// with the attributes of the same directory in the nearest parent layer
// that has one.
func (e *extractor) mkparent(ctx context.Context, path string) error {
	root := e.root
	if dir, err := os.Lstat(path); err == nil {
		if dir.IsDir() {
			return nil
		}
		return &os.PathError{Op: "mkparent", Path: path, Err: syscall.ENOTDIR}
	} else if !os.IsNotExist(err) {
		return err
	}

	i := len(path)
	for i > len(root) && !os.IsPathSeparator(path[i-1]) {
		i--
	}
	if i > len(root)+1 {
		if err := e.mkparent(ctx, path[:i-1]); err != nil {
			return err
		}
	}

	if err := os.Mkdir(path, 0o755); err != nil {
		if dir, err1 := os.Lstat(path); err1 == nil && dir.IsDir() {
			return nil
		}
		return err
	}
	if err := os.Chmod(path, 0o755); err != nil {
		return err
	}
	if e.unp != nil {
		e.unp.made(relTo(root, path))
	}

	for i := range e.parents {
		ppath, err := resolvePath(&e.lowers[i], e.parents[i], path[len(root):])
		if err != nil {
			return err
		}
		dir, err := os.Lstat(ppath)
		if err == nil {
			if !dir.IsDir() {
				break // replaced, do not copy attributes
			}
			if err := copyDirInfo(dir, path); err != nil {
				return err
			}
			return copyUpXAttrs(path, ppath)
		} else if !os.IsNotExist(err) {
			return err
		}
	}
	log.G(ctx).Debugf("parent directory %q not found: default permissions(0755) used", path)
	return nil
}

func copyDirInfo(fi os.FileInfo, path string) error {
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
		if os.IsPermission(err) {
			if dstStat, err2 := os.Lstat(path); err2 == nil {
				st2 := dstStat.Sys().(*syscall.Stat_t)
				if st.Uid == st2.Uid && st.Gid == st2.Gid {
					err = nil
				}
			}
		}
		if err != nil {
			return fmt.Errorf("failed to chown %s: %w", path, err)
		}
	}
	if err := os.Chmod(path, fi.Mode()); err != nil {
		return fmt.Errorf("failed to chmod %s: %w", path, err)
	}
	timespec := []unix.Timespec{
		unix.NsecToTimespec(syscall.TimespecToNsec(st.Atim)),
		unix.NsecToTimespec(syscall.TimespecToNsec(st.Mtim)),
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, timespec, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("failed to utime %s: %w", path, err)
	}
	return nil
}

func copyUpXAttrs(dst, src string) error {
	keys, err := listXattrs(src)
	if err != nil {
		if err == unix.ENOTSUP || err == unix.ENODATA {
			return nil
		}
		return fmt.Errorf("failed to list xattrs on %s: %w", src, err)
	}
	for _, key := range keys {
		if strings.HasPrefix(key, "trusted.") {
			continue // never copied up
		}
		data, err := getXattr(src, key)
		if err != nil {
			if err == unix.ENOTSUP || err == unix.ENODATA {
				continue
			}
			return fmt.Errorf("failed to get xattr %q on %s: %w", key, src, err)
		}
		if err := unix.Lsetxattr(dst, key, data, unix.XATTR_CREATE); err != nil && err != unix.ENOTSUP && err != unix.ENODATA && err != unix.EEXIST {
			return fmt.Errorf("failed to set xattr %q on %s: %w", key, dst, err)
		}
	}
	return nil
}

func listXattrs(p string) ([]string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Llistxattr(p, buf)
		if err == unix.ERANGE {
			sz, err := unix.Llistxattr(p, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz+1)
			continue
		}
		if err != nil {
			return nil, err
		}
		var keys []string
		for k := range strings.SplitSeq(string(buf[:n]), "\x00") {
			if k != "" {
				keys = append(keys, k)
			}
		}
		return keys, nil
	}
}

func getXattr(p, key string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, key, buf)
		if err == unix.ERANGE {
			sz, err := unix.Lgetxattr(p, key, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz+1)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
