package layerdiff

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrEscape is wrapped by Apply's error for a tar entry that would land
// outside the layer directory if extracted naively: a name or hard link
// target that leaves the root after cleaning, or a parent path that goes
// through a symlink leading outside the root.
var ErrEscape = errors.New("tar entry escapes the layer root")

// escapeChecker refuses what containerd's archive.Apply would otherwise
// have to contain, as containers/storage's pkg/archive does (its
// UnpackLayer refuses names "outside of" the destination and "invalid
// hardlink"s, and relies on a chroot for writes through symlinks):
//
//   - a name that leaves the root once cleaned ("../x", "a/../../x");
//     absolute names are taken relative to the root, as containers/storage
//     does (filepath.Join(dest, filepath.Clean(name))): "/etc/x" is
//     "etc/x", "/../x" is "x";
//   - a hard link whose target leaves the root, lexically ("../x") or
//     through a symlink; an absolute target is taken relative to the root
//     too;
//   - an entry or hard link target whose parent path goes through a symlink
//     that, resolved as the kernel would outside a chroot, leaves the root:
//     an absolute symlink ("/", "/usr/bin"), or a relative one with too
//     many "..". The symlinks considered are those of the merged overlay
//     view — the layer's own earlier entries and whatever the upper
//     directory already holds, then the Parents, nearest first, honouring
//     whiteouts and opaque directories.
//
// A symlink entry itself is never refused, whatever its target: "bin/sh ->
// /bin/busybox" is normal, and the container resolves targets inside its
// root. Writing through a symlink that stays inside the root ("lib ->
// usr/lib", then "lib/x") is allowed, as containers/storage allows it.
//
// The filter runs just before each entry is written and every earlier one
// is on disk, so looking at the upper directory sees the symlinks earlier
// entries made.
type escapeChecker struct {
	root   string
	lowers []string
	// verified holds parent directories (cleaned, relative) found not to
	// escape since the last entry that could change how they resolve, and
	// whether resolving them followed no symlink (plain: it went through
	// the directories its name spells).
	verified map[string]bool
	// under lists the verified directories below each directory, to
	// forget a subtree; crooked counts the verified ones that are not
	// plain.
	under   map[string][]string
	crooked int
	// refs counts the entries of under's lists, to bound the memory a deep
	// tree takes (each verified directory is listed under each of its
	// ancestors).
	refs int
	// upper resolves paths in the upper directory without following
	// symlinks.
	upper plainResolver
	// unp records the lookups that would have gone to the lowers, when
	// they are not known yet.
	unp *Unparented
}

// maxRefs bounds escapeChecker.refs: past it the cache starts over, which
// is always correct.
const maxRefs = 1 << 22

// maxSymlinks bounds the symlinks followed resolving one path, as the
// kernel's MAXSYMLINKS.
const maxSymlinks = 40

func escapeError(name, format string, args ...any) error {
	return fmt.Errorf("%w: entry %q: %s", ErrEscape, name, fmt.Sprintf(format, args...))
}

// check vets hdr, whose Name archive.Apply has cleaned with filepath.Clean.
func (c *escapeChecker) check(hdr *tar.Header) error {
	name := path.Clean(hdr.Name)
	if name == ".." || strings.HasPrefix(name, "../") {
		return escapeError(hdr.Name, "its name leads outside the root")
	}
	rel := strings.TrimLeft(name, "/") // absolute names are rooted at dir; Clean left no ".."
	plain, err := c.checkParent(hdr.Name, func() string { return fmt.Sprintf("its parent %q", path.Dir(rel)) }, path.Dir(rel), false)
	if err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeLink {
		if err := c.checkLinkTarget(hdr); err != nil {
			return err
		}
	}
	// What may change how later paths resolve: a new symlink (a hard link
	// can be one), a directory that replaces a non-directory and so
	// uncovers a lower one. Files, devices and whiteouts only hide.
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		c.changed(rel, plain)
	}
	return nil
}

// changed forgets the verified directories whose resolution an entry at
// rel can change. When the entry's parent and every verified directory
// resolved plainly, a name resolves through the directories it spells, and
// only those at or under rel go through what the entry changes (mkparent
// making its missing parents changes nothing: a directory made where the
// merged view had a symlink would not be plain, and one made over a
// lower non-directory or nothing shows an empty directory, which resolves
// as nothing did). Otherwise it forgets them all.
func (c *escapeChecker) changed(rel string, plain bool) {
	if !plain || c.crooked > 0 || rel == "." || rel == "" {
		c.forgetAll()
		return
	}
	c.forget(rel)
	for _, d := range c.under[rel] {
		c.forget(d)
	}
	delete(c.under, rel)
}

func (c *escapeChecker) forgetAll() {
	clear(c.verified)
	clear(c.under)
	c.crooked = 0
	c.refs = 0
}

func (c *escapeChecker) forget(dir string) {
	if plain, ok := c.verified[dir]; ok {
		if !plain {
			c.crooked--
		}
		delete(c.verified, dir)
	}
}

func (c *escapeChecker) remember(dir string, plain bool) {
	if c.verified == nil {
		c.verified = map[string]bool{}
		c.under = map[string][]string{}
	}
	if _, ok := c.verified[dir]; ok {
		return
	}
	if c.refs > maxRefs {
		c.forgetAll()
	}
	c.verified[dir] = plain
	if !plain {
		c.crooked++
	}
	for i := strings.LastIndexByte(dir, '/'); i > 0; i = strings.LastIndexByte(dir[:i], '/') {
		c.under[dir[:i]] = append(c.under[dir[:i]], dir)
		c.refs++
	}
}

// plainInUpper reports whether dir (relative, without "..") resolves
// plainly, following no symlink, and so stays inside, as far as one look at
// the upper directory and one per lower can tell: dir is a directory of the
// upper directory reached through directories only, which overlay shows as
// they are whatever the lowers hold; or its parent is, and neither the
// upper directory nor any lower has anything at dir, so that it does not
// exist. This answers in one openat2 (and an lstat per lower) what the walk
// in checkParent answers with a system call per component and layer, each
// resolving the path so far again: quadratic in the depth, minutes for a
// layer of a thousand files a thousand directories deep. false means: walk.
func (c *escapeChecker) plainInUpper(dir string) bool {
	switch c.upper.resolve(dir) {
	case plainDir:
		return true
	case plainMissing:
	default:
		return false
	}
	if c.unp != nil {
		c.unp.consult(dir)
	}
	if len(c.lowers) == 0 {
		// Every component that exists is a directory (a symlink would
		// have stopped openat2 first), and the rest does not exist.
		return true
	}
	if parent := path.Dir(dir); parent != "." && c.upper.resolve(parent) != plainDir {
		return false
	}
	// The parent is a directory of the upper directory, where dir is not.
	// Overlay shows a lower's dir only if the lower's own path to it is
	// directories, and lstat sees it then; so nothing found in any lower
	// means nothing there. (Something found through a lower's symlink,
	// which overlay would not show, only sends this to the walk.)
	for _, l := range c.lowers {
		var st unix.Stat_t
		err := unix.Lstat(l+"/"+dir, &st)
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
			return false
		}
	}
	return true
}

// close releases what plainInUpper opened.
func (c *escapeChecker) close() { c.upper.close() }

func (c *escapeChecker) checkLinkTarget(hdr *tar.Header) error {
	target := hdr.Linkname
	clean := path.Clean(target)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return escapeError(hdr.Name, "hard link target %q leads outside the root", target)
	}
	// containerd resolves the target's parent as written, symlinks before
	// "..", so check it that way too; containers/storage cleans it first.
	// For an absolute target, ".." above the root stays at the root
	// (filepath.Join(dest, target)) until a symlink is followed.
	what := func() string { return fmt.Sprintf("its hard link target %q", target) }
	abs := path.IsAbs(target)
	if i := strings.LastIndexByte(target, '/'); i >= 0 {
		if _, err := c.checkParent(hdr.Name, what, strings.TrimLeft(target[:i], "/"), abs); err != nil {
			return err
		}
	}
	_, err := c.checkParent(hdr.Name, what, strings.TrimLeft(path.Dir(clean), "/"), abs)
	return err
}

// layerPath is a directory of the merged view in one layer: layer 0 is the
// upper directory, i the Parents[i-1].
type layerPath struct {
	path  string
	layer int
}

// checkParent resolves dir (relative to the root, possibly with ".." when
// a hard link target is written so) through the merged view, and fails
// with ErrEscape if it leaves the root. what describes dir for the error.
// With rooted (an absolute hard link target), ".." at the root stays there
// until a symlink has been followed. plain reports that no symlink was.
func (c *escapeChecker) checkParent(name string, describe func() string, dir string, rooted bool) (plain bool, err error) {
	if dir == "." || dir == "" {
		return true, nil
	}
	// Without "..", rooted makes no difference.
	cacheable := !hasDotDot(dir)
	if plain, ok := c.verified[dir]; ok && cacheable {
		return plain, nil
	}
	if cacheable && c.plainInUpper(dir) {
		if verifyShortcuts {
			if plain, err := c.walk(name, describe, dir, rooted); err != nil || !plain {
				panic(fmt.Sprintf("layerdiff: plainInUpper(%q) says plain, the walk says plain %v, %v", dir, plain, err))
			}
		}
		c.remember(dir, true)
		return true, nil
	}
	plain, err = c.walk(name, describe, dir, rooted)
	if err == nil && cacheable {
		c.remember(dir, plain)
	}
	return plain, err
}

// verifyShortcuts makes the shortcuts around the walks (plainInUpper,
// resolvePath's) check their answer against the walk, and panic if they
// differ. For tests.
var verifyShortcuts = false

// walk resolves dir through the merged view, one component and layer at a
// time, as checkParent describes.
func (c *escapeChecker) walk(name string, describe func() string, dir string, rooted bool) (plain bool, err error) {
	what := describe()
	type frame struct {
		rel  string      // path in the merged view
		dirs []layerPath // where this directory is, upper first
	}
	stack := []frame{{rel: "", dirs: c.rootDirs()}}
	todo := strings.Split(dir, "/")
	followed := 0
	var lastLink string // the last symlink followed, for the error
	for len(todo) > 0 {
		comp := todo[0]
		todo = todo[1:]
		switch comp {
		case "", ".":
			continue
		case "..":
			if len(stack) == 1 {
				if followed == 0 && rooted {
					continue
				}
				if followed == 0 {
					return false, escapeError(name, "%s leads outside the root", what)
				}
				return false, escapeError(name, "%s goes through symlink %s, which leads outside the root", what, lastLink)
			}
			stack = stack[:len(stack)-1]
			continue
		}
		top := stack[len(stack)-1]
		next := frame{rel: path.Join(top.rel, comp)}
		isLink := false
		if c.unp != nil {
			// Found in the layer or not, it would have been looked up in
			// the lowers after an upper directory.
			c.unp.consult(next.rel)
		}
	lookup:
		for i, d := range top.dirs {
			p := d.path + "/" + comp
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
					continue
				}
				return false, fmt.Errorf("entry %q: checking %s: %w", name, what, &os.PathError{Op: "lstat", Path: p, Err: err})
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFLNK:
				target, err := os.Readlink(p)
				if err != nil {
					return false, fmt.Errorf("entry %q: checking %s: %w", name, what, err)
				}
				if followed++; followed > maxSymlinks {
					return false, fmt.Errorf("entry %q: checking %s: too many levels of symbolic links", name, what)
				}
				lastLink = fmt.Sprintf("%q -> %q%s", next.rel, target, c.where(d.layer))
				if path.IsAbs(target) {
					return false, escapeError(name, "%s goes through symlink %s, an absolute path outside the root", what, lastLink)
				}
				// Not pushed: the target resolves from top.
				todo = append(strings.Split(target, "/"), todo...)
				isLink = true
			case unix.S_IFDIR:
				next.dirs = c.merge(comp, top.dirs[i:])
			}
			// Else a whiteout or another non-directory: nothing below it.
			break lookup
		}
		if !isLink {
			stack = append(stack, next)
		}
	}
	return followed == 0, nil
}

// rootDirs are the layer roots merged at "/".
func (c *escapeChecker) rootDirs() []layerPath {
	dirs := []layerPath{{c.root, 0}}
	if len(c.lowers) == 0 || mergeStops(c.root) {
		return dirs
	}
	for i, l := range c.lowers {
		if fi, err := os.Lstat(l); err != nil || !fi.IsDir() {
			continue
		}
		dirs = append(dirs, layerPath{l, i + 1})
		if mergeStops(l) {
			break
		}
	}
	return dirs
}

// merge returns the directories named comp in dirs that overlayfs merges:
// the first (a directory), then the same in the following layers down to
// one that is opaque, or until a layer has something else there.
func (c *escapeChecker) merge(comp string, dirs []layerPath) []layerPath {
	first := layerPath{dirs[0].path + "/" + comp, dirs[0].layer}
	out := []layerPath{first}
	if len(dirs) == 1 || mergeStops(first.path) {
		return out
	}
	for _, d := range dirs[1:] {
		p := d.path + "/" + comp
		fi, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if !fi.IsDir() {
			break
		}
		out = append(out, layerPath{p, d.layer})
		if mergeStops(p) {
			break
		}
	}
	return out
}

func (c *escapeChecker) where(layer int) string {
	if layer == 0 {
		return ""
	}
	return fmt.Sprintf(" (in lower %s)", c.lowers[layer-1])
}

// mergeStops reports whether overlay would not merge lower directories under
// p. If that cannot be read, it assumes not, which looks at more layers.
func mergeStops(p string) bool {
	o, _ := isOpaque(p)
	return o
}
