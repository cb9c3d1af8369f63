package snapshotter

import (
	"fmt"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// claimNames records the names in labels as held by snapshot key, refusing
// any another snapshot holds. It runs in the transaction that writes the
// labels, so of two clients racing for a name exactly one wins.
func claimNames(tx *bolt.Tx, key string, labels map[string]string) error {
	idx := metadata.Names(tx)
	for kind, names := range cslabels.Names(labels) {
		for _, name := range names {
			if holder := idx.Get(string(kind), name); holder != "" && holder != key {
				return fmt.Errorf("%s name %q is already used by snapshot %q: %w", kind, name, holder, errdefs.ErrAlreadyExists)
			}
			if err := idx.Put(string(kind), name, key); err != nil {
				return fmt.Errorf("record %s name %q: %w", kind, name, err)
			}
		}
	}
	return nil
}

// releaseNames forgets the names in labels that snapshot key holds.
func releaseNames(tx *bolt.Tx, key string, labels map[string]string) error {
	idx := metadata.Names(tx)
	for kind, names := range cslabels.Names(labels) {
		for _, name := range names {
			if idx.Get(string(kind), name) != key {
				continue
			}
			if err := idx.Delete(string(kind), name); err != nil {
				return fmt.Errorf("release %s name %q: %w", kind, name, err)
			}
		}
	}
	return nil
}
