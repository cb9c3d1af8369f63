package layerdiff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/epoch"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/continuity/sysx"
	"golang.org/x/sys/unix"
)

// WriteDiff writes to w an uncompressed OCI layer tar of the changes that
// upperDir, an overlay upper directory, makes to lowerDirs, its lower
// directories nearest first (as overlay's lowerdir option lists them; none
// for a base layer). It is the diff for a layer that has no tar-split — one
// containerd unpacked, or a container's changes — and is what containerd's
// overlay-aware differ produces: the upper directory is walked
// (continuity's fs.DiffDirChanges), 0/0 character devices become ".wh."
// entries, trusted.overlay.opaque=y (or user.overlay.opaque) directories
// get a ".wh..wh..opq" entry, and each change is compared with the merged
// lower directories, mounted read-only as an overlay in a temporary
// directory (hence root). A SOURCE_DATE_EPOCH in ctx (containerd's
// pkg/epoch) bounds the modification times, as in containerd.
//
// The tar is not the bytes a layer was pulled as; use Reassemble for that.
// The upper directory must not be written to meanwhile, and must not use
// overlay's redirect_dir or metacopy features (containerd does not enable
// them).
func WriteDiff(ctx context.Context, w io.Writer, lowerDirs []string, upperDir string) error {
	var opts []archive.ChangeWriterOpt
	if tm := epoch.FromContext(ctx); tm != nil {
		opts = append(opts, archive.WithModTimeUpperBound(*tm))
	}
	upper, err := filepath.Abs(upperDir)
	if err != nil {
		return fmt.Errorf("layerdiff: diff: %w", err)
	}
	diff := func(lowerRoot string) error {
		cw := archive.NewChangeWriter(w, upper, opts...)
		// fs.DiffDirChanges never reports the root itself; an opaque
		// root (a layer that hides everything below) must be said
		// explicitly.
		if opaque, err := isOpaque(upper); err != nil {
			return fmt.Errorf("layerdiff: diff of %s: %w", upper, err)
		} else if opaque {
			if err := cw.HandleChange(fs.ChangeKindDelete, "/"+whiteoutPrefix+".opq", nil, nil); err != nil {
				return fmt.Errorf("layerdiff: diff of %s: %w", upper, err)
			}
		}
		order := &opaqueAfterDir{ctx: ctx, next: cw.HandleChange}
		if err := fs.DiffDirChanges(ctx, lowerRoot, upper, fs.DiffSourceOverlayFS, order.change); err != nil {
			return fmt.Errorf("layerdiff: diff of %s: %w", upper, err)
		}
		if err := order.flush(); err != nil {
			return fmt.Errorf("layerdiff: diff of %s: %w", upper, err)
		}
		if err := cw.Close(); err != nil {
			return fmt.Errorf("layerdiff: diff of %s: %w", upper, err)
		}
		return nil
	}

	// With no lower, every change is an addition: compare with an empty
	// directory. With one, an empty directory goes below it, because an
	// overlay without upper needs two lowers; it is still an overlay
	// rather than a bind mount so that the lower's own whiteouts and
	// opaque directories hide what they hide.
	empty, err := os.MkdirTemp("", "layerdiff-empty-")
	if err != nil {
		return fmt.Errorf("layerdiff: diff: %w", err)
	}
	defer os.Remove(empty)
	if len(lowerDirs) == 0 {
		return diff(empty)
	}
	lowers := make([]string, 0, len(lowerDirs)+1)
	for _, d := range lowerDirs {
		d, err := filepath.Abs(d)
		if err != nil {
			return fmt.Errorf("layerdiff: diff: %w", err)
		}
		if strings.ContainsAny(d, ":,") {
			return fmt.Errorf("layerdiff: diff: lower directory %q: ':' and ',' cannot be passed to overlay", d)
		}
		lowers = append(lowers, d)
	}
	if len(lowers) == 1 {
		lowers = append(lowers, empty)
	}
	m := mount.Mount{
		Type:    "overlay",
		Source:  "overlay",
		Options: []string{"ro", "lowerdir=" + strings.Join(lowers, ":")},
	}
	return mount.WithTempMount(ctx, []mount.Mount{m}, diff)
}

// opaqueAfterDir delays an opaque directory's ".wh..opq" deletion until
// after the directory's own change. fs.DiffDirChanges reports the deletion
// first; archive.ChangeWriter then writes the directory as the marker's
// parent, and again for the directory's own change. A tar listing a
// directory twice is refused by tar-split (storage.ErrDuplicatePath), so
// neither Apply with a tar-split nor containers/storage could take it.
//
// It also checks ctx, which fs.DiffDirChanges does not.
type opaqueAfterDir struct {
	ctx     context.Context
	next    fs.ChangeFunc
	pending string // the held marker's path
}

func (o *opaqueAfterDir) change(k fs.ChangeKind, p string, f os.FileInfo, err error) error {
	if cerr := o.ctx.Err(); cerr != nil {
		return cerr
	}
	if err == nil && k == fs.ChangeKindDelete && filepath.Base(p) == whiteoutPrefix+".opq" {
		if err := o.flush(); err != nil {
			return err
		}
		o.pending = p
		return nil
	}
	if o.pending != "" {
		dir := filepath.Dir(o.pending)
		if p == dir || strings.HasPrefix(dir, p+"/") {
			// The directory, or an ancestor reported as modified
			// before it: they go first.
			if err := o.next(k, p, f, err); err != nil {
				return err
			}
			if p == dir {
				return o.flush()
			}
			return nil
		}
		// The directory itself is unchanged; the marker brings it in.
		if err := o.flush(); err != nil {
			return err
		}
	}
	return o.next(k, p, f, err)
}

func (o *opaqueAfterDir) flush() error {
	if o.pending == "" {
		return nil
	}
	p := o.pending
	o.pending = ""
	return o.next(fs.ChangeKindDelete, p, nil, nil)
}

// isOpaque reports whether an upper directory is marked opaque, under
// either xattr namespace overlay uses.
func isOpaque(dir string) (bool, error) {
	for _, name := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		v, err := sysx.LGetxattr(dir, name)
		if err != nil {
			if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
				continue
			}
			return false, fmt.Errorf("reading %s: %w", name, err)
		}
		if string(v) == "y" {
			return true, nil
		}
	}
	return false, nil
}
