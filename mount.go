package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// The store's mounts are counted in the run root, shared by every process
// using the store (in-process or through the daemon) and gone after a
// reboot, when nothing is mounted any more — as containers/storage keeps
// its mountpoints.json.
const (
	mountsFile = "mountpoints.json"
	mountsLock = "mountpoints.lock"
)

type mountEntry struct {
	Path  string `json:"path"`
	Count int    `json:"count"`
}

func (s *store) readMounts() (map[string]mountEntry, error) {
	m := map[string]mountEntry{}
	data, err := os.ReadFile(filepath.Join(s.opts.RunRoot, mountsFile))
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read mount counts: %w", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("read mount counts %s: %w", filepath.Join(s.opts.RunRoot, mountsFile), err)
	}
	return m, nil
}

func (s *store) writeMounts(m map[string]mountEntry) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	path := filepath.Join(s.opts.RunRoot, mountsFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// lockMounts serializes mount count changes among all users of the store.
func (s *store) lockMounts() (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.opts.RunRoot, mountsLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock mount counts: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock mount counts: %w", err)
	}
	return func() { f.Close() }, nil
}

// Mount mounts layer id (read-write for a container's layer, read-only for
// an image layer) and returns where; a second Mount only counts. A
// container's mount options (and volatile flag) apply, as in
// containers/storage.
func (s *store) Mount(id, mountLabel string) (string, error) {
	return s.mount(id, mountLabel, nil)
}

// MountImage mounts image id's top layer read-only with mountOpts.
func (s *store) MountImage(id string, mountOpts []string, mountLabel string) (string, error) {
	img, err := s.findImage(id)
	if err != nil {
		return "", err
	}
	if img.TopLayer == "" {
		return "", fmt.Errorf("image %s has no layers to mount: %w", img.ID, ErrLayerUnknown)
	}
	return s.mount(img.TopLayer, mountLabel, append(append([]string{}, mountOpts...), "ro"))
}

// UnmountImage unmounts image id's top layer.
func (s *store) UnmountImage(id string, force bool) (bool, error) {
	img, err := s.findImage(id)
	if err != nil {
		return false, err
	}
	return s.Unmount(img.TopLayer, force)
}

func (s *store) mount(id, mountLabel string, options []string) (string, error) {
	unlock, err := s.lockMounts()
	if err != nil {
		return "", err
	}
	defer unlock()
	idx, err := s.load()
	if err != nil {
		return "", err
	}
	r, err := idx.layerOrContainer(id)
	if err != nil {
		return "", err
	}
	if c := idx.containerOn(r); c != nil {
		if opts, ok := c.Flags[mountOptsFlag].([]interface{}); ok {
			for _, o := range opts {
				if o, ok := o.(string); ok {
					options = append(options, o)
				}
			}
		}
		if v, _ := c.Flags[volatileFlag].(bool); v {
			options = append(options, "volatile")
		}
	}
	counts, err := s.readMounts()
	if err != nil {
		return "", err
	}
	if e := counts[r.ID]; e.Count > 0 && isMountPoint(e.Path) {
		e.Count++
		counts[r.ID] = e
		return e.Path, s.writeMounts(counts)
	}
	var mounts []mount.Mount
	if r.writeable {
		mounts, err = s.sn.Mounts(s.ctx, r.key)
	} else {
		key := mountPrefix + r.ID
		mounts, err = s.sn.View(s.ctx, key, r.key, snapshots.WithLabels(map[string]string{cslabels.Owned: "store"}))
		if errdefs.IsAlreadyExists(err) { // left by a mount before a reboot
			mounts, err = s.sn.Mounts(s.ctx, key)
		}
	}
	if err != nil {
		return "", mapErr(fmt.Errorf("mount layer %s: %w", r.ID, err))
	}
	for i := range mounts {
		if s.readOnly {
			// A writeable layer of a read-only image store: its upper
			// directory becomes a lower one, so nothing is written there.
			mounts[i] = readOnlyMount(mounts[i])
		}
		mounts[i].Options = withOptions(mounts[i], options)
	}
	target := filepath.Join(s.opts.RunRoot, "mounts", r.ID)
	if err := os.MkdirAll(target, 0o700); err != nil {
		return "", err
	}
	if err := mount.All(mounts, target); err != nil {
		if !r.writeable {
			s.deleteSnapshot(mountPrefix + r.ID)
		}
		return "", fmt.Errorf("mount layer %s (options %v): %w", r.ID, options, err)
	}
	counts[r.ID] = mountEntry{Path: target, Count: 1}
	return target, s.writeMounts(counts)
}

// withOptions adds options to m's, dropping "rw" when "ro" is asked and
// "volatile" where it means nothing (a bind mount).
func withOptions(m mount.Mount, options []string) []string {
	out := append([]string(nil), m.Options...)
	for _, o := range options {
		if o == "volatile" && m.Type != "overlay" {
			continue
		}
		if o == "ro" {
			kept := out[:0]
			for _, e := range out {
				if e != "rw" {
					kept = append(kept, e)
				}
			}
			out = kept
		}
		out = append(out, o)
	}
	return out
}

// Unmount drops one mount of layer id (every one with force) and unmounts
// it when none is left, reporting whether it is still mounted. id may also
// be the mount point.
func (s *store) Unmount(id string, force bool) (bool, error) {
	unlock, err := s.lockMounts()
	if err != nil {
		return false, err
	}
	defer unlock()
	counts, err := s.readMounts()
	if err != nil {
		return false, err
	}
	layerID := ""
	for lid, e := range counts {
		if e.Path == filepath.Clean(id) {
			layerID = lid
		}
	}
	if layerID == "" {
		idx, err := s.load()
		if err != nil {
			return false, err
		}
		r, err := idx.layerOrContainer(id)
		if err != nil {
			return false, err
		}
		layerID = r.ID
	}
	e, ok := counts[layerID]
	if !ok || e.Count == 0 {
		return false, nil
	}
	if e.Count > 1 && !force {
		e.Count--
		counts[layerID] = e
		return true, s.writeMounts(counts)
	}
	if err := mount.UnmountAll(e.Path, 0); err != nil {
		return true, fmt.Errorf("unmount layer %s: %w", layerID, err)
	}
	os.Remove(e.Path)
	if err := s.deleteSnapshot(mountPrefix + layerID); err != nil {
		return false, fmt.Errorf("release mount of layer %s: %w", layerID, err)
	}
	delete(counts, layerID)
	return false, s.writeMounts(counts)
}

// Mounted returns how many times layer id is mounted.
func (s *store) Mounted(id string) (int, error) {
	idx, err := s.load()
	if err != nil {
		return 0, err
	}
	r, err := idx.layerOrContainer(id)
	if err != nil {
		return 0, err
	}
	return r.MountCount, nil
}

func (s *store) mountedLayers() ([]string, error) {
	counts, err := s.readMounts()
	if err != nil {
		return nil, err
	}
	var ids []string
	for id, e := range counts {
		if e.Count > 0 {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// isMountPoint tells whether path is mounted on, so counts a reboot or a
// crash made stale are not trusted.
func isMountPoint(path string) bool {
	ok, err := mountinfo.Mounted(path)
	return err == nil && ok
}
