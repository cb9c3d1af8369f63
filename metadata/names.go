package metadata

import (
	bolt "go.etcd.io/bbolt"
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
