package storage

// The separate writable image store (containers/storage's imagestore,
// --image-store, issue 8): another cs-snapshotter root, opened as GetStore
// opens the graph root, where new layers and images go while containers
// stay in the graph root, on the image's layers mirrored there as a
// read-only store's are (rostores.go). See docs/store.md.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
)

// openRoot opens s's root (s.opts.GraphRoot) in-process, or through the
// daemon serving it: then it returns the daemon's record.
func (s *store) openRoot() (*daemon.Holder, error) {
	cfg := config.Default()
	cfg.Root = s.opts.GraphRoot
	cfg.RunRoot = s.opts.RunRoot
	cfg.Snapshotter.MaxLayerSize = s.opts.MaxLayerSize
	d, err := openOrWait(s.ctx, cfg)
	var inUse *daemon.InUseError
	switch {
	case err == nil:
		s.embedded = d
		s.sn, s.cs = d.Snapshotter(), d.Content()
		return nil, nil
	case errors.As(err, &inUse) && inUse.Holder.Address != "":
		c, err := daemon.DialStore(inUse.Holder.Address)
		if err != nil {
			return nil, err
		}
		s.client = c
		s.sn, s.cs = c.Snapshotter, nativeReads{c.Content}
		h := inUse.Holder
		return &h, nil
	}
	return nil, err
}

// separateImageStore returns the separate image store option of o, its
// path made absolute; ok false when there is none.
func separateImageStore(o StoreOptions) (imageStoreOption, bool, error) {
	for _, is := range imageStoreOptions(o) {
		if is.separate {
			p, err := filepath.Abs(is.path)
			is.path = filepath.Clean(p)
			return is, true, err
		}
	}
	return imageStoreOption{}, false, nil
}

// checkSeparate refuses an image store that is the graph root or one of
// the read-only image stores, before anything is opened.
func checkSeparate(is imageStoreOption, graphRoot string, roPaths []string) error {
	name := fmt.Sprintf("image store %s (%s)", is.path, is.option)
	if is.path == graphRoot {
		return fmt.Errorf("%s: it is the store's graph root: %w", name, ErrNotSupported)
	}
	for _, p := range roPaths {
		if abs, err := filepath.Abs(p); err == nil && filepath.Clean(abs) == is.path {
			return fmt.Errorf("%s: it is also a read-only image store (additional image stores): %w", name, ErrNotSupported)
		}
	}
	return nil
}

// openImageStore opens the separate image store is for s, writable, as
// GetStore opens a root: in-process (creating it if needed), or through
// the daemon serving it. Its mounts are counted in s's run root.
func openImageStore(s *store, is imageStoreOption) (*roStore, error) {
	st := &store{opts: StoreOptions{GraphRoot: is.path, RunRoot: s.opts.RunRoot, MaxLayerSize: s.opts.MaxLayerSize}, ctx: s.ctx}
	holder, err := st.openRoot()
	if err != nil {
		return nil, fmt.Errorf("image store %s (%s): %w", is.path, is.option, err)
	}
	via := "embedded"
	if holder != nil {
		via = "daemon " + holder.Address
	}
	return &roStore{path: is.path, st: st, writable: true,
		via: func() string { return via }, close: st.close}, nil
}

// layerStore returns the store a new layer id on parent goes to: the
// image store unless parent is another store's (the graph root's, or a
// read-only store's, which the graph root mirrors). An ID the other
// writable root has is refused.
func (m *multiStore) layerStore(id, parent string) (*store, error) {
	if m.img == nil {
		return m.store, nil
	}
	s, other := m.img.st, m.store
	if parent != "" {
		if _, err := m.img.st.findLayer(parent); err != nil {
			if !unknown(err) {
				return nil, fmt.Errorf("image store %s: %w", m.img.path, err)
			}
			s, other = m.store, m.img.st
		}
	}
	if id != "" {
		if l, err := other.Layer(id); err == nil && l.ID == id {
			return nil, fmt.Errorf("layer %q is in %s: %w", id, other.opts.GraphRoot, ErrDuplicateID)
		}
	}
	return s, nil
}

// CreateLayer makes the layer in the image store, or in the graph root
// when its parent is there (layerStore).
func (m *multiStore) CreateLayer(id, parent string, names []string, mountLabel string, writeable bool, options *LayerOptions) (*Layer, error) {
	s, err := m.layerStore(id, parent)
	if err != nil {
		return nil, err
	}
	return s.CreateLayer(id, parent, names, mountLabel, writeable, options)
}

// PutLayer makes the layer in the image store, or in the graph root when
// its parent is there (layerStore).
func (m *multiStore) PutLayer(id, parent string, names []string, mountLabel string, writeable bool, options *LayerOptions, diff io.Reader) (*Layer, int64, error) {
	s, err := m.layerStore(id, parent)
	if err != nil {
		return nil, -1, err
	}
	return s.PutLayer(id, parent, names, mountLabel, writeable, options, diff)
}

// CreateContainer makes the container in the graph root; its image is
// looked for in the image store first (the graph root then mirrors the
// image's layers and stacks the container's layer on them).
func (m *multiStore) CreateContainer(id string, names []string, image, layer, metadata string, options *ContainerOptions) (*Container, error) {
	if m.img != nil && image != "" {
		img, err := m.img.st.findImage(image)
		switch {
		case err == nil:
			image = img.ID
		case !unknown(err):
			return nil, fmt.Errorf("image store %s: %w", m.img.path, err)
		}
	}
	return m.store.CreateContainer(id, names, image, layer, metadata, options)
}

func (m *multiStore) LayerParentOwners(id string) ([]int, []int, error) {
	type owners struct{ uids, gids []int }
	v, _, err := first(m, func(s *store) (owners, error) {
		u, g, err := s.LayerParentOwners(id)
		return owners{u, g}, err
	})
	return v.uids, v.gids, err
}

// mirrorsOf lists the keys of the graph root's mirrors of r's layers.
func (m *multiStore) mirrorsOf(r *roStore) ([]string, error) {
	prefix := r.mirrorKey("")
	var keys []string
	err := m.store.sn.Walk(m.ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, prefix) {
			keys = append(keys, info.Name)
		}
		return nil
	}, fmt.Sprintf("labels.%q", cslabels.ReadOnlyStore))
	return keys, mapErr(err)
}

// imgLayersInUse refuses, with ErrLayerUsedByContainer, to let the image
// store delete its layers ids while the graph root stacks on one of them:
// a mirror of it left with children once unused mirrors are pruned.
func (m *multiStore) imgLayersInUse(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	m.pruneMirrors()
	for _, id := range ids {
		key := m.img.mirrorKey(id)
		_, err := m.store.sn.Stat(m.ctx, key)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return mapErr(err)
		}
		user := "a layer"
		if c := m.containerOn(key); c != "" {
			user = "container " + c
		}
		return fmt.Errorf("layer %s of image store %s: %s of the graph root %s stacks on it: %w", id, m.img.path, user, m.store.opts.GraphRoot, ErrLayerUsedByContainer)
	}
	return nil
}

// containerOn names a graph root container whose layer stacks on
// snapshot key, if any.
func (m *multiStore) containerOn(key string) string {
	list, err := m.store.Containers()
	if err != nil {
		return ""
	}
	for _, c := range list {
		for k := rwPrefix + c.LayerID; k != ""; {
			info, err := m.store.sn.Stat(m.ctx, k)
			if err != nil {
				break
			}
			if info.Parent == key {
				return c.ID
			}
			k = info.Parent
		}
	}
	return ""
}

// imgImageUnused refuses, with ErrImageUsedByContainer, to delete image
// ref of the image store while a graph root container uses it.
func (m *multiStore) imgImageUnused(ref string) error {
	img, err := m.img.st.findImage(ref)
	if err != nil {
		return err
	}
	list, err := m.store.Containers()
	if err != nil {
		return err
	}
	for _, c := range list {
		if c.ImageID == img.ID {
			return fmt.Errorf("image %s of image store %s is used by container %s: %w", img.ID, m.img.path, c.ID, ErrImageUsedByContainer)
		}
	}
	return nil
}

// imgDeletable refuses Delete of the image store's item id while the
// graph root uses it.
func (m *multiStore) imgDeletable(id string) error {
	f, err := m.img.st.find(id)
	switch {
	case err != nil:
		return err
	case f.layer != nil:
		return m.imgLayersInUse([]string{f.layer.ID})
	case f.image != nil:
		return m.imgImageUnused(f.image.ID)
	}
	return nil
}

// Check checks the graph root, then the image store; a graph root
// container on a damaged image of the image store is damaged too.
func (m *multiStore) Check(options *CheckOptions) (CheckReport, error) {
	report, err := m.store.Check(options)
	if err != nil || m.img == nil {
		return report, err
	}
	ir, err := m.img.st.Check(options)
	if err != nil {
		return CheckReport{}, fmt.Errorf("image store %s: %w", m.img.path, err)
	}
	mergeErrs := func(into *map[string][]error, from map[string][]error) {
		if len(from) == 0 {
			return
		}
		if *into == nil {
			*into = map[string][]error{}
		}
		for k, v := range from {
			(*into)[k] = append((*into)[k], v...)
		}
	}
	mergeErrs(&report.Layers, ir.Layers)
	mergeErrs(&report.ROLayers, ir.ROLayers)
	mergeErrs(&report.Images, ir.Images)
	for k, v := range ir.layerParentsByLayerID {
		if report.layerParentsByLayerID == nil {
			report.layerParentsByLayerID = map[string]string{}
		}
		report.layerParentsByLayerID[k] = v
	}
	for k, v := range ir.layerOrder {
		if report.layerOrder == nil {
			report.layerOrder = map[string]int{}
		}
		report.layerOrder[k] = v
	}
	if len(ir.Images) > 0 {
		ctrs, err := m.store.Containers()
		if err != nil {
			return CheckReport{}, err
		}
		for _, c := range ctrs {
			if errs := ir.Images[c.ImageID]; len(errs) > 0 {
				if report.Containers == nil {
					report.Containers = map[string][]error{}
				}
				report.Containers[c.ID] = append(report.Containers[c.ID], fmt.Errorf("image %s of image store %s: %w", c.ImageID, m.img.path, errs[0]))
			}
		}
	}
	return report, nil
}

// Repair repairs the graph root (its containers first), then the image
// store, leaving (and answering an error for) what a graph root container
// still uses there.
func (m *multiStore) Repair(report CheckReport, options *RepairOptions) []error {
	if m.img == nil {
		return m.store.Repair(report, options)
	}
	imgHas := func(id string) bool {
		if isLayer(id)(m.img.st) || isImage(id)(m.img.st) {
			return true
		}
		_, err := m.img.st.sn.Stat(m.ctx, incompletePrefix+id)
		return err == nil
	}
	gr, ir := report, report
	gr.Layers, gr.Images, ir.Layers, ir.Images, ir.Containers = map[string][]error{}, map[string][]error{}, map[string][]error{}, map[string][]error{}, nil
	var imgLayers, imgImages []string
	for id, e := range report.Layers {
		if imgHas(id) {
			imgLayers = append(imgLayers, id)
		} else {
			gr.Layers[id] = e
		}
	}
	for id, e := range report.Images {
		if imgHas(id) {
			imgImages = append(imgImages, id)
		} else {
			gr.Images[id] = e
		}
	}
	// The graph root first: its damaged containers go, and with them
	// what they used in the image store.
	errs := m.store.Repair(gr, options)
	m.pruneMirrors()
	for _, id := range imgImages {
		err := m.imgImageUnused(id)
		if err == nil {
			var layers []string
			if layers, err = m.img.st.DeleteImage(id, false); err == nil {
				err = m.imgLayersInUse(layers)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("not repairing image %s: %w", id, err))
			continue
		}
		ir.Images[id] = report.Images[id]
	}
	for _, id := range imgLayers {
		if err := m.imgLayersInUse([]string{id}); err != nil {
			errs = append(errs, fmt.Errorf("not repairing layer %s: %w", id, err))
			continue
		}
		ir.Layers[id] = report.Layers[id]
	}
	for _, err := range m.img.st.Repair(ir, options) {
		errs = append(errs, fmt.Errorf("image store %s: %w", m.img.path, err))
	}
	m.pruneMirrors()
	return errs
}
