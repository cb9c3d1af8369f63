package metadata

import (
	"context"
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// ContentLabels keeps the labels of content blobs, one bucket per digest.
// It satisfies containerd's plugins/content/local.LabelStore.
type ContentLabels struct {
	db *DB
}

// ContentLabels returns the database's content label store.
func (db *DB) ContentLabels() *ContentLabels {
	return &ContentLabels{db: db}
}

func labelsBucket(tx *bolt.Tx) *bolt.Bucket {
	return tx.Bucket(bucketContent).Bucket(bucketLabels)
}

func readLabels(b *bolt.Bucket) map[string]string {
	if b == nil {
		return nil
	}
	labels := map[string]string{}
	b.ForEach(func(k, v []byte) error {
		labels[string(k)] = string(v)
		return nil
	})
	if len(labels) == 0 {
		return nil
	}
	return labels
}

// Get returns the labels of dgst, nil if it has none.
func (l *ContentLabels) Get(dgst digest.Digest) (labels map[string]string, err error) {
	err = l.db.View(context.Background(), func(_ context.Context, tx *bolt.Tx) error {
		labels = readLabels(labelsBucket(tx).Bucket([]byte(dgst)))
		return nil
	})
	return labels, err
}

// Set replaces all labels of dgst. The image names and ID among the labels
// (cslabels.ImageNamePrefix, cslabels.ImageID) are claimed for the blob in
// the same transaction; one another blob holds is refused with an error
// wrapping errdefs.ErrAlreadyExists naming the holder, and nothing changes.
func (l *ContentLabels) Set(dgst digest.Digest, labels map[string]string) error {
	return l.db.Update(context.Background(), func(_ context.Context, tx *bolt.Tx) error {
		parent := labelsBucket(tx)
		if err := releaseContentNames(tx, dgst, readLabels(parent.Bucket([]byte(dgst)))); err != nil {
			return err
		}
		if err := parent.DeleteBucket([]byte(dgst)); err != nil && err != bolt.ErrBucketNotFound {
			return fmt.Errorf("reset labels of %s: %w", dgst, err)
		}
		if err := claimContentNames(tx, dgst, labels); err != nil {
			return err
		}
		return putLabels(parent, dgst, labels)
	})
}

// Update sets the given labels of dgst; an empty value removes a label. It
// returns all labels after the change. Image names and IDs are claimed and
// released as by Set.
func (l *ContentLabels) Update(dgst digest.Digest, update map[string]string) (labels map[string]string, err error) {
	err = l.db.Update(context.Background(), func(_ context.Context, tx *bolt.Tx) error {
		parent := labelsBucket(tx)
		old := readLabels(parent.Bucket([]byte(dgst)))
		released := map[string]string{}
		for k, v := range update {
			if old[k] != "" && old[k] != v {
				released[k] = old[k]
			}
		}
		if err := releaseContentNames(tx, dgst, released); err != nil {
			return err
		}
		if err := claimContentNames(tx, dgst, update); err != nil {
			return err
		}
		if err := putLabels(parent, dgst, update); err != nil {
			return err
		}
		labels = readLabels(parent.Bucket([]byte(dgst)))
		return nil
	})
	return labels, err
}

// Delete drops every label of dgst; the blob is gone. Its image names and
// ID are released.
func (l *ContentLabels) Delete(dgst digest.Digest) error {
	return l.db.Update(context.Background(), func(_ context.Context, tx *bolt.Tx) error {
		if err := releaseContentNames(tx, dgst, readLabels(labelsBucket(tx).Bucket([]byte(dgst)))); err != nil {
			return err
		}
		if err := labelsBucket(tx).DeleteBucket([]byte(dgst)); err != nil && err != bolt.ErrBucketNotFound {
			return fmt.Errorf("delete labels of %s: %w", dgst, err)
		}
		return nil
	})
}

func putLabels(parent *bolt.Bucket, dgst digest.Digest, labels map[string]string) error {
	if len(labels) == 0 {
		return nil
	}
	b, err := parent.CreateBucketIfNotExists([]byte(dgst))
	if err != nil {
		return fmt.Errorf("labels of %s: %w", dgst, err)
	}
	for k, v := range labels {
		if v == "" {
			err = b.Delete([]byte(k))
		} else {
			err = b.Put([]byte(k), []byte(v))
		}
		if err != nil {
			return fmt.Errorf("label %q of %s: %w", k, dgst, err)
		}
	}
	if k, _ := b.Cursor().First(); k == nil {
		return parent.DeleteBucket([]byte(dgst))
	}
	return nil
}

// ValidateLabels applies containerd's rules to every label: a key and
// value of at most 4096 bytes together (containerd's labels.Validate), and,
// as containerd's gRPC API cannot carry anything else and a key says what a
// label is, a non-empty key and key and value in UTF-8. It answers
// InvalidArgument naming the first label refused (in the order of its key,
// so the answer does not change from call to call).
func ValidateLabels(l map[string]string) error {
	if len(l) == 0 {
		return nil
	}
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := ValidateLabel(k, l[k]); err != nil {
			return err
		}
	}
	return nil
}

// ValidateLabel applies ValidateLabels' rules to one label.
func ValidateLabel(k, v string) error {
	switch {
	case k == "":
		return fmt.Errorf("label key must not be empty (value %q): %w", truncate(v), errdefs.ErrInvalidArgument)
	case !utf8.ValidString(k):
		return fmt.Errorf("label key %q is not valid UTF-8: %w", truncate(k), errdefs.ErrInvalidArgument)
	case !utf8.ValidString(v):
		return fmt.Errorf("value of label %q is not valid UTF-8: %w", truncate(k), errdefs.ErrInvalidArgument)
	}
	return labels.Validate(k, v)
}

// truncate shortens s for an error message.
func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
