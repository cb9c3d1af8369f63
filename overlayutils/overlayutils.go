// Package overlayutils knows the kernel side of overlayfs: whether it can be
// used on a directory, which mount options it needs there, and how a chain of
// layers becomes a mount.
package overlayutils

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// MaxLowerDirs is the kernel's limit on overlay lower layers (OVL_MAX_STACK).
const MaxLowerDirs = 500

// Check reports why root cannot hold overlay snapshots, or nil if it can.
// Its caller must hold root (the checks mount in it).
func Check(root string) error {
	removeCheckLeftovers(root)
	dtype, err := fs.SupportsDType(root)
	if err != nil {
		return fmt.Errorf("check d_type support on %s: %w", root, err)
	}
	if !dtype {
		return fmt.Errorf("%s does not support d_type; on xfs, reformat with ftype=1", root)
	}
	if err := overlayutils.Supported(root); err != nil {
		return fmt.Errorf("overlayfs is not usable on %s: %w", root, err)
	}
	return nil
}

// DefaultOptions returns the overlay mount options root needs on top of
// extra: "userxattr" where the kernel requires it (rootless, user
// namespaces) and "index=off" where the kernel knows the option, as
// containerd's overlayfs snapshotter does.
func DefaultOptions(root string, extra []string) []string {
	opts := append([]string(nil), extra...)
	if !hasOption(opts, "userxattr") {
		need, err := overlayutils.NeedsUserXAttr(root)
		if err != nil {
			log.L.WithError(err).Warnf("cannot detect whether \"userxattr\" is needed, assuming %v", need)
		}
		if need {
			opts = append(opts, "userxattr")
		}
	}
	if !hasOption(opts, "index") && supportsIndex() {
		opts = append(opts, "index=off")
	}
	return opts
}

func hasOption(options []string, key string) bool {
	for _, o := range options {
		if o == key || strings.HasPrefix(o, key+"=") {
			return true
		}
	}
	return false
}

func supportsIndex() bool {
	_, err := os.Stat("/sys/module/overlay/parameters/index")
	return err == nil
}

// Layers describes what a snapshot mounts: its own directories (upper and
// work, set for an active snapshot) and its parents' directories, nearest
// parent first.
type Layers struct {
	Upper    string
	Work     string
	Lowers   []string
	ReadOnly bool
}

// Mounts turns layers into mounts the way containerd's overlayfs snapshotter
// does: a bind mount when there is at most one directory to show, overlay
// otherwise. options are the overlay options from DefaultOptions.
func Mounts(l Layers, options []string) ([]mount.Mount, error) {
	if len(l.Lowers) > MaxLowerDirs {
		return nil, fmt.Errorf("%d parent layers exceed the kernel's overlay limit of %d", len(l.Lowers), MaxLowerDirs)
	}
	if len(l.Lowers) == 0 {
		mode := "rw"
		if l.ReadOnly {
			mode = "ro"
		}
		return []mount.Mount{{Type: "bind", Source: l.Upper, Options: []string{mode, "rbind"}}}, nil
	}
	var opts []string
	if !l.ReadOnly {
		opts = append(opts, "workdir="+l.Work, "upperdir="+l.Upper)
	} else if len(l.Lowers) == 1 {
		return []mount.Mount{{Type: "bind", Source: l.Lowers[0], Options: []string{"ro", "rbind"}}}, nil
	}
	opts = append(opts, "lowerdir="+strings.Join(l.Lowers, ":"))
	opts = append(opts, options...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: opts}}, nil
}

// removeCheckLeftovers undoes what a check killed midway left in root:
// containerd's probes mount an overlay in a directory of root and remove
// it afterwards.
func removeCheckLeftovers(root string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, "multiple-lowerdir-check") && name != "userxattr-check" {
			continue
		}
		dir := filepath.Join(root, name)
		// Mounts anywhere below, deepest first (userxattr-check nests one
		// level further).
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && d.Name() == "merged" {
				if err := mount.UnmountAll(p, unix.MNT_DETACH); err != nil {
					log.L.WithError(err).WithField("path", p).Warn("unmount an overlay check left")
				}
				return filepath.SkipDir
			}
			return nil
		})
		if err := os.RemoveAll(dir); err != nil {
			log.L.WithError(err).WithField("path", dir).Warn("remove an overlay check left")
		}
	}
}

func Dirs(mounts []mount.Mount, readOnly bool) (upper string, lowers []string, err error) {
	if len(mounts) != 1 {
		return "", nil, fmt.Errorf("unexpected mounts %+v", mounts)
	}
	m := mounts[0]
	switch m.Type {
	case "bind":
		return m.Source, nil, nil
	case "overlay":
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = v
			} else if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				lowers = strings.Split(v, ":")
			}
		}
		if readOnly && upper == "" && len(lowers) > 0 {
			return lowers[0], lowers[1:], nil
		}
		if upper == "" {
			return "", nil, fmt.Errorf("overlay mount without upperdir: %v", m.Options)
		}
		return upper, lowers, nil
	}
	return "", nil, fmt.Errorf("unexpected mount type %q", m.Type)
}

// CheckLower reports why the file system of dir cannot hold overlay lower
// layers (a read-only image store's), nil if it can. It mounts a read-only
// overlay with dir as a lower layer on a directory of its own, so nothing
// is written under dir.
func CheckLower(dir string) error {
	if strings.ContainsAny(dir, ",:") {
		return fmt.Errorf("%s cannot be an overlay lower layer: its path holds ',' or ':'", dir)
	}
	tmp, err := os.MkdirTemp("", "cs-lower-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	empty, target := filepath.Join(tmp, "empty"), filepath.Join(tmp, "merged")
	for _, d := range []string{empty, target} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	if err := unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, "lowerdir="+dir+":"+empty); err != nil {
		return fmt.Errorf("%s cannot be an overlay lower layer: mount: %w", dir, err)
	}
	return unix.Unmount(target, 0)
}
