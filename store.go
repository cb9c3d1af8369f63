// Package storage is cs-snapshotter's store face: containers/storage's Store
// (layers, names, metadata, big data, exact layer diffs) kept entirely as
// containerd snapshots and blobs with labels, so it runs the same embedded
// (the daemon's snapshotter and content store in-process) or remote (the
// same interfaces over the daemon's socket, through containerd's proxy
// clients).
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// Version is the store's version, reported by Version().
const Version = "0.1.0"

// StoreOptions says which store to open, as containers/storage's does.
type StoreOptions struct {
	// RunRoot holds what does not survive a reboot: mount points and their
	// counts.
	RunRoot string `json:"runroot,omitempty"`
	// GraphRoot is the cs-snapshotter root: the daemon's --root.
	GraphRoot string `json:"root,omitempty"`
	// ImageStore is a separate writable image store (containers/storage's
	// --image-store, storage.conf's imagestore): another cs-snapshotter
	// root where new layers and images go, containers staying in
	// GraphRoot (see separatestore.go and docs/store.md); not with
	// ContainerdAddress.
	ImageStore string `json:"imagestore,omitempty"`
	// ROImageStores are additional read-only image stores (storage.conf's
	// additionalimagestores; containers/storage takes them as
	// "overlay.imagestore=PATH" in GraphDriverOptions, which GetStore reads
	// too). Each is another cs-snapshotter root, read and never written
	// (see rostores.go and docs/store.md); not with ContainerdAddress.
	ROImageStores []string `json:"additionalimagestores,omitempty"`
	// GraphDriverName must be "" or "overlay".
	GraphDriverName string `json:"driver,omitempty"`
	// GraphDriverOptions are "overlay.<option>=<value>" settings; those the
	// store does not use are ignored.
	GraphDriverOptions []string `json:"driver-options,omitempty"`
	// TransientStore is accepted for compatibility; the store's records
	// always survive a reboot.
	TransientStore bool `json:"transient_store,omitempty"`

	// ContainerdAddress, when set, opens the store through containerd
	// itself (its socket): containerd's snapshot service for
	// ContainerdSnapshotter and its content store, in namespace
	// ContainerdNamespace. What the store makes is then containerd's too:
	// listed by ctr in that namespace, kept by gc.root labels, collected
	// by containerd's garbage collector once the store deletes it.
	// GraphRoot and RunRoot still hold the container directories and the
	// mount counts.
	ContainerdAddress string `json:"containerd_address,omitempty"`
	// ContainerdNamespace defaults to "default".
	ContainerdNamespace string `json:"containerd_namespace,omitempty"`
	// ContainerdSnapshotter defaults to "cs".
	ContainerdSnapshotter string `json:"containerd_snapshotter,omitempty"`
	// MaxLayerSize bounds, in bytes, what one layer applied by this store
	// may expand to (the daemon's [snapshotter] max_layer_size); 0: no
	// bound.
	MaxLayerSize int64 `json:"max_layer_size,omitempty"`
}

// store implements Store on a snapshotter and a content store.
type store struct {
	opts       StoreOptions
	ctx        context.Context
	sn         snapshots.Snapshotter
	cs         content.Store
	embedded   *daemon.Daemon // set when the root is open in this process
	client     *daemon.Client // set when a daemon serves the root
	containerd *client.Client // set when opened through containerd

	// roLayer and roImage, set when there are other image stores (the
	// separate one, read-only ones), find a layer or image there for
	// PutLayer, CreateImage and CreateContainer and return the key of its top layer's
	// mirror in this root (made if needed); ErrLayerUnknown or
	// ErrImageUnknown if no store has it.
	roLayer func(ref string) (key string, err error)
	roImage func(ref string) (imageID, topKey string, err error)
	// roImageExists tells Check whether another image store has image id.
	roImageExists func(id string) bool
	// roLayerExists tells Check whether another image store has layer id.
	roLayerExists func(id string) bool
	// readOnly: this is an additional read-only image store's store
	// (rostores.go); its mounts are all read-only.
	readOnly bool
}

// namespace is the containerd namespace the store's requests carry. The
// daemon itself is not namespaced; containerd's keys carry theirs.
const namespace = "cs-storage"

// GetStore opens the store at options.GraphRoot: through the daemon serving
// it if there is one, in-process otherwise (holding the root's lock until
// Shutdown). Another process holding the root in-process is an error naming
// it.
func GetStore(options StoreOptions) (Store, error) {
	if options.GraphRoot == "" || options.RunRoot == "" {
		return nil, ErrIncompleteOptions
	}
	if options.GraphDriverName != "" && options.GraphDriverName != "overlay" {
		return nil, fmt.Errorf("storage driver %q: only \"overlay\" is available: %w", options.GraphDriverName, ErrNotSupported)
	}
	if err := CheckImageStores(options); err != nil {
		return nil, err
	}
	for _, p := range []*string{&options.GraphRoot, &options.RunRoot} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		*p = abs
	}
	s := &store{opts: options, ctx: snapshotter.WithStoreCaller(namespaces.WithNamespace(context.Background(), namespace))}
	if options.ContainerdAddress != "" {
		if err := s.openContainerd(); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(s.opts.RunRoot, 0o700); err != nil {
			s.close()
			return nil, fmt.Errorf("create run root: %w", err)
		}
		return s, nil
	}
	// The separate image store's path is checked, then the read-only
	// image stores are opened, then the image store: a bad one fails
	// GetStore before the graph root is touched.
	is, separate, err := separateImageStore(options)
	if err != nil {
		return nil, err
	}
	if separate {
		if err := checkSeparate(is, options.GraphRoot, options.ROImageStores); err != nil {
			return nil, err
		}
	}
	var ro []*roStore
	for _, o := range imageStoreOptions(options) {
		if o.separate {
			continue
		}
		if separate && o.path != "" {
			if err := checkSeparate(is, options.GraphRoot, []string{o.path}); err != nil {
				closeRO(ro)
				return nil, err
			}
		}
		r, err := openROStore(s, o)
		if err != nil {
			closeRO(ro)
			return nil, err
		}
		ro = append(ro, r)
	}
	var img *roStore
	if separate {
		if img, err = openImageStore(s, is); err != nil {
			closeRO(ro)
			return nil, err
		}
	}
	// closeOthers releases the other stores when the graph root fails.
	closeOthers := func() {
		closeRO(ro)
		if img != nil {
			img.close()
		}
	}
	holder, err := s.openRoot()
	if err != nil {
		closeOthers()
		return nil, err
	}
	if holder != nil {
		// The daemon's own read-only image stores are the store's too.
		for _, p := range holder.ImageStores {
			if slices.ContainsFunc(ro, func(r *roStore) bool { return r.path == filepath.Clean(p) }) {
				continue
			}
			if separate {
				if err := checkSeparate(is, options.GraphRoot, []string{p}); err != nil {
					closeOthers()
					s.close()
					return nil, err
				}
			}
			r, err := openROStore(s, imageStoreOption{path: p, option: "additional_image_stores of the daemon on " + holder.Address})
			if err != nil {
				closeOthers()
				s.close()
				return nil, err
			}
			ro = append(ro, r)
		}
	}
	if err := os.MkdirAll(s.opts.RunRoot, 0o700); err != nil {
		closeOthers()
		s.close()
		return nil, fmt.Errorf("create run root: %w", err)
	}
	if len(ro) > 0 || img != nil {
		m := &multiStore{store: s, img: img, ro: ro}
		s.roLayer, s.roImage = m.roLayer, m.roImage
		s.roImageExists = func(id string) bool { return m.holderOf(id, isImage(id)) != nil }
		s.roLayerExists = func(id string) bool { return m.holderOf(id, isLayer(id)) != nil }
		return m, nil
	}
	return s, nil
}

// lockWait bounds how long GetStore waits for another process that has the
// root open in-process (a short-lived command, usually) to let it go.
var lockWait = 60 * time.Second

// openOrWait opens the root in-process, waiting while another store process
// holds it, as containers/storage waits for its locks. A daemon holding it
// is answered at once: the store talks to it instead.
func openOrWait(ctx context.Context, cfg config.Config) (*daemon.Daemon, error) {
	deadline := time.Now().Add(lockWait)
	delay := 10 * time.Millisecond
	for {
		d, err := daemon.Open(ctx, cfg, daemon.Holder{What: holderName()})
		var inUse *daemon.InUseError
		// A daemon (with an address, or holding this root as its image
		// store) keeps it: no use waiting.
		if err == nil || !errors.As(err, &inUse) || inUse.Holder.Address != "" || inUse.Holder.ImageStoreOf != "" || time.Now().After(deadline) {
			return d, err
		}
		time.Sleep(delay)
		delay = min(2*delay, 500*time.Millisecond)
	}
}

func holderName() string {
	return "cs-snapshotter store in " + filepath.Base(os.Args[0])
}

// close releases the store; later calls do nothing.
func (s *store) close() error {
	var err error
	if s.client != nil {
		err = s.client.Close()
	}
	if s.embedded != nil {
		err = s.embedded.Close()
	}
	if s.containerd != nil {
		err = s.containerd.Close()
	}
	s.client, s.embedded, s.containerd = nil, nil, nil
	return err
}

func (s *store) RunRoot() string         { return s.opts.RunRoot }
func (s *store) GraphRoot() string       { return s.opts.GraphRoot }
func (s *store) GraphDriverName() string { return "overlay" }
func (s *store) GraphOptions() []string  { return s.opts.GraphDriverOptions }
func (s *store) TransientStore() bool    { return s.opts.TransientStore }

// Remote reports whether a daemon serves the store.
func (s *store) Remote() bool { return s.client != nil }

// Status reports what containers/storage's overlay driver reports, for the
// store.
func (s *store) Status() ([][2]string, error) {
	mode := "embedded"
	switch {
	case s.client != nil:
		mode = "daemon"
	case s.containerd != nil:
		mode = "containerd " + s.opts.ContainerdAddress
	}
	layers, err := s.load()
	if err != nil {
		return nil, err
	}
	return [][2]string{
		{"Backing Filesystem", backingFS(s.opts.GraphRoot)},
		{"Supports d_type", "true"},
		{"Native Overlay Diff", "true"},
		{"Supports shifting", "false"},
		{"Supports volatile", "true"},
		{"Using metacopy", "false"},
		{"Store", mode},
		{"Layers", fmt.Sprint(len(layers.list))},
	}, nil
}

// Version reports the store's version.
func (s *store) Version() ([][2]string, error) {
	return [][2]string{{"Version", Version}, {"Driver", "overlay"}}, nil
}

// Shutdown unmounts every layer the store mounted (all of them when force
// is set; otherwise it refuses while any is mounted, as containers/storage
// does) and releases the store.
func (s *store) Shutdown(force bool) ([]string, error) {
	mounted, err := unmountAll(s.mountedLayers, s.Unmount, force)
	if err != nil && (mounted == nil || !force) {
		return mounted, err // not listed, or refused: still open
	}
	return mounted, errors.Join(err, s.close())
}

// unmountAll unmounts every layer mounted lists, for Shutdown: with force,
// or only when none is mounted (ErrLayerUsedByContainer otherwise, with
// the list), as containers/storage does. A failure to list returns no
// layers.
func unmountAll(mounted func() ([]string, error), unmount func(id string, force bool) (bool, error), force bool) ([]string, error) {
	ids, err := mounted()
	if err != nil {
		return nil, err
	}
	if len(ids) > 0 && !force {
		return ids, fmt.Errorf("a layer is mounted: %w", ErrLayerUsedByContainer)
	}
	var errs []error
	for _, id := range ids {
		if _, err := unmount(id, true); err != nil {
			errs = append(errs, err)
		}
	}
	return ids, errors.Join(errs...)
}

// Free releases the store without unmounting anything.
func (s *store) Free() { s.close() }

func backingFS(path string) string {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "unknown"
	}
	best, fstype := "", "unknown"
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		if (path == f[1] || strings.HasPrefix(path, strings.TrimSuffix(f[1], "/")+"/")) && len(f[1]) > len(best) {
			best, fstype = f[1], f[2]
		}
	}
	// containers/storage's names for file systems.
	if n, ok := map[string]string{"ext2": "extfs", "ext3": "extfs", "ext4": "extfs", "overlay": "overlayfs"}[fstype]; ok {
		return n
	}
	return fstype
}

// Store is containers/storage's Store (layers, images, containers), with
// the same method names, signatures and meanings. Names, SetNames,
// AddNames, RemoveNames, Metadata, SetMetadata, Exists, Lookup and Delete
// look for a layer first, then an image, then a container.
type Store interface {
	RunRoot() string
	GraphRoot() string
	GraphDriverName() string
	GraphOptions() []string
	TransientStore() bool

	CreateLayer(id, parent string, names []string, mountLabel string, writeable bool, options *LayerOptions) (*Layer, error)
	PutLayer(id, parent string, names []string, mountLabel string, writeable bool, options *LayerOptions, diff io.Reader) (*Layer, int64, error)
	ApplyDiff(to string, diff io.Reader) (int64, error)
	Diff(from, to string, options *DiffOptions) (io.ReadCloser, error)
	DiffSize(from, to string) (int64, error)
	Changes(from, to string) ([]Change, error)

	Mount(id, mountLabel string) (string, error)
	MountImage(id string, mountOpts []string, mountLabel string) (string, error)
	UnmountImage(id string, force bool) (bool, error)
	Unmount(id string, force bool) (bool, error)
	Mounted(id string) (int, error)

	Layer(id string) (*Layer, error)
	Layers() ([]Layer, error)
	LayerSize(id string) (int64, error)
	LayersByCompressedDigest(d digest.Digest) ([]Layer, error)
	LayersByUncompressedDigest(d digest.Digest) ([]Layer, error)

	ListLayerBigData(id string) ([]string, error)
	LayerBigData(id, key string) (io.ReadCloser, error)
	SetLayerBigData(id, key string, data io.Reader) error

	Names(id string) ([]string, error)
	SetNames(id string, names []string) error
	AddNames(id string, names []string) error
	RemoveNames(id string, names []string) error
	Metadata(id string) (string, error)
	SetMetadata(id, metadata string) error
	Exists(id string) bool
	Lookup(name string) (string, error)

	CreateImage(id string, names []string, layer, metadata string, options *ImageOptions) (*Image, error)
	Image(id string) (*Image, error)
	Images() ([]Image, error)
	ImagesByTopLayer(id string) ([]*Image, error)
	ImagesByDigest(d digest.Digest) ([]*Image, error)
	ListImageBigData(id string) ([]string, error)
	ImageBigData(id, key string) ([]byte, error)
	ImageBigDataSize(id, key string) (int64, error)
	ImageBigDataDigest(id, key string) (digest.Digest, error)
	SetImageBigData(id, key string, data []byte, digestManifest func([]byte) (digest.Digest, error)) error
	ImageSize(id string) (int64, error)
	DeleteImage(id string, commit bool) (layers []string, err error)

	CreateContainer(id string, names []string, image, layer, metadata string, options *ContainerOptions) (*Container, error)
	Container(id string) (*Container, error)
	Containers() ([]Container, error)
	ContainerByLayer(id string) (*Container, error)
	ListContainerBigData(id string) ([]string, error)
	ContainerBigData(id, key string) ([]byte, error)
	ContainerBigDataSize(id, key string) (int64, error)
	ContainerBigDataDigest(id, key string) (digest.Digest, error)
	SetContainerBigData(id, key string, data []byte) error
	ContainerDirectory(id string) (string, error)
	ContainerRunDirectory(id string) (string, error)
	SetContainerDirectoryFile(id, file string, data []byte) error
	FromContainerDirectory(id, file string) ([]byte, error)
	SetContainerRunDirectoryFile(id, file string, data []byte) error
	FromContainerRunDirectory(id, file string) ([]byte, error)
	ContainerSize(id string) (int64, error)
	DeleteContainer(id string) error

	Delete(id string) error
	DeleteLayer(id string) error
	Wipe() error

	// Consistency (check.go): containers/storage's checks, repairs and
	// garbage collection, and the unmapped owners of mount points' parents.
	Check(options *CheckOptions) (CheckReport, error)
	Repair(report CheckReport, options *RepairOptions) []error
	GarbageCollect() error
	LayerParentOwners(id string) ([]int, []int, error)
	ContainerParentOwners(id string) ([]int, []int, error)

	Status() ([][2]string, error)
	Version() ([][2]string, error)
	Free()
	Shutdown(force bool) (layers []string, err error)
}
