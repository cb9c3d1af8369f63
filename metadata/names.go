package metadata

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

var bucketNames = []byte("cs.names.v1")

// NameIndex maps each name of a kind to the snapshot holding it, so a name
// can be claimed atomically inside the transaction that records it.
type NameIndex struct {
	b *bolt.Bucket
}

// Names returns the name index of tx; in a read-only transaction it may be
// empty.
func Names(tx *bolt.Tx) NameIndex {
	return NameIndex{b: tx.Bucket(bucketNames)}
}

// Get returns the snapshot holding name of kind, or "".
func (n NameIndex) Get(kind, name string) string {
	if n.b == nil {
		return ""
	}
	kb := n.b.Bucket([]byte(kind))
	if kb == nil {
		return ""
	}
	return string(kb.Get([]byte(name)))
}

// Put records that snapshot holds name of kind.
func (n NameIndex) Put(kind, name, snapshot string) error {
	kb, err := n.b.CreateBucketIfNotExists([]byte(kind))
	if err != nil {
		return err
	}
	return kb.Put([]byte(name), []byte(snapshot))
}

// Delete forgets name of kind.
func (n NameIndex) Delete(kind, name string) error {
	if n.b == nil {
		return nil
	}
	kb := n.b.Bucket([]byte(kind))
	if kb == nil {
		return nil
	}
	return kb.Delete([]byte(name))
}

// contentClaims lists the claims the content labels in labels make: an image
// name (kind cslabels.Image) for each cslabels.ImageNamePrefix label, and
// the image ID (kind cslabels.ImageIDKind) of a cslabels.ImageID label. A
// label with an empty value (a removal in Update) claims nothing.
func contentClaims(labels map[string]string) (claims [][2]string) {
	for k, v := range labels {
		if v == "" {
			continue
		}
		if name, ok := strings.CutPrefix(k, cslabels.ImageNamePrefix); ok && name != "" {
			claims = append(claims, [2]string{string(cslabels.Image), name})
		} else if k == cslabels.ImageID {
			claims = append(claims, [2]string{string(cslabels.ImageIDKind), v})
		}
	}
	return claims
}

// claimContentNames records the image names and ID in labels as held by
// blob dgst, refusing any another blob holds. It runs in the transaction
// that writes the labels, so of two clients racing for a name exactly one
// wins.
func claimContentNames(tx *bolt.Tx, dgst digest.Digest, labels map[string]string) error {
	claims := contentClaims(labels)
	if len(claims) == 0 {
		return nil
	}
	idx := Names(tx)
	for _, c := range claims {
		kind, name := c[0], c[1]
		if holder := idx.Get(kind, name); holder != "" && holder != dgst.String() {
			what := "name"
			if kind == string(cslabels.ImageIDKind) {
				what = "ID"
			}
			return fmt.Errorf("image %s %q is already used by image record %s: %w", what, name, holder, errdefs.ErrAlreadyExists)
		}
		if err := idx.Put(kind, name, dgst.String()); err != nil {
			return fmt.Errorf("record %s %q: %w", kind, name, err)
		}
	}
	return nil
}

// releaseContentNames forgets the image names and ID in labels (the keys
// count; for the ID, the value) that blob dgst holds.
func releaseContentNames(tx *bolt.Tx, dgst digest.Digest, labels map[string]string) error {
	idx := Names(tx)
	for _, c := range contentClaims(labels) {
		kind, name := c[0], c[1]
		if idx.Get(kind, name) != dgst.String() {
			continue
		}
		if err := idx.Delete(kind, name); err != nil {
			return fmt.Errorf("release %s %q: %w", kind, name, err)
		}
	}
	return nil
}
