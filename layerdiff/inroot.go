package layerdiff

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/continuity/fs"
	"golang.org/x/sys/unix"
)

// Reassemble reads payloads by the names the tar recorded. Those names go
// through symlinks the layer itself created (a "link -> /" entry followed by
// "link/etc/x" is legal), so a plain os.Open(filepath.Join(dir, name)), which
// is what tar-split's own PathFileGetter does, would follow "link" to the
// host's /etc. The helpers here resolve a name the way containerd's
// archive.Apply placed it: cleaned lexically, every symlink evaluated as if
// dir were "/" (fs.RootPath), the last component not followed.

// splitInRoot cleans a tar entry name lexically, as archive.Apply does, and
// splits it into its parent directory and base name relative to the root.
// ok is false for names that resolve to the root itself.
func splitInRoot(name string) (dir, base string, ok bool) {
	rel := path.Clean("/" + name)[1:]
	if rel == "" {
		return "", "", false
	}
	return path.Dir(rel), path.Base(rel), true
}

// resolveFlags keep openat2 inside the root: ".." and absolute symlinks stop
// at it, /proc magic links and other mounts are refused.
const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openParentInRoot returns an O_PATH descriptor of the directory dir (a
// cleaned relative path) under the root open as rootFd, rooted at it.
func openParentInRoot(rootFd int, root, dir string) (int, error) {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolveFlags}
	for range 8 {
		fd, err := unix.Openat2(rootFd, dir, &how)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			// RESOLVE_IN_ROOT asks to retry when a concurrent rename
			// raced with the lookup.
			continue
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM):
			// Kernels before 5.6, or a seccomp filter: resolve in
			// userspace as containerd does. Not race-free against a
			// concurrent writer, but the layer directory has none.
			p, err := fs.RootPath(root, dir)
			if err != nil {
				return -1, err
			}
			fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return -1, &os.PathError{Op: "open", Path: p, Err: err}
			}
			return fd, nil
		default:
			return -1, &os.PathError{Op: "openat2", Path: filepath.Join(root, dir), Err: err}
		}
	}
	return -1, &os.PathError{Op: "openat2", Path: filepath.Join(root, dir), Err: unix.EAGAIN}
}

// inRoot looks names up under a root, keeping the O_PATH descriptor of the
// directory it looked in last: a tar lists a directory's files together,
// so most lookups skip the openat2 of their parent. close releases it.
type inRoot struct {
	rootFd int
	root   string
	dir    string
	dirFd  int // -1: none
}

func newInRoot(rootFd int, root string) *inRoot {
	return &inRoot{rootFd: rootFd, root: root, dirFd: -1}
}

func (r *inRoot) close() {
	if r.dirFd >= 0 {
		unix.Close(r.dirFd)
		r.dirFd = -1
	}
}

// parent returns the descriptor of directory dir under the root, which
// r keeps.
func (r *inRoot) parent(dir string) (int, error) {
	if r.dirFd >= 0 && r.dir == dir {
		return r.dirFd, nil
	}
	fd, err := openParentInRoot(r.rootFd, r.root, dir)
	if err != nil {
		return -1, err
	}
	r.close()
	r.dir, r.dirFd = dir, fd
	return fd, nil
}

// statRegular returns the stat of the regular file that name (a tar entry
// name) designates under the root, the descriptor of its parent directory
// (r's) and its base name.
func (r *inRoot) statRegular(name string) (st unix.Stat_t, parentFd int, base string, err error) {
	dir, base, ok := splitInRoot(name)
	if !ok {
		return st, -1, "", errors.New("names the layer root, not a file")
	}
	parentFd, err = r.parent(dir)
	if err != nil {
		return st, -1, "", err
	}
	if err := unix.Fstatat(parentFd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, -1, "", &os.PathError{Op: "lstat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return st, -1, "", fmt.Errorf("is not a regular file (mode %#o)", st.Mode)
	}
	return st, parentFd, base, nil
}

// openRegular opens for reading the regular file of size bytes that name
// designates under the root. Anything else (a symlink, a directory, a
// fifo, a device, a file of another size) is an error: opening a device
// can have side effects, reading a fifo can block forever, and a file
// that changed size is not the one the tar-split recorded.
func (r *inRoot) openRegular(name string, size int64) (*regularFile, error) {
	st, parentFd, base, err := r.statRegular(name)
	if err != nil {
		return nil, err
	}
	if st.Size != size {
		return nil, fmt.Errorf("is %d bytes, the tar recorded %d", st.Size, size)
	}
	// O_NONBLOCK so that, should the file have been swapped for a fifo
	// since the stat, open does not wait for a writer; the fstat below then
	// refuses it.
	fd, err := unix.Openat(parentFd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	var st2 unix.Stat_t
	if err := unix.Fstat(fd, &st2); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fstat", Path: name, Err: err}
	}
	if st2.Mode&unix.S_IFMT != unix.S_IFREG || st2.Ino != st.Ino || st2.Dev != st.Dev {
		unix.Close(fd)
		return nil, fmt.Errorf("%q changed while being opened", name)
	}
	return &regularFile{fd: fd, left: size, name: name}, nil
}

// regularFile reads a regular file by its descriptor, up to the size its
// stat gave: an os.File would cost a poller registration and a finalizer,
// and a last read to find the end, per file of a layer of tens of
// thousands.
type regularFile struct {
	fd   int
	left int64
	name string
}

func (f *regularFile) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	for {
		n, err := unix.Read(f.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, &os.PathError{Op: "read", Path: f.name, Err: err}
		case n == 0:
			return 0, fmt.Errorf("%q: %w (%d bytes short)", f.name, io.ErrUnexpectedEOF, f.left)
		}
		f.left -= int64(n)
		return n, nil
	}
}

func (f *regularFile) Close() error { return unix.Close(f.fd) }

// relName is the cleaned relative form of a tar entry name.
func relName(name string) string {
	return path.Clean("/" + name)[1:]
}

// plainResolver tells, in one openat2, whether a path under root resolves
// through directories only, following no symlink, where resolving it
// component by component (fs.RootPath, the escape checker's walk) costs an
// lstat per component, each resolving the path so far again: quadratic in
// the depth. It opens root on first use; close releases it.
type plainResolver struct {
	root  string
	fd    int
	state int8
}

const (
	resolverUnopened int8 = iota
	resolverOpen
	resolverUnavailable // openat2 missing or refused
)

// plainResult is what plainResolver.resolve found.
type plainResult int8

const (
	// plainUnknown: a symlink, a non-directory, another mount, an error,
	// or no openat2: resolve the slow way.
	plainUnknown plainResult = iota
	// plainDir: every component is a directory, none a symlink.
	plainDir
	// plainMissing: a component does not exist; those before it are
	// directories (the kernel resolves in order, and a symlink would have
	// stopped it first).
	plainMissing
)

// resolve looks up rel, a relative path without ".." components ("." and
// empty ones are fine).
func (r *plainResolver) resolve(rel string) plainResult {
	switch r.state {
	case resolverUnavailable:
		return plainUnknown
	case resolverUnopened:
		fd, err := unix.Open(r.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.state = resolverUnavailable
			return plainUnknown
		}
		r.fd, r.state = fd, resolverOpen
	}
	if rel == "" {
		rel = "."
	}
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	for range 8 {
		fd, err := unix.Openat2(r.fd, rel, &how)
		switch {
		case err == nil:
			unix.Close(fd)
			return plainDir
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOENT):
			return plainMissing
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM):
			// Kernels before 5.6, or a seccomp filter.
			r.close()
			r.state = resolverUnavailable
			return plainUnknown
		default:
			return plainUnknown
		}
	}
	return plainUnknown
}

func (r *plainResolver) close() {
	if r.state == resolverOpen {
		unix.Close(r.fd)
		r.state = resolverUnopened
	}
}

// hasDotDot reports whether name has a ".." component.
func hasDotDot(name string) bool {
	return strings.Contains(name, "..") && slices.Contains(strings.Split(name, "/"), "..")
}
