package storage

// Additional read-only image stores (containers/storage's roImageStores,
// issue 8): other cs-snapshotter roots, read and never written.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// roStore is another root the store reads: an additional read-only image
// store, read through a snapshotter and a content store that refuse every
// write (see roSnapshotter), either that root's daemon's (when one serves
// it on this host) or the root's files read directly
// (daemon.OpenReadOnly); or the separate image store (writable set),
// written like the graph root. Its mounts are counted in the writable
// store's run root.
type roStore struct {
	path  string
	st    *store
	via   func() string // "daemon ADDRESS" or "direct"; "embedded" or "daemon ADDRESS" for the image store
	close func() error
	// writable: the separate image store (separatestore.go), written like
	// the graph root; every other roStore is read-only.
	writable bool
}

// kind names r in errors: "image store" or "read-only image store".
func (r *roStore) kind() string {
	if r.writable {
		return "image store"
	}
	return "read-only image store"
}

// readOnly reports whether r is a read-only store (nil is the graph root).
func (r *roStore) readOnly() bool { return r != nil && !r.writable }

// readOnlyError is a write to an item of a read-only image store.
func (r *roStore) readOnlyError(kind, id string) error {
	return fmt.Errorf("%s %s is in the read-only image store %s: %w", kind, id, r.path, ErrStoreIsReadOnly)
}

// openROStore opens the additional image store o for s, without writing to
// it or taking its lock.
func openROStore(s *store, o imageStoreOption) (*roStore, error) {
	path, err := filepath.Abs(o.path)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("additional image store %s (%s)", path, o.option)
	if path == s.opts.GraphRoot {
		return nil, fmt.Errorf("%s: it is the store's own graph root", name)
	}
	is, err := daemon.OpenImageStore(s.ctx, path, nil, lockWait)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	st := &store{opts: StoreOptions{GraphRoot: path, RunRoot: s.opts.RunRoot}, ctx: s.ctx, readOnly: true}
	st.sn, st.cs = roSnapshotter{is.Snapshotter}, roContent{nativeReads{is.Content}}
	return &roStore{path: path, st: st, via: is.Via, close: is.Close}, nil
}

func closeRO(list []*roStore) {
	for _, r := range list {
		if r.close != nil {
			r.close()
		}
	}
}

// roRefused is what the read-only snapshotter and content store answer a
// write with.
func roRefused(what string) error {
	return fmt.Errorf("%s: %w: %w", what, ErrStoreIsReadOnly, errdefs.ErrFailedPrecondition)
}

// roSnapshotter reads a read-only store's snapshots. The store code's own
// views (for Diff, Check and Mount) are answered with the committed
// layer's read-only mounts (the snapshotter's Mounts of a committed key,
// for the store only) instead of a view snapshot, and their removal does
// nothing; every other write is refused.
type roSnapshotter struct{ snapshots.Snapshotter }

func (r roSnapshotter) View(ctx context.Context, key, parent string, _ ...snapshots.Opt) ([]mount.Mount, error) {
	if !strings.HasPrefix(key, viewPrefix) && !strings.HasPrefix(key, mountPrefix) {
		return nil, roRefused("view " + key)
	}
	return r.Snapshotter.Mounts(ctx, parent)
}

func (r roSnapshotter) Remove(ctx context.Context, key string) error {
	if strings.HasPrefix(key, viewPrefix) || strings.HasPrefix(key, mountPrefix) {
		return nil
	}
	return roRefused("remove " + key)
}

func (r roSnapshotter) Prepare(_ context.Context, key, _ string, _ ...snapshots.Opt) ([]mount.Mount, error) {
	return nil, roRefused("prepare " + key)
}

func (r roSnapshotter) Commit(_ context.Context, name, _ string, _ ...snapshots.Opt) error {
	return roRefused("commit " + name)
}

func (r roSnapshotter) Update(_ context.Context, info snapshots.Info, _ ...string) (snapshots.Info, error) {
	return snapshots.Info{}, roRefused("update " + info.Name)
}

// Close leaves the snapshotter to whoever opened it (roStore.close).
func (r roSnapshotter) Close() error { return nil }

// roContent reads a read-only store's blobs and refuses every write.
type roContent struct{ content.Store }

func (r roContent) Writer(context.Context, ...content.WriterOpt) (content.Writer, error) {
	return nil, roRefused("write content")
}

func (r roContent) Update(_ context.Context, info content.Info, _ ...string) (content.Info, error) {
	return content.Info{}, roRefused("update content " + info.Digest.String())
}

func (r roContent) Delete(_ context.Context, d digest.Digest) error {
	return roRefused("delete content " + d.String())
}

func (r roContent) Abort(_ context.Context, ref string) error {
	return roRefused("abort " + ref)
}

// multiStore is a writable store (the graph root) with a separate
// writable image store (img, separatestore.go) and/or additional read-only
// image stores: reads look in the image store first, then in the graph
// root, then in each read-only one in order (so a name or ID in two stores
// is the first one's, as containers/storage's allImageStores order);
// writes to an existing item go to the writable store holding it, and
// those to what only a read-only store holds answer ErrStoreIsReadOnly.
// Containers are the graph root's. New layers and images go to the image
// store, when there is one, unless they stack on the graph root's.
type multiStore struct {
	*store
	img *roStore // the separate image store, writable; nil if none
	ro  []*roStore
}

// order lists the stores in read order: the image store, the graph root
// (nil), the read-only stores.
func (m *multiStore) order() []*roStore {
	list := make([]*roStore, 0, len(m.ro)+2)
	if m.img != nil {
		list = append(list, m.img)
	}
	list = append(list, nil)
	return append(list, m.ro...)
}

// others lists the stores whose layers the graph root mirrors: the image
// store, then the read-only stores.
func (m *multiStore) others() []*roStore {
	if m.img == nil {
		return m.ro
	}
	return append([]*roStore{m.img}, m.ro...)
}

// of returns the store of r (the graph root's for nil).
func (m *multiStore) of(r *roStore) *store {
	if r == nil {
		return m.store
	}
	return r.st
}

var _ Store = (*multiStore)(nil)

// unknown reports whether err says the item is not in that store.
func unknown(err error) bool {
	return errors.Is(err, ErrLayerUnknown) || errors.Is(err, ErrImageUnknown) ||
		errors.Is(err, ErrNotAnID) || errors.Is(err, ErrContainerUnknown)
}

// first calls call on each store in read order (m.order) while the answer
// is that the item is unknown; from is the store that answered, nil for
// the graph root (whose answer it is when no store knows the item).
func first[T any](m *multiStore, call func(*store) (T, error)) (v T, from *roStore, err error) {
	for _, r := range m.order() {
		rv, rerr := call(m.of(r))
		if rerr == nil {
			return rv, r, nil
		}
		if !unknown(rerr) {
			if r != nil {
				rerr = fmt.Errorf("%s %s: %w", r.kind(), r.path, rerr)
			}
			return rv, r, rerr
		}
		if r == nil {
			v, err = rv, rerr
		}
	}
	return v, nil, err
}

// holderOf returns the store other than the graph root holding item id
// (whatever exists says), the first in read order; nil when the graph
// root holds it first, or no store does.
func (m *multiStore) holderOf(id string, exists func(*store) bool) *roStore {
	for _, r := range m.order() {
		if exists(m.of(r)) {
			return r
		}
	}
	return nil
}

// target returns the writable store to write item id (whatever exists
// says) to: the first in read order holding it; the graph root when none
// does (to answer that it is unknown). An item only a read-only store
// holds is refused, as a kind item.
func (m *multiStore) target(id, kind string, exists func(*store) bool) (*store, *roStore, error) {
	r := m.holderOf(id, exists)
	if r.readOnly() {
		return nil, r, r.readOnlyError(kind, id)
	}
	return m.of(r), r, nil
}

func isLayer(id string) func(*store) bool {
	return func(s *store) bool { _, err := s.Layer(id); return err == nil }
}

func isImage(id string) func(*store) bool {
	return func(s *store) bool { _, err := s.Image(id); return err == nil }
}

func exists(id string) func(*store) bool {
	return func(s *store) bool { return s.Exists(id) }
}

// Layers lists the layers of the image store, the graph root, then each
// read-only store (ReadOnly set), each ID once, the first store's.
func (m *multiStore) Layers() ([]Layer, error) {
	return m.layersFrom(func(s *store) ([]Layer, error) { return s.Layers() })
}

// Images lists the images of the image store, the graph root, then each
// read-only store (ReadOnly set), each ID once, the first store's.
func (m *multiStore) Images() ([]Image, error) {
	var out []Image
	seen := map[string]bool{}
	for _, r := range m.order() {
		list, err := m.of(r).Images()
		if err != nil {
			if r != nil {
				err = fmt.Errorf("%s %s: %w", r.kind(), r.path, err)
			}
			return nil, err
		}
		for _, i := range list {
			if !seen[i.ID] {
				seen[i.ID] = true
				i.ReadOnly = i.ReadOnly || r.readOnly()
				out = append(out, i)
			}
		}
	}
	if out == nil {
		out = []Image{}
	}
	return out, nil
}

func (m *multiStore) Layer(id string) (*Layer, error) {
	l, ro, err := first(m, func(s *store) (*Layer, error) { return s.Layer(id) })
	if err == nil && ro.readOnly() {
		l.ReadOnly = true
	}
	return l, err
}

func (m *multiStore) Image(id string) (*Image, error) {
	i, ro, err := first(m, func(s *store) (*Image, error) { return s.Image(id) })
	if err == nil && ro.readOnly() {
		i.ReadOnly = true
	}
	return i, err
}

// layersFrom gathers a listing from every store in read order,
// deduplicated by ID, ReadOnly set on the read-only stores' layers. A
// store answering that it has none adds none; when none has any, the
// answer is the graph root's.
func (m *multiStore) layersFrom(list func(*store) ([]Layer, error)) ([]Layer, error) {
	var out []Layer
	var firstErr error
	known := false
	seen := map[string]bool{}
	for _, r := range m.order() {
		more, err := list(m.of(r))
		if err != nil {
			if !unknown(err) {
				if r != nil {
					err = fmt.Errorf("%s %s: %w", r.kind(), r.path, err)
				}
				return nil, err
			}
			if r == nil {
				firstErr = err
			}
			continue
		}
		known = true
		for _, l := range more {
			if !seen[l.ID] {
				seen[l.ID] = true
				l.ReadOnly = l.ReadOnly || r.readOnly()
				out = append(out, l)
			}
		}
	}
	if !known {
		return nil, firstErr
	}
	if out == nil {
		out = []Layer{}
	}
	return out, nil
}

func (m *multiStore) LayersByCompressedDigest(d digest.Digest) ([]Layer, error) {
	return m.layersFrom(func(s *store) ([]Layer, error) { return s.LayersByCompressedDigest(d) })
}

func (m *multiStore) LayersByUncompressedDigest(d digest.Digest) ([]Layer, error) {
	return m.layersFrom(func(s *store) ([]Layer, error) { return s.LayersByUncompressedDigest(d) })
}

// imagesFrom gathers images from every store in read order, deduplicated
// by ID; a store where the item is unknown adds none. It fails as the
// graph root did when no store knows the item.
func (m *multiStore) imagesFrom(list func(*store) ([]*Image, error)) ([]*Image, error) {
	var out []*Image
	var firstErr error
	known := false
	seen := map[string]bool{}
	for _, r := range m.order() {
		more, err := list(m.of(r))
		if err != nil {
			if unknown(err) {
				if r == nil {
					firstErr = err
				}
				continue
			}
			if r != nil {
				err = fmt.Errorf("%s %s: %w", r.kind(), r.path, err)
			}
			return nil, err
		}
		known = true
		for _, i := range more {
			if !seen[i.ID] {
				seen[i.ID] = true
				i.ReadOnly = i.ReadOnly || r.readOnly()
				out = append(out, i)
			}
		}
	}
	if !known {
		return nil, firstErr
	}
	if out == nil {
		out = []*Image{}
	}
	return out, nil
}

func (m *multiStore) ImagesByTopLayer(id string) ([]*Image, error) {
	return m.imagesFrom(func(s *store) ([]*Image, error) { return s.ImagesByTopLayer(id) })
}

func (m *multiStore) ImagesByDigest(d digest.Digest) ([]*Image, error) {
	return m.imagesFrom(func(s *store) ([]*Image, error) { return s.ImagesByDigest(d) })
}

func (m *multiStore) Exists(id string) bool {
	for _, r := range m.order() {
		if m.of(r).Exists(id) {
			return true
		}
	}
	return false
}

func (m *multiStore) Lookup(name string) (string, error) {
	id, _, err := first(m, func(s *store) (string, error) { return s.Lookup(name) })
	return id, err
}

func (m *multiStore) Names(id string) ([]string, error) {
	v, _, err := first(m, func(s *store) ([]string, error) { return s.Names(id) })
	return v, err
}

func (m *multiStore) Metadata(id string) (string, error) {
	v, _, err := first(m, func(s *store) (string, error) { return s.Metadata(id) })
	return v, err
}

func (m *multiStore) LayerSize(id string) (int64, error) {
	v, _, err := first(m, func(s *store) (int64, error) { return s.LayerSize(id) })
	return v, err
}

func (m *multiStore) ListLayerBigData(id string) ([]string, error) {
	v, _, err := first(m, func(s *store) ([]string, error) { return s.ListLayerBigData(id) })
	return v, err
}

func (m *multiStore) LayerBigData(id, key string) (io.ReadCloser, error) {
	v, _, err := first(m, func(s *store) (io.ReadCloser, error) { return s.LayerBigData(id, key) })
	return v, err
}

// ImageSize counts the image's layers wherever they are: an image of the
// writable store may stack on a read-only store's layers.
func (m *multiStore) ImageSize(id string) (int64, error) {
	img, err := m.Image(id)
	if err != nil {
		return -1, err
	}
	return imageSize(img, func(l string) (*Layer, error) { return m.Layer(l) }, func(l string) (int64, error) { return m.DiffSize("", l) })
}

func (m *multiStore) ListImageBigData(id string) ([]string, error) {
	v, _, err := first(m, func(s *store) ([]string, error) { return s.ListImageBigData(id) })
	return v, err
}

func (m *multiStore) ImageBigData(id, key string) ([]byte, error) {
	v, _, err := first(m, func(s *store) ([]byte, error) { return s.ImageBigData(id, key) })
	return v, err
}

func (m *multiStore) ImageBigDataSize(id, key string) (int64, error) {
	v, _, err := first(m, func(s *store) (int64, error) { return s.ImageBigDataSize(id, key) })
	return v, err
}

func (m *multiStore) ImageBigDataDigest(id, key string) (digest.Digest, error) {
	v, _, err := first(m, func(s *store) (digest.Digest, error) { return s.ImageBigDataDigest(id, key) })
	return v, err
}

func (m *multiStore) Diff(from, to string, options *DiffOptions) (io.ReadCloser, error) {
	v, _, err := first(m, func(s *store) (io.ReadCloser, error) { return s.Diff(from, to, options) })
	return v, err
}

func (m *multiStore) DiffSize(from, to string) (int64, error) {
	v, _, err := first(m, func(s *store) (int64, error) { return s.DiffSize(from, to) })
	return v, err
}

func (m *multiStore) Changes(from, to string) ([]Change, error) {
	v, _, err := first(m, func(s *store) ([]Change, error) { return s.Changes(from, to) })
	return v, err
}

// Mount mounts a read-only store's layer read-only (its chain as overlay
// lower directories, nothing written to that store), counted in the
// writable store's run root like any mount.
func (m *multiStore) Mount(id, mountLabel string) (string, error) {
	v, _, err := first(m, func(s *store) (string, error) { return s.Mount(id, mountLabel) })
	return v, err
}

// MountImage mounts the image's top layer read-only wherever it is.
func (m *multiStore) MountImage(id string, mountOpts []string, mountLabel string) (string, error) {
	img, err := m.Image(id)
	if err != nil {
		return "", err
	}
	if img.TopLayer == "" {
		return "", fmt.Errorf("image %s has no layers to mount: %w", img.ID, ErrLayerUnknown)
	}
	v, _, err := first(m, func(s *store) (string, error) {
		return s.mount(img.TopLayer, mountLabel, append(slices.Clone(mountOpts), "ro"))
	})
	return v, err
}

func (m *multiStore) Unmount(id string, force bool) (bool, error) {
	v, _, err := first(m, func(s *store) (bool, error) { return s.Unmount(id, force) })
	return v, err
}

func (m *multiStore) UnmountImage(id string, force bool) (bool, error) {
	img, err := m.Image(id)
	if err != nil {
		return false, err
	}
	return m.Unmount(img.TopLayer, force)
}

func (m *multiStore) Mounted(id string) (int, error) {
	v, _, err := first(m, func(s *store) (int, error) { return s.Mounted(id) })
	return v, err
}

// Writes go to the writable store holding the item (image store first);
// what only a read-only store holds is refused, naming it.

func (m *multiStore) SetNames(id string, names []string) error {
	if err := validNames(names); err != nil {
		return err
	}
	return m.changeNames(id, func(s *store, id string) error { return s.SetNames(id, names) })
}

func (m *multiStore) AddNames(id string, names []string) error {
	if err := validNames(names); err != nil {
		return err
	}
	return m.changeNames(id, func(s *store, id string) error { return s.AddNames(id, names) })
}

func (m *multiStore) RemoveNames(id string, names []string) error {
	return m.changeNames(id, func(s *store, id string) error { return s.RemoveNames(id, names) })
}

// changeNames changes the names of item id in the store holding it; an
// image of a read-only store is pulled up first.
func (m *multiStore) changeNames(id string, change func(*store, string) error) error {
	s, r, err := m.target(id, "item", exists(id))
	if r.readOnly() && isImage(id)(r.st) {
		return m.pullUp(r, id, change)
	}
	if err != nil {
		return err
	}
	return change(s, id)
}

// pullUp changes the names of image id of read-only store r as
// containers/storage does: it makes the image in the writable store with
// the same ID, names, top layer (mirrored), metadata, digests and big data,
// then changes that copy's names as usual. The writable store's copy is
// found first from then on; deleting it shows the read-only one again.
func (m *multiStore) pullUp(r *roStore, id string, change func(*store, string) error) error {
	img, err := r.st.Image(id)
	if err != nil {
		return err
	}
	opts := &ImageOptions{CreationDate: img.Created, Digest: img.Digest, Metadata: img.Metadata, NamesHistory: img.NamesHistory, Flags: img.Flags}
	for _, key := range img.BigDataNames {
		data, err := r.st.ImageBigData(img.ID, key)
		if err != nil {
			return fmt.Errorf("big data %q of image %s in read-only image store %s: %w", key, img.ID, r.path, err)
		}
		opts.BigData = append(opts.BigData, ImageBigDataOption{Key: key, Data: data, Digest: img.BigDataDigests[key]})
	}
	if _, err := m.store.CreateImage(img.ID, img.Names, img.TopLayer, img.Metadata, opts); err != nil {
		return fmt.Errorf("copy image %s of read-only image store %s to change its names: %w", img.ID, r.path, err)
	}
	if err := change(m.store, img.ID); err != nil {
		// A change refused (a name that is not valid) leaves the store as
		// it was: the read-only image, not a copy of it.
		if _, derr := m.store.DeleteImage(img.ID, true); derr != nil {
			return fmt.Errorf("%w (and removing the copy made to change them: %v)", err, derr)
		}
		return err
	}
	return nil
}

func (m *multiStore) SetMetadata(id, metadata string) error {
	s, _, err := m.target(id, "item", exists(id))
	if err != nil {
		return err
	}
	return s.SetMetadata(id, metadata)
}

func (m *multiStore) Delete(id string) error {
	s, r, err := m.target(id, "item", exists(id))
	if err != nil {
		return err
	}
	if r != nil { // the image store's
		if err := m.imgDeletable(id); err != nil {
			return err
		}
	}
	err = s.Delete(id)
	if err == nil {
		m.pruneMirrors()
	}
	return err
}

func (m *multiStore) DeleteLayer(id string) error {
	s, r, err := m.target(id, "layer", isLayer(id))
	if err != nil {
		return err
	}
	if r != nil {
		l, err := s.Layer(id)
		if err != nil {
			return err
		}
		if err := m.imgLayersInUse([]string{l.ID}); err != nil {
			return err
		}
	}
	err = s.DeleteLayer(id)
	if err == nil {
		m.pruneMirrors()
	}
	return err
}

func (m *multiStore) SetLayerBigData(id, key string, data io.Reader) error {
	s, _, err := m.target(id, "layer", isLayer(id))
	if err != nil {
		return err
	}
	return s.SetLayerBigData(id, key, data)
}

func (m *multiStore) ApplyDiff(to string, diff io.Reader) (int64, error) {
	s, _, err := m.target(to, "layer", isLayer(to))
	if err != nil {
		return -1, err
	}
	return s.ApplyDiff(to, diff)
}

func (m *multiStore) DeleteImage(id string, commit bool) ([]string, error) {
	s, r, err := m.target(id, "image", isImage(id))
	if err != nil {
		return nil, err
	}
	if r != nil {
		// The image store's: refused while the graph root's containers
		// use it or stack on a layer it would take along.
		if err := m.imgImageUnused(id); err != nil {
			return nil, err
		}
		layers, err := s.DeleteImage(id, false)
		if err != nil {
			return nil, err
		}
		if err := m.imgLayersInUse(layers); err != nil {
			return nil, err
		}
	}
	layers, err := s.DeleteImage(id, commit)
	if err == nil && commit {
		m.pruneMirrors()
	}
	return layers, err
}

func (m *multiStore) SetImageBigData(id, key string, data []byte, digestManifest func([]byte) (digest.Digest, error)) error {
	s, _, err := m.target(id, "image", isImage(id))
	if err != nil {
		return err
	}
	return s.SetImageBigData(id, key, data, digestManifest)
}

// CreateImage makes the image in the image store when there is one and
// its top layer is there (or it has none); in the graph root when its top
// layer is the graph root's.
func (m *multiStore) CreateImage(id string, names []string, layer, metadata string, options *ImageOptions) (*Image, error) {
	s := m.store
	if layer != "" {
		// On a read-only store's layer, the graph root's image stacks on
		// its mirror (store.roLayer).
		if r := m.holderOf(layer, isLayer(layer)); !r.readOnly() {
			s = m.of(r)
		}
	} else if m.img != nil {
		s = m.img.st
	}
	if m.img != nil && id != "" {
		// An image ID is the store's, whichever root holds it.
		other := m.img.st
		if s == m.img.st {
			other = m.store
		}
		if i, err := other.Image(id); err == nil && i.ID == id {
			return nil, fmt.Errorf("image %q is in %s: %w", id, other.opts.GraphRoot, ErrDuplicateID)
		}
	}
	return s.CreateImage(id, names, layer, metadata, options)
}

// Deletions may leave mirrors of other stores' layers that nothing
// stacks on any more: they go too.

func (m *multiStore) DeleteContainer(id string) error {
	err := m.store.DeleteContainer(id)
	if err == nil {
		m.pruneMirrors()
	}
	return err
}

// Wipe empties the graph root (containers first), then the image store,
// unless something the graph root keeps (a container containerd made)
// still stacks on the image store's layers; the read-only stores stay as
// they are.
func (m *multiStore) Wipe() error {
	err := m.store.Wipe()
	m.pruneMirrors()
	if err != nil || m.img == nil {
		return err
	}
	keys, err := m.mirrorsOf(m.img)
	if err != nil {
		return err
	}
	if len(keys) > 0 {
		return fmt.Errorf("wipe image store %s: the graph root %s stacks on its layer %s: %w", m.img.path, m.store.opts.GraphRoot, path.Base(keys[0]), ErrLayerUsedByContainer)
	}
	if err := m.img.st.Wipe(); err != nil {
		return fmt.Errorf("image store %s: %w", m.img.path, err)
	}
	return nil
}

func (m *multiStore) GarbageCollect() error {
	err := m.store.GarbageCollect()
	m.pruneMirrors()
	if m.img != nil {
		if ierr := m.img.st.GarbageCollect(); ierr != nil {
			err = errors.Join(err, fmt.Errorf("image store %s: %w", m.img.path, ierr))
		}
	}
	return err
}

// Status adds the image store and the read-only stores to the graph
// root's status.
func (m *multiStore) Status() ([][2]string, error) {
	st, err := m.store.Status()
	if err != nil {
		return nil, err
	}
	if m.img != nil {
		layers, err := m.img.st.load()
		if err != nil {
			return nil, fmt.Errorf("image store %s: %w", m.img.path, err)
		}
		st = append(st, [2]string{"Image Store", m.img.path},
			[2]string{"Image Store Mode", m.img.via()},
			[2]string{"Image Store Layers", fmt.Sprint(len(layers.list))})
	}
	for _, r := range m.ro {
		st = append(st, [2]string{"Read-only image store", r.path + " (" + r.via() + ")"})
	}
	return st, nil
}

// Shutdown unmounts what the store mounted (other stores' layers too) and
// releases every store.
func (m *multiStore) Shutdown(force bool) ([]string, error) {
	mounted, err := unmountAll(m.mountedLayers, m.Unmount, force)
	if err != nil && (mounted == nil || !force) {
		return mounted, err // not listed, or refused: still open
	}
	m.Free()
	return mounted, err
}

// Free releases every store without unmounting anything.
func (m *multiStore) Free() {
	m.store.close()
	for _, r := range m.others() {
		if r.close != nil {
			r.close()
			r.close = nil
		}
	}
}

// Building on a read-only store's layers: the layer and its parents get
// mirrors in the writable root, committed snapshots keyed
// cs.ro/<store>/<layer ID> whose files directory is a symbolic link to the
// layer's directory in the read-only root (cslabels.ReadOnlyDir), so the
// new layer's overlay lower directories resolve there and nothing is
// copied. Mirrors are the store's own (cs.owned), listed as no layer, and
// removed (the link only) once nothing stacks on them.

// mirrorKey is the key of the mirror of layer id of r.
func (r *roStore) mirrorKey(id string) string {
	sum := sha256.Sum256([]byte(r.path))
	return roPrefix + hex.EncodeToString(sum[:6]) + "/" + id
}

// layerDir is the directory holding layer rec's own files: a committed
// layer's, or the upper directory of a writeable one (containers/storage
// leaves an image's top layer writeable, and a read-only store's layers
// are not written while it is one).
func (r *roStore) layerDir(rec *layerRecord) (string, error) {
	mounts, err := r.st.sn.Mounts(r.st.ctx, rec.key)
	if err != nil {
		return "", mapErr(fmt.Errorf("layer %s of %s %s: %w", rec.ID, r.kind(), r.path, err))
	}
	dir, _, err := overlayutils.Dirs(mounts, !rec.writeable)
	return dir, err
}

// mirror makes sure layer ref of r and its parents have mirrors in the
// writable root and returns the key of ref's.
func (m *multiStore) mirror(r *roStore, ref string) (string, error) {
	top, err := r.st.findLayer(ref)
	if err != nil {
		return "", err
	}
	if r.writable && top.writeable {
		// The image store's writeable layer is committed first, as it
		// would be to become a parent there: its files then stay where
		// the mirror points.
		if err := r.st.freeze(top); err != nil {
			return "", fmt.Errorf("image store %s: %w", r.path, err)
		}
	}
	chain := []*layerRecord{top}
	for p := top.Parent; p != ""; {
		rec, err := r.st.findLayer(p)
		if err != nil {
			return "", fmt.Errorf("parent %s of layer %s in %s %s: %w", p, top.ID, r.kind(), r.path, err)
		}
		chain = append(chain, rec)
		p = rec.Parent
	}
	parentKey := ""
	for i := len(chain) - 1; i >= 0; i-- {
		rec := chain[i]
		key := r.mirrorKey(rec.ID)
		if _, err := m.store.sn.Stat(m.ctx, key); err == nil {
			parentKey = key
			continue
		} else if !errdefs.IsNotFound(err) {
			return "", err
		}
		dir, err := r.layerDir(rec)
		if err != nil {
			return "", err
		}
		labels := map[string]string{cslabels.Owned: "store", cslabels.ReadOnlyStore: r.path, cslabels.ReadOnlyDir: dir}
		if err := snapshotter.CommitMirror(m.ctx, m.store.sn, key, internalPrefix+"ro-prep/"+newID(), parentKey, labels); err != nil {
			return "", mapErr(fmt.Errorf("mirror layer %s of %s %s: %w", rec.ID, r.kind(), r.path, err))
		}
		parentKey = key
	}
	return parentKey, nil
}

// roLayer is store.roLayer: the mirror of layer ref of the first other
// store (the image store, then the read-only ones) that has it.
func (m *multiStore) roLayer(ref string) (string, error) {
	for _, r := range m.others() {
		if _, err := r.st.findLayer(ref); err == nil {
			return m.mirror(r, ref)
		} else if !unknown(err) {
			return "", err
		}
	}
	return "", ErrLayerUnknown
}

// roImage is store.roImage: image ref of the first other store (the
// image store, then the read-only ones) that has it, and the mirror of
// its top layer.
func (m *multiStore) roImage(ref string) (string, string, error) {
	for _, r := range m.others() {
		img, err := r.st.findImage(ref)
		if err != nil {
			if unknown(err) {
				continue
			}
			return "", "", err
		}
		if img.TopLayer == "" {
			return img.ID, "", nil
		}
		key, err := m.mirror(r, img.TopLayer)
		return img.ID, key, err
	}
	return "", "", ErrImageUnknown
}

// pruneMirrors removes the mirrors nothing stacks on; one with children
// is refused by the snapshotter and stays.
func (m *multiStore) pruneMirrors() {
	for {
		var keys []string
		err := m.store.sn.Walk(m.ctx, func(_ context.Context, info snapshots.Info) error {
			if strings.HasPrefix(info.Name, roPrefix) {
				keys = append(keys, info.Name)
			}
			return nil
		}, fmt.Sprintf("labels.%q", cslabels.ReadOnlyStore))
		if err != nil {
			return
		}
		removed := false
		for _, k := range keys {
			if m.store.sn.Remove(m.ctx, k) == nil {
				removed = true
			}
		}
		if !removed {
			return
		}
	}
}
