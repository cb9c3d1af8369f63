package storage

import (
	"context"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// Targeted lookups: the calls that make things (PutLayer, CreateImage,
// CreateContainer) find the one layer or image they need by key or by a
// label filter instead of listing the whole store, so making the 10,000th
// container costs what making the first did. The daemon checks IDs and
// names itself, atomically, so these calls need no listing for that either.
// Anything a targeted lookup cannot settle (an ID prefix, an image
// containerd imported) falls back to the full listing.

// quotable reports whether s can sit inside a quoted filter field or value.
func quotable(s string) bool {
	return s != "" && !strings.ContainsAny(s, "\"\\\n")
}

// statLayer returns the layer whose snapshot has key, nil if none.
func (s *store) statLayer(key string) (*layerRecord, error) {
	info, err := s.sn.Stat(s.ctx, key)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(info.Name, internalPrefix) && !strings.HasPrefix(info.Name, rwPrefix) {
		return nil, nil
	}
	r := recordFromInfo(info)
	if info.Parent != "" {
		p, err := s.sn.Stat(s.ctx, info.Parent)
		if err != nil {
			return nil, err
		}
		r.Parent = recordFromInfo(p).ID
	}
	return r, nil
}

// findLayer finds layer ref (ID, name or ID prefix) without listing every
// layer when it can.
func (s *store) findLayer(ref string) (*layerRecord, error) {
	if validID(ref) == nil {
		for _, key := range []string{ref, rwPrefix + ref} {
			r, err := s.statLayer(key)
			if err != nil {
				return nil, err
			}
			if r != nil && r.owned {
				return r, nil
			}
		}
	}
	if quotable(ref) {
		if r, err := s.indexedLayer(cslabels.Layer, ref); err != nil || r != nil {
			return r, err
		}
	}
	return s.layer(ref)
}

// findImage finds image ref (ID, name or ID prefix), through the daemon's
// name index when it can, else through the listing.
func (s *store) findImage(ref string) (*imageRecord, error) {
	if quotable(ref) {
		if img, err := s.indexedImage(ref); err != nil || img != nil {
			return img, err
		}
	}
	r, _, err := s.image(ref)
	return r, err
}

// layerKeyTaken reports whether a layer with ID id exists, committed or
// writeable.
func (s *store) layerKeyTaken(id string) (bool, error) {
	for _, key := range []string{id, rwPrefix + id} {
		_, err := s.sn.Stat(s.ctx, key)
		if err == nil {
			return true, nil
		}
		if !errdefs.IsNotFound(err) {
			return false, err
		}
	}
	return false, nil
}

// findQuick is find for the calls that only read what they find: an exact
// ID or name of a layer, image or container (in that order) is looked up
// by key or through the name index; anything else (an ID prefix,
// containerd's images, a name only a listing knows) through find. The
// result carries no listing (idx is nil when the quick way found it).
func (s *store) findQuick(ref string) (found, error) {
	if validID(ref) == nil {
		for _, key := range []string{ref, rwPrefix + ref} {
			r, err := s.statLayer(key)
			if err != nil {
				return found{}, err
			}
			if r != nil {
				return found{layer: r}, nil
			}
		}
	}
	if !quotable(ref) {
		return s.find(ref)
	}
	if r, err := s.indexedLayer(cslabels.Layer, ref); err != nil || r != nil {
		return found{layer: r}, err
	}
	img, err := s.indexedImage(ref)
	if err != nil || img != nil {
		return found{image: img}, err
	}
	for _, kind := range []cslabels.Kind{cslabels.ContainerIDKind, cslabels.Container} {
		r, err := s.indexedLayer(kind, ref)
		if err != nil {
			return found{}, err
		}
		if r != nil {
			if c := containerFromLayer(r); c != nil {
				if err := s.withImageIDs([]*containerRecord{c}); err != nil {
					return found{}, err
				}
				return found{container: c}, nil
			}
		}
	}
	return s.find(ref)
}

// indexedLayer returns the snapshot holding name of kind, found through
// the daemon's name index; nil if none.
func (s *store) indexedLayer(kind cslabels.Kind, name string) (*layerRecord, error) {
	var key string
	err := s.sn.Walk(s.ctx, func(_ context.Context, info snapshots.Info) error {
		key = info.Name
		return nil
	}, `labels."`+cslabels.NameKey(kind, name)+`"`)
	if err != nil || key == "" {
		return nil, err
	}
	return s.statLayer(key)
}

// indexedImage returns the store image with ID or name ref, found through
// the daemon's name index; nil if none.
func (s *store) indexedImage(ref string) (*imageRecord, error) {
	for _, filter := range []string{
		`labels."` + cslabels.ImageID + `"==` + strconv.Quote(ref),
		`labels."` + cslabels.ImageNamePrefix + ref + `"`,
	} {
		found, err := s.imageByFilter(filter)
		if err != nil || found != nil {
			return found, err
		}
	}
	return nil, nil
}

// imageByFilter returns the store image whose record blob matches the
// content filter, nil if none.
func (s *store) imageByFilter(filter string) (*imageRecord, error) {
	var found *imageRecord
	err := s.cs.Walk(s.ctx, func(info content.Info) error {
		if info.Labels[cslabels.ImageMarker] == "" {
			return nil
		}
		doc, err := s.readImageDoc(info)
		if err != nil {
			return err
		}
		found = imageFromLabels(doc, info.Digest, info.Labels)
		return nil
	}, filter)
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, err
	}
	return found, nil
}
