package metadata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots/storage"
	bolt "go.etcd.io/bbolt"
)

// ErrReadOnly answers a write to a database opened with OpenReadOnly.
var ErrReadOnly = errors.New("read-only database")

// ErrNewerFormat is a database written by a newer cs-snapshotter: it holds
// records this version does not know how to read.
var ErrNewerFormat = errors.New("database has a newer format")

// ErrNotRoot is a path that is not a cs-snapshotter root (or its database).
var ErrNotRoot = errors.New("not a cs-snapshotter root")

// ErrLocked is a database a writer holds open, which a read-only open
// cannot read until it lets go.
var ErrLocked = errors.New("locked by a process writing it")

// readOnlyTimeout bounds the wait for bbolt's file lock in a read-only
// transaction (see OpenReadOnly).
var readOnlyTimeout = 2 * time.Second

// knownBuckets are the top-level buckets this version writes: containerd's
// snapshot records ("v1") and the daemon's own.
var knownBuckets = map[string]bool{
	"v1":                  true,
	string(bucketContent): true,
	string(bucketNames):   true,
	string(bucketApplied): true,
}

// OpenReadOnly opens the database at path for reading only: nothing is
// created, repaired or written, and View is the only way in (Update answers
// ErrReadOnly).
//
// Locking: bbolt flocks the database file for as long as it is open, shared
// (LOCK_SH) in read-only mode, exclusive (LOCK_EX) for a writer. A writer
// (a daemon or an in-process store holding the root) keeps its exclusive
// lock until it closes, so while one has the root open this process cannot
// read the file at all: each View waits up to readOnlyTimeout for the lock
// and then fails naming the file. Conversely a writer opening the root
// waits (metadata.Open's openTimeout) while a read is in progress. To keep
// that window small, the file is not kept open: each View opens it, reads
// one consistent snapshot (a bbolt read transaction), and closes it. A
// daemon that serves the root is read through its socket instead (see the
// storage package), so readers and that writer never meet on the file.
//
// The file is checked now: it must exist, be a bbolt database holding the
// daemon's buckets, and hold no bucket this version does not know (a newer
// format), each a clear error naming path.
func OpenReadOnly(ctx context.Context, path string) (*DB, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s does not exist: %w", path, ErrNotRoot)
		}
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a file: %w", path, ErrNotRoot)
	}
	db := &DB{readOnly: true, path: path}
	err = db.View(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		if tx.Bucket(bucketContent) == nil {
			return fmt.Errorf("%s has no content records: %w", path, ErrNotRoot)
		}
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if !knownBuckets[string(name)] {
				return fmt.Errorf("%s holds records %q this version does not know: %w", path, name, ErrNewerFormat)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return db, nil
}

// ReadOnly reports whether the database was opened with OpenReadOnly.
func (db *DB) ReadOnly() bool { return db.readOnly }

func openReadOnly(path string) (*storage.MetaStore, error) {
	ms, err := storage.NewMetaStore(path, func(o *bolt.Options) error {
		o.ReadOnly = true
		o.Timeout = readOnlyTimeout
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	// The metastore opens the file lazily: do it now, to name the file
	// in the errors.
	if _, t, err := ms.TransactionContext(context.Background(), false); err != nil {
		ms.Close()
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open database %s read-only: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open database %s read-only: %v: %w", path, err, ErrNotRoot)
	} else {
		t.Rollback()
	}
	return ms, nil
}
