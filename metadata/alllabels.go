package metadata

import (
	"context"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// All returns the labels of every blob that has any, read in one
// transaction: a Walk of the content store pays one read, not one per blob.
func (l *ContentLabels) All() (map[digest.Digest]map[string]string, error) {
	all := map[digest.Digest]map[string]string{}
	err := l.db.View(context.Background(), func(_ context.Context, tx *bolt.Tx) error {
		parent := labelsBucket(tx)
		return parent.ForEachBucket(func(k []byte) error {
			if labels := readLabels(parent.Bucket(k)); labels != nil {
				all[digest.Digest(k)] = labels
			}
			return nil
		})
	})
	return all, err
}
