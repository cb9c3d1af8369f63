package main

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	cfs "github.com/containerd/continuity/fs"
	"golang.org/x/sys/unix"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/layerdiff"
)

// check, gc, copy, layer-parent-owners and container-parent-owners, as
// containers-storage v1.50 has them.

// The flags only these commands have (options, in main.go, holds the
// shared ones). A command line runs one command, so package variables do;
// each command's flag function resets them.
var (
	checkQuick, checkRepair, checkForce bool
	checkMaxAge                         string
	copyChown                           string
)

func init() {
	register(
		&command{
			names: []string{"check"},
			usage: "Check storage consistency",
			flags: func(fs *flagSet, o *options) {
				checkQuick, checkRepair, checkForce, checkMaxAge = false, false, false, "24h"
				jsonFlag(fs, o)
				fs.stringVar(&checkMaxAge, []string{"--max", "-m"}, "Maximum allowed age for unreferenced layers")
				fs.boolVar(&checkRepair, []string{"--repair", "-r"}, "Remove damaged images and layers")
				fs.boolVar(&checkForce, []string{"--force", "-f"}, "Remove damaged containers")
				fs.boolVar(&checkQuick, []string{"--quick", "-q"}, "Perform only quick checks")
			},
			action: cmdCheck,
		},
		&command{
			names:  []string{"gc"},
			usage:  "Perform garbage collection",
			flags:  jsonFlag,
			action: cmdGC,
		},
		&command{
			names:       []string{"copy"},
			optionsHelp: "[options [...]] [sourceLayerNameOrID:]/path [...] targetLayerNameOrID:/path",
			usage:       "Copy files or directories into a layer, possibly from another layer",
			minArgs:     2,
			maxArgs:     -1,
			flags: func(fs *flagSet, o *options) {
				copyChown = ""
				fs.stringVar(&copyChown, []string{"--chown", "-o"}, "Set owner on new copies")
				jsonFlag(fs, o)
			},
			action: cmdCopy,
		},
		&command{
			names:       []string{"layer-parent-owners"},
			optionsHelp: "[options [...]] layerNameOrID [...]",
			usage:       "Compute the set of unmapped parent UIDs and GIDs of the layer",
			minArgs:     1,
			maxArgs:     -1,
			flags:       jsonFlag,
			action:      cmdLayerParentOwners,
		},
		&command{
			names:       []string{"container-parent-owners"},
			optionsHelp: "[options [...]] containerNameOrID [...]",
			usage:       "Compute the set of unmapped parent UIDs and GIDs of the container",
			minArgs:     1,
			maxArgs:     -1,
			flags:       jsonFlag,
			action:      cmdContainerParentOwners,
		},
	)
}

// shutdownAfter releases the store as containers-storage's check and gc
// do: Shutdown(true), which unmounts every layer the store has mounted.
func (c *cli) shutdownAfter() {
	if _, err := c.store.Shutdown(true); err != nil {
		fmt.Fprintf(c.stderr, "shutdown: %v\n", err)
	}
	c.closed = true
}

// cmdCheck checks the store, prints what it found and, with -r, repairs
// it. The status is 1 while problems remain.
func cmdCheck(c *cli, _ []string) (int, error) {
	defer c.shutdownAfter()
	if checkForce {
		checkRepair = true
	}
	options := storage.CheckEverything()
	if checkQuick {
		options = storage.CheckMost()
	}
	if checkMaxAge != "" {
		age, err := time.ParseDuration(checkMaxAge)
		if err != nil {
			return 1, err
		}
		options.LayerUnreferencedMaximumAge = &age
	}
	report, err := c.store.Check(options)
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		if _, err := c.outputJSON(report); err != nil {
			return 1, err
		}
	} else {
		for _, kind := range []struct {
			what string
			m    map[string][]error
		}{
			{"layer", report.Layers},
			{"read-only layer", report.ROLayers},
			{"image", report.Images},
			{"read-only image", report.ROImages},
			{"container", report.Containers},
		} {
			ids := make([]string, 0, len(kind.m))
			for id := range kind.m {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			for _, id := range ids {
				if len(kind.m[id]) > 0 {
					fmt.Fprintf(c.stdout, "%s %s:\n", kind.what, id)
				}
				for _, err := range kind.m[id] {
					fmt.Fprintf(c.stdout, " %v\n", err)
				}
			}
		}
	}
	if !checkRepair {
		if len(report.Layers) > 0 || len(report.ROLayers) > 0 || len(report.Images) > 0 || len(report.ROImages) > 0 || len(report.Containers) > 0 {
			return 1, fmt.Errorf("%d layer errors, %d read-only layer errors, %d image errors, %d read-only image errors, %d container errors", len(report.Layers), len(report.ROLayers), len(report.Images), len(report.ROImages), len(report.Containers))
		}
		return 0, nil
	}
	repair := storage.RepairOptions{RemoveContainers: checkForce}
	if errs := c.store.Repair(report, &repair); len(errs) != 0 {
		if c.opts.json {
			if _, err := c.outputJSON(errs); err != nil {
				return 1, err
			}
		} else {
			for _, err := range errs {
				fmt.Fprintf(c.stderr, "%v\n", err)
			}
		}
		return 1, errs[0]
	}
	if len(report.ROLayers) > 0 || len(report.ROImages) > 0 || (!repair.RemoveContainers && len(report.Containers) > 0) {
		if repair.RemoveContainers {
			return 1, fmt.Errorf("%d read-only layer errors, %d read-only image errors", len(report.ROLayers), len(report.ROImages))
		}
		return 1, fmt.Errorf("%d read-only layer errors, %d read-only image errors, %d container errors", len(report.ROLayers), len(report.ROImages), len(report.Containers))
	}
	return 0, nil
}

func cmdGC(c *cli, _ []string) (int, error) {
	defer c.shutdownAfter()
	if err := c.store.GarbageCollect(); err != nil {
		return 1, err
	}
	if c.opts.json {
		return c.outputJSON("")
	}
	return 0, nil
}

// parentOwners is the JSON of the *-parent-owners commands.
type parentOwners struct {
	ID   string
	UIDs []int
	GIDs []int
}

// cmdLayerParentOwners prints the unmapped owners of each layer it finds
// (none: the store has no ID mappings); the status is 1 unless it found
// every one.
func cmdLayerParentOwners(c *cli, args []string) (int, error) {
	var matched []*storage.Layer
	for _, arg := range args {
		if l, err := c.store.Layer(arg); err == nil {
			matched = append(matched, l)
		}
	}
	for _, l := range matched {
		uids, gids, err := c.store.LayerParentOwners(l.ID)
		if err != nil {
			return 1, fmt.Errorf("LayerParentOwner: %+v", err)
		}
		if c.opts.json {
			if _, err := c.outputJSON(parentOwners{ID: l.ID, UIDs: uids, GIDs: gids}); err != nil {
				return 1, err
			}
			continue
		}
		fmt.Fprintf(c.stdout, "ID: %s\n", l.ID)
		if len(uids) > 0 {
			fmt.Fprintf(c.stdout, "UIDs: %v\n", uids)
		}
		if len(gids) > 0 {
			fmt.Fprintf(c.stdout, "GIDs: %v\n", gids)
		}
	}
	if len(matched) != len(args) {
		return 1, nil
	}
	return 0, nil
}

func cmdContainerParentOwners(c *cli, args []string) (int, error) {
	var matched []*storage.Container
	for _, arg := range args {
		if ctr, err := c.container(arg); err == nil {
			matched = append(matched, ctr)
		}
	}
	for _, ctr := range matched {
		uids, gids, err := c.store.ContainerParentOwners(ctr.ID)
		if err != nil {
			return 1, fmt.Errorf("ContainerParentOwner: %+v", err)
		}
		if c.opts.json {
			if _, err := c.outputJSON(parentOwners{ID: ctr.ID, UIDs: uids, GIDs: gids}); err != nil {
				return 1, err
			}
			continue
		}
		fmt.Fprintf(c.stdout, "ID: %s\n", ctr.ID)
		fmt.Fprintf(c.stdout, "UIDs: %v\n", uids)
		fmt.Fprintf(c.stdout, "GIDs: %v\n", gids)
	}
	if len(matched) != len(args) {
		return 1, nil
	}
	return 0, nil
}

// A place copy reads from or writes to: a path inside a mounted layer
// (root is its mount point) or on the host (root "/").
type copyPlace struct {
	root, path string
}

func (p copyPlace) String() string { return filepath.Join(p.root, p.path) }

// resolve is the place's path with every symlink in it followed, inside
// root: a layer's symlinks lead nowhere outside the layer.
func (p copyPlace) resolve() (string, error) {
	return cfs.RootPath(p.root, p.path)
}

// place turns a "[layer:]path" argument into a place, mounting the layer;
// the caller unmounts what is returned in mounted.
func (c *cli) place(arg string, mounted *[]string) (copyPlace, error) {
	layerName, p, ok := strings.Cut(arg, ":")
	if !ok {
		abs, err := filepath.Abs(arg)
		if err != nil {
			return copyPlace{}, err
		}
		return copyPlace{root: "/", path: abs}, nil
	}
	l, err := c.store.Layer(layerName)
	if err != nil {
		return copyPlace{}, fmt.Errorf("error finding layer %q: %+v", layerName, err)
	}
	mp, err := c.store.Mount(l.ID, l.MountLabel)
	if err != nil {
		return copyPlace{}, fmt.Errorf("error mounting layer %q: %+v", l.ID, err)
	}
	*mounted = append(*mounted, l.ID)
	return copyPlace{root: mp, path: p}, nil
}

// cmdCopy copies each source into the target, as containers-storage's copy
// does: a directory's contents into the target directory (made if need
// be), a file to the target path (into it when it ends in "/"), keeping
// owners (or setting --chown's), permissions and times. A layer the store
// made read-only (committed) mounts read-only, so only writeable layers
// and containers' layers can be copied into.
func cmdCopy(c *cli, args []string) (int, error) {
	var chown *[2]int
	if copyChown != "" {
		parts := strings.SplitN(copyChown, ":", 2)
		if len(parts) == 1 {
			parts = append(parts, parts[0])
		}
		uid, err := strconv.ParseUint(parts[0], 10, 32)
		if err != nil {
			return 1, fmt.Errorf("error %q as a numeric UID: %v", parts[0], err)
		}
		gid, err := strconv.ParseUint(parts[1], 10, 32)
		if err != nil {
			return 1, fmt.Errorf("error %q as a numeric GID: %v", parts[1], err)
		}
		chown = &[2]int{int(uid), int(gid)}
	}
	var mounted []string
	defer func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			if _, err := c.store.Unmount(mounted[i], false); err != nil {
				fmt.Fprintf(c.stderr, "error unmounting layer %q: %+v\n", mounted[i], err)
			}
		}
	}()
	target, err := c.place(args[len(args)-1], &mounted)
	if err != nil {
		return 1, err
	}
	for _, arg := range args[:len(args)-1] {
		source, err := c.place(arg, &mounted)
		if err != nil {
			return 1, err
		}
		if err := copyWithTar(source, target, chown); err != nil {
			return 1, fmt.Errorf("error copying %q to %q: %+v", source, target, err)
		}
	}
	return 0, nil
}

// copyWithTar copies src to dst through a tar stream, extracted as a
// layer diff is (entries kept inside dst).
func copyWithTar(src, dst copyPlace, chown *[2]int) error {
	from, err := src.resolve()
	if err != nil {
		return err
	}
	st, err := os.Stat(from)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return copyFileWithTar(src, from, st, dst, chown)
	}
	into, err := dst.resolve()
	if err != nil {
		return err
	}
	if err := mkdirAllNew(into, chown); err != nil {
		return err
	}
	return untar(into, func(tw *tar.Writer) error { return tarTree(tw, from, chown) })
}

// copyFileWithTar copies file from (src resolved) to dst: to dst/<name
// of src> when dst ends in "/". It does not replace a directory.
func copyFileWithTar(src copyPlace, from string, st os.FileInfo, dst copyPlace, chown *[2]int) error {
	p := dst.path
	if strings.HasSuffix(p, "/") {
		p = filepath.Join(p, filepath.Base(src.path))
	}
	dir, err := (copyPlace{dst.root, filepath.Dir(p)}).resolve()
	if err != nil {
		return err
	}
	name := filepath.Base(p)
	if fi, err := os.Lstat(filepath.Join(dir, name)); err == nil && fi.IsDir() {
		return fmt.Errorf("cannot overwrite directory %q with non-directory %q", filepath.Join(dir, name), name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return untar(dir, func(tw *tar.Writer) error { return copyEntry(tw, from, name, st, chown, nil) })
}

// mkdirAllNew makes dir and its missing parents, 0755, owned by chown
// (root without it).
func mkdirAllNew(dir string, chown *[2]int) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if chown != nil {
		for _, d := range missing {
			if err := os.Lchown(d, chown[0], chown[1]); err != nil {
				return err
			}
		}
	}
	return nil
}

// untar extracts what write writes into dir.
func untar(dir string, write func(*tar.Writer) error) error {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := write(tw)
		if cerr := tw.Close(); err == nil {
			err = cerr
		}
		pw.CloseWithError(err)
	}()
	_, err := layerdiff.Apply(context.Background(), dir, pr, layerdiff.ApplyOptions{})
	pr.CloseWithError(err) // stops the writer if Apply gave up
	return err
}

// tarTree writes the tree under dir (not dir itself), hard links as links.
func tarTree(tw *tar.Writer, dir string, chown *[2]int) error {
	links := map[[2]uint64]string{}
	return filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		return copyEntry(tw, p, filepath.ToSlash(rel), fi, chown, links)
	})
}

// copyEntry writes file p (fi its lstat) as entry name.
func copyEntry(tw *tar.Writer, p, name string, fi os.FileInfo, chown *[2]int, links map[[2]uint64]string) error {
	if fi.Mode()&os.ModeSocket != 0 {
		return nil // as containers-storage, sockets are not copied
	}
	target := ""
	if fi.Mode()&os.ModeSymlink != 0 {
		var err error
		if target, err = os.Readlink(p); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, target)
	if err != nil {
		return err
	}
	hdr.Name = name
	if fi.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uname, hdr.Gname = "", ""
	if chown != nil {
		hdr.Uid, hdr.Gid = chown[0], chown[1]
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 && links != nil {
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if first, ok := links[key]; ok {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
		} else {
			links[key] = name
		}
	}
	// Capabilities go along, as containers-storage copies them.
	buf := make([]byte, 256)
	if n, err := unix.Lgetxattr(p, "security.capability", buf); err == nil && n > 0 {
		hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": string(buf[:n])}
		hdr.Format = tar.FormatPAX
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}
