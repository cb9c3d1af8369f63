package storage

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// Moving names between items (SetNames, AddNames, RemoveNames).
//
// containers/storage gives an item a name another item has by taking it
// from that item, under its store lock. Here the daemon is the only lock:
// it claims a name atomically when a name label is set and refuses one
// another item holds (AlreadyExists), but a move touches two items (two
// snapshots, or two record blobs) and the daemon's Update changes one. So a
// move is: remove the name's label from its holder, then set the item's
// names in one Update, which claims them. Other clients act in between:
//
//   - a holder deleted meanwhile answers NotFound: the name is free, go on;
//   - a name someone else claimed meanwhile fails the claim: read who
//     holds each name now, by targeted lookups (the daemon's name index,
//     lookup.go), not a listing of the whole store, and move again.
//
// Each attempt starts from the item's names as they are then, so a name
// another client took from the item meanwhile is not taken back. The claim
// is what decides: when it succeeds the item holds every name it asked for
// at that moment, and the daemon's index keeps each name on one item. An
// attempt fails only because another client's claim succeeded, so clients
// racing for a name always make progress; one that keeps losing gives up
// after nameMoveTimeout, naming the name and its holder.
//
// Through containerd (--containerd) the store sees only its namespace: a
// name held by an item it cannot see (another namespace's, or one made
// through the daemon directly) fails every claim while no holder shows up.
// There a few such attempts in a row end the call with the daemon's
// refusal, as before, instead of retrying to the deadline.
//
// A single "take over" operation in the daemon would avoid the retries,
// but would need a new label protocol in both the snapshotter's and the
// content store's Update, and through containerd (--containerd), which
// forwards no content labels and only passes snapshot labels on, the store
// would still need this path; so the move stays on the store's side.

// nameMoveTimeout bounds how long a name move retries against other
// clients' claims.
var nameMoveTimeout = 30 * time.Second

// unseenHolderTries is how many claims in a row, through containerd, may
// fail while no other item holds any of the names as far as the store can
// see, before the call gives up.
const unseenHolderTries = 3

// nameMove describes, for moveNames, an item whose names change.
type nameMove struct {
	what string // "layer", "image", "container"
	id   string // the item's ID, for messages
	// labelKey is the label recording name n on an item of this kind; the
	// names are validated against the daemon's label rules before anything
	// moves.
	labelKey func(n string) string
	// current returns the item's names as the claim replaces them: on the
	// first attempt from the listing the call started with, afterwards
	// read afresh (an error if the item is gone).
	current func(first bool) ([]string, error)
	// want computes the names the item is to have from current's.
	want func(current []string) []string
	// holder finds the other item holding name n (first: in the listing;
	// afterwards: by a targeted lookup): its ID and a function removing
	// the name from it, or "" and nil when no other item holds n. A name
	// that cannot move (the key of a snapshot containerd made) is an
	// error.
	holder func(first bool, n string) (string, func() error, error)
	// claim sets the item's names to names, replacing current, in one
	// update; the store's error (ErrDuplicateName when a name is taken).
	claim func(current, names []string) error
}

// moveNames gives an item the names m.want computes, moving each from the
// item holding it, retrying as the comment above says.
func (s *store) moveNames(m nameMove) error {
	deadline := time.Now().Add(nameMoveTimeout)
	delay := time.Millisecond
	unseen := 0
	for first := true; ; first = false {
		current, err := m.current(first)
		if err != nil {
			return err
		}
		names := m.want(current)
		for i, n := range names {
			if err := metadata.ValidateLabel(m.labelKey(n), strconv.Itoa(i)); err != nil {
				return fmt.Errorf("%s name %q: %w: %w", m.what, shortName(n), ErrInvalidName, err)
			}
		}
		seen := false
		for _, n := range names {
			other, release, err := m.holder(first, n)
			if err != nil {
				return err
			}
			if release == nil {
				continue
			}
			seen = true
			if err := release(); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("move name %q from %s %s: %w", n, m.what, other, err)
			}
		}
		err = m.claim(current, names)
		if err == nil || !errors.Is(err, ErrDuplicateName) {
			return err
		}
		if seen || first {
			unseen = 0
		} else {
			unseen++
		}
		if s.containerd != nil && unseen >= unseenHolderTries {
			return err
		}
		if time.Now().After(deadline) {
			for _, n := range names {
				if other, _, herr := m.holder(false, n); herr == nil && other != "" {
					return fmt.Errorf("%s name %q is still held by %s %s after trying to move it for %v: %w", m.what, n, m.what, other, nameMoveTimeout, ErrDuplicateName)
				}
			}
			return fmt.Errorf("names of %s %s, after trying to move them for %v: %w", m.what, m.id, nameMoveTimeout, err)
		}
		time.Sleep(delay/2 + rand.N(delay))
		delay = min(2*delay, 64*time.Millisecond)
	}
}

// shortName cuts a name down for an error message.
func shortName(n string) string {
	if len(n) <= 64 {
		return n
	}
	return n[:64] + "..."
}

// layerUpdateNames changes the names of layer r, idx the listing it was
// found in.
func (s *store) layerUpdateNames(r *layerRecord, idx *layerIndex, change func(old []string) []string) error {
	return s.moveNames(nameMove{
		what:     "layer",
		id:       r.ID,
		labelKey: func(n string) string { return cslabels.NameKey(cslabels.Layer, n) },
		current: func(first bool) ([]string, error) {
			if !first {
				fresh, err := s.restatLayer(r)
				if err != nil {
					return nil, err
				}
				r = fresh
			}
			return orderedNames(r.labels, cslabels.Layer), nil
		},
		want: func(current []string) []string {
			names := change(current)
			if !r.owned && len(names) > 0 && names[0] == r.key {
				names = names[1:] // the key of a containerd snapshot is a name already
			}
			return names
		},
		holder: func(first bool, n string) (string, func() error, error) {
			var other *layerRecord
			if first {
				other = idx.byName[n]
			} else {
				var err error
				if other, err = s.layerNamed(n); err != nil {
					return "", nil, err
				}
			}
			if other == nil || other.key == r.key {
				return "", nil, nil
			}
			if !other.owned && n == other.key {
				return "", nil, fmt.Errorf("name %q is the key of snapshot %s: %w", n, other.ID, ErrDuplicateName)
			}
			return other.ID, func() error {
				_, err := s.sn.Update(s.ctx, snapshots.Info{Name: other.key}, "labels."+cslabels.NameKey(cslabels.Layer, n))
				return mapErr(err)
			}, nil
		},
		claim: func(current, names []string) error {
			return s.replaceNameLabels(r.key, cslabels.Layer, current, names)
		},
	})
}

// restatLayer reads layer r again; a writeable layer may have been
// committed under its ID meanwhile.
func (s *store) restatLayer(r *layerRecord) (*layerRecord, error) {
	keys := []string{r.key}
	if r.owned {
		keys = []string{r.ID, rwPrefix + r.ID}
	}
	for _, key := range keys {
		fresh, err := s.statLayer(key)
		if err != nil {
			return nil, err
		}
		if fresh != nil {
			return fresh, nil
		}
	}
	return nil, fmt.Errorf("layer %s: %w", r.ID, ErrLayerUnknown)
}

// layerNamed returns the layer holding layer name n now, nil if none: a
// snapshot containerd made with key n, else the holder in the daemon's name
// index (the listing when n cannot be put in a filter).
func (s *store) layerNamed(n string) (*layerRecord, error) {
	r, err := s.statLayer(n)
	if err != nil || (r != nil && !r.owned) {
		return r, err
	}
	if quotable(n) {
		return s.indexedLayer(cslabels.Layer, n)
	}
	idx, err := s.load()
	if err != nil {
		return nil, err
	}
	return idx.byName[n], nil
}

// containerUpdateNames changes the names of container c, idx the listing
// it was found in.
func (s *store) containerUpdateNames(c *containerRecord, idx *layerIndex, change func(old []string) []string) error {
	return s.moveNames(nameMove{
		what:     "container",
		id:       c.ID,
		labelKey: func(n string) string { return cslabels.NameKey(cslabels.Container, n) },
		current: func(first bool) ([]string, error) {
			if !first {
				fresh, err := s.statLayer(c.layer.key)
				if err != nil {
					return nil, err
				}
				var fc *containerRecord
				if fresh != nil {
					fc = containerFromLayer(fresh)
				}
				if fc == nil || fc.ID != c.ID {
					return nil, fmt.Errorf("container %s: %w", c.ID, ErrContainerUnknown)
				}
				c = fc
			}
			return orderedNames(c.layer.labels, cslabels.Container), nil
		},
		want: func(current []string) []string {
			names := change(current)
			if c.ctrd && len(names) > 0 && names[0] == c.layer.key {
				names = names[1:]
			}
			return names
		},
		holder: func(first bool, n string) (string, func() error, error) {
			var other *containerRecord
			if first {
				other = idx.ctrByName[n]
			} else {
				var err error
				if other, err = s.containerNamed(n); err != nil {
					return "", nil, err
				}
			}
			if other == nil || other.layer.key == c.layer.key {
				return "", nil, nil
			}
			if other.ctrd && n == other.layer.key {
				return "", nil, fmt.Errorf("name %q is the key of containerd's snapshot for container %s: %w", n, other.ID, ErrDuplicateName)
			}
			return other.ID, func() error {
				_, err := s.sn.Update(s.ctx, snapshots.Info{Name: other.layer.key}, "labels."+cslabels.NameKey(cslabels.Container, n))
				return mapErr(err)
			}, nil
		},
		claim: func(current, names []string) error {
			err := s.replaceNameLabels(c.layer.key, cslabels.Container, current, names)
			if errors.Is(err, ErrLayerUnknown) {
				return fmt.Errorf("container %s: %w: %w", c.ID, ErrContainerUnknown, err)
			}
			return err
		},
	})
}

// containerNamed returns the container holding container name n now, nil
// if none: containerd's container whose snapshot key is n, else the holder
// in the daemon's name index (the listing when n cannot be put in a
// filter).
func (s *store) containerNamed(n string) (*containerRecord, error) {
	r, err := s.statLayer(n)
	if err != nil {
		return nil, err
	}
	if r != nil {
		if c := containerFromLayer(r); c != nil && c.ctrd {
			return c, nil
		}
	}
	if !quotable(n) {
		idx, err := s.load()
		if err != nil {
			return nil, err
		}
		return idx.ctrByName[n], nil
	}
	if r, err = s.indexedLayer(cslabels.Container, n); err != nil || r == nil {
		return nil, err
	}
	return containerFromLayer(r), nil
}

// restatImage reads store image r again from its record blob.
func (s *store) restatImage(r *imageRecord) (*imageRecord, error) {
	info, err := s.cs.Info(s.ctx, r.dgst)
	if err == nil && info.Labels[cslabels.ImageMarker] == "" {
		err = errdefs.ErrNotFound
	}
	var doc imageDoc
	if err == nil {
		doc, err = s.readImageDoc(info)
	}
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("image %s: %w", r.ID, ErrImageUnknown)
	}
	if err != nil {
		return nil, err
	}
	return imageFromLabels(doc, info.Digest, info.Labels), nil
}

// imageNamed returns the store image holding image name n now, nil if
// none, through the daemon's name index (the listing when n cannot be put
// in a filter). containerd's images are not asked: a store image's name
// hides theirs.
func (s *store) imageNamed(n string) (*imageRecord, error) {
	if !quotable(n) {
		idx, err := s.loadImages()
		if err != nil {
			return nil, err
		}
		return idx.byName[n], nil
	}
	return s.imageByFilter(`labels."` + cslabels.ImageNamePrefix + n + `"`)
}
