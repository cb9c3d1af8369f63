package metadata

import (
	"context"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// NameHolder returns what holds name of kind (a snapshot key, or a blob
// digest for image names and IDs), "" if nothing does.
func (db *DB) NameHolder(ctx context.Context, kind cslabels.Kind, name string) (holder string, err error) {
	err = db.View(ctx, func(_ context.Context, tx *bolt.Tx) error {
		holder = Names(tx).Get(string(kind), name)
		return nil
	})
	return holder, err
}

// IndexedFilter recognizes a Walk filter the name index answers: the
// presence of one name label (`labels."<name key>"`) or the image ID label
// equal to a value (`labels."cs.image-id"=="<id>"`). It returns the kind
// and name to look up. A Walk with such a filter visits only the holder,
// so looking one item up does not read the whole store.
func IndexedFilter(filters []string) (kind cslabels.Kind, name string, ok bool) {
	if len(filters) != 1 {
		return "", "", false
	}
	rest, ok := strings.CutPrefix(filters[0], `labels."`)
	if !ok {
		return "", "", false
	}
	end := strings.IndexByte(rest, '"')
	if end < 0 {
		return "", "", false
	}
	key, rest := rest[:end], rest[end+1:]
	if strings.ContainsRune(key, '\\') {
		// An escape: the key is not what it reads as (and the quote found
		// may be an escaped one). The full walk parses it properly.
		return "", "", false
	}
	if rest == "" {
		if k, n, ok := cslabels.ParseName(key); ok {
			return k, n, true
		}
		if n, ok := strings.CutPrefix(key, cslabels.ImageNamePrefix); ok && n != "" {
			return cslabels.Image, n, true
		}
		return "", "", false
	}
	value, ok := strings.CutPrefix(rest, "==")
	if !ok || key != cslabels.ImageID {
		return "", "", false
	}
	id, err := strconv.Unquote(value)
	if err != nil || id == "" || strings.ContainsRune(value, '\\') {
		return "", "", false
	}
	return cslabels.ImageIDKind, id, true
}

// Holder returns the blob holding image name or ID name of kind, "" if
// none.
func (l *ContentLabels) Holder(ctx context.Context, kind cslabels.Kind, name string) (digest.Digest, error) {
	h, err := l.db.NameHolder(ctx, kind, name)
	return digest.Digest(h), err
}
