package layerdiff

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotAdoptable is returned by Adopt when a layer extracted without its
// parents would not be what Apply makes on them: it must be applied again,
// with them.
var ErrNotAdoptable = errors.New("layer extracted without its parents does not fit them")

// Unparented records, for a layer Apply extracts before its parents are
// known (ApplyOptions.Unparented), what the extraction would have looked up
// in them. The parents matter only where an entry needs a directory the
// layer has not made (yet): its escape check resolves it through the lowers,
// and mkparent makes it with the attributes the nearest lower gives it.
// Adopt checks those paths against the real parents.
type Unparented struct {
	// consulted are directories (relative, merged view) found missing in
	// the layer when an entry needed them.
	consulted map[string]struct{}
	// implied are the directories mkparent made, true until an entry of
	// the layer sets their attributes itself.
	implied map[string]bool
}

func (u *Unparented) consult(rel string) {
	if u.consulted == nil {
		u.consulted = map[string]struct{}{}
	}
	u.consulted[rel] = struct{}{}
}

func (u *Unparented) made(rel string) {
	if u.implied == nil {
		u.implied = map[string]bool{}
	}
	u.implied[rel] = true
	u.consult(rel)
}

// set says an entry gave rel its own attributes.
func (u *Unparented) set(rel string) {
	if u.implied[rel] {
		u.implied[rel] = false
	}
}

// Adopt moves a layer that Apply extracted into stage with
// ApplyOptions.Unparented u into upper, an empty directory on the same
// file system whose lowers, nearest first, are known now, leaving upper as
// Apply on those lowers would have. If a lower has anything but a
// directory on a path the extraction consulted, or gives an implied
// directory a default ACL (which the files made in it would have
// inherited), Adopt fails with ErrNotAdoptable and changes nothing; so it
// does if stage and upper are on different file systems. stage is removed
// once adopted.
func Adopt(stage, upper string, lowers []string, u *Unparented) error {
	if err := fitsLowers(lowers, u); err != nil {
		return err
	}
	if empty, err := isEmptyDir(upper); err != nil {
		return fmt.Errorf("layerdiff: adopt into %s: %w", upper, err)
	} else if !empty {
		return fmt.Errorf("layerdiff: adopt into %s: not empty: %w", upper, ErrNotAdoptable)
	}
	// What mkparent would have copied from the lowers. Parents first, so
	// that a chmod does not stop the next lstat.
	implied := make([]string, 0, len(u.implied))
	for rel, unset := range u.implied {
		if unset {
			implied = append(implied, rel)
		}
	}
	slices.Sort(implied)
	for _, rel := range implied {
		if err := inheritDir(filepath.Join(stage, rel), rel, lowers); err != nil {
			return err
		}
	}

	names, err := readDirNames(stage)
	if err != nil {
		return fmt.Errorf("layerdiff: adopt %s: %w", stage, err)
	}
	for i, name := range names {
		if err := os.Rename(filepath.Join(stage, name), filepath.Join(upper, name)); err != nil {
			if i == 0 && errors.Is(err, unix.EXDEV) {
				return fmt.Errorf("layerdiff: adopt %s into %s: %w: %w", stage, upper, err, ErrNotAdoptable)
			}
			return fmt.Errorf("layerdiff: adopt %s: %w", stage, err)
		}
	}
	// ".wh..wh..opq" at the layer's top makes its root opaque.
	if v, err := getXattr(stage, "trusted.overlay.opaque"); err == nil {
		if err := unix.Setxattr(upper, "trusted.overlay.opaque", v, 0); err != nil {
			return fmt.Errorf("layerdiff: adopt into %s: %w", upper, err)
		}
	}
	if err := os.Remove(stage); err != nil {
		return fmt.Errorf("layerdiff: adopt %s: %w", stage, err)
	}
	return nil
}

// fitsLowers checks that the lowers have only directories, or nothing, on
// every path the extraction consulted, so that resolving through them
// would have found no symlink nor hidden anything the layer relies on.
func fitsLowers(lowers []string, u *Unparented) error {
	if len(lowers) == 0 || len(u.consulted) == 0 {
		return nil
	}
	paths := map[string]struct{}{}
	for rel := range u.consulted {
		for p := rel; p != "." && p != "" && p != "/"; p = filepath.Dir(p) {
			if _, ok := paths[p]; ok {
				break // and its parents with it
			}
			paths[p] = struct{}{}
		}
	}
	for p := range paths {
		for _, l := range lowers {
			var st unix.Stat_t
			err := unix.Lstat(filepath.Join(l, p), &st)
			switch {
			case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
			case err != nil:
				return fmt.Errorf("layerdiff: checking lower %s: %w", l, &os.PathError{Op: "lstat", Path: p, Err: err})
			case st.Mode&unix.S_IFMT != unix.S_IFDIR:
				return fmt.Errorf("layerdiff: lower %s has a non-directory at %q: %w", l, p, ErrNotAdoptable)
			}
		}
	}
	for rel, unset := range u.implied {
		if !unset {
			continue
		}
		for _, l := range lowers {
			p := filepath.Join(l, rel)
			if _, err := os.Lstat(p); err != nil {
				continue
			}
			if _, err := getXattr(p, "system.posix_acl_default"); err == nil {
				return fmt.Errorf("layerdiff: lower directory %s has a default ACL: %w", p, ErrNotAdoptable)
			}
			break
		}
	}
	return nil
}

// inheritDir gives dir, which mkparent made for rel, the owner, mode and
// extended attributes of rel in the nearest lower that has it, as mkparent
// does. Not its times: the files made in it changed them since.
func inheritDir(dir, rel string, lowers []string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil // replaced by a later entry
	}
	for _, l := range lowers {
		p := filepath.Join(l, rel)
		var lst unix.Stat_t
		if err := unix.Lstat(p, &lst); err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
				continue
			}
			return fmt.Errorf("layerdiff: adopt: %w", &os.PathError{Op: "lstat", Path: p, Err: err})
		}
		if err := os.Lchown(dir, int(lst.Uid), int(lst.Gid)); err != nil {
			return fmt.Errorf("layerdiff: adopt: %w", err)
		}
		if err := unix.Chmod(dir, lst.Mode&0o7777); err != nil {
			return fmt.Errorf("layerdiff: adopt: %w", &os.PathError{Op: "chmod", Path: dir, Err: err})
		}
		return copyUpXAttrs(dir, p)
	}
	return nil
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if err == io.EOF {
		return true, nil
	}
	return false, err
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// relTo is p relative to root, which it is under.
func relTo(root, p string) string {
	return strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
}
