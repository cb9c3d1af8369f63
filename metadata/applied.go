package metadata

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

var bucketApplied = []byte("cs.applied.v1")

// Applied keeps what the diff service recorded about a layer it applied
// into an active snapshot (its tar-split, digests), keyed by the snapshot's
// record ID, until the snapshot is committed and the labels can go on it:
// containerd's Commit replaces a snapshot's labels, so they cannot wait on
// the active one.
type Applied struct {
	tx *bolt.Tx
}

// AppliedRecords returns the records of tx.
func AppliedRecords(tx *bolt.Tx) Applied { return Applied{tx: tx} }

// Put records labels for snapshot id, replacing what was there.
func (a Applied) Put(id string, labels map[string]string) error {
	b, err := a.tx.CreateBucketIfNotExists(bucketApplied)
	if err != nil {
		return err
	}
	v, err := json.Marshal(labels)
	if err != nil {
		return err
	}
	return b.Put([]byte(id), v)
}

// Take returns and forgets the labels recorded for snapshot id.
func (a Applied) Take(id string) (map[string]string, error) {
	b := a.tx.Bucket(bucketApplied)
	if b == nil {
		return nil, nil
	}
	v := b.Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	var labels map[string]string
	if err := json.Unmarshal(v, &labels); err != nil {
		return nil, fmt.Errorf("applied record of snapshot %s: %w", id, err)
	}
	if a.tx.Writable() {
		if err := b.Delete([]byte(id)); err != nil {
			return nil, err
		}
	}
	return labels, nil
}
