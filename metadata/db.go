// Package metadata holds the daemon's one bbolt database: the snapshot
// records (in containerd's core/snapshots/storage format) and the content
// labels, so a change to both can be a single transaction.
package metadata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	bolt "go.etcd.io/bbolt"
)

// FileName is the database's name inside the daemon's root.
const FileName = "metadata.db"

// openTimeout bounds the wait for bbolt's file lock, so a second process on
// the same database fails instead of hanging.
const openTimeout = 2 * time.Second

var (
	bucketContent = []byte("cs.content.v1")
	bucketLabels  = []byte("labels")
)

// DB is the daemon's database. Snapshot records are read and written with
// containerd's storage package using the context a transaction passes to its
// callback; the daemon's own buckets with the *bolt.Tx passed alongside.
type DB struct {
	ms *storage.MetaStore
	// readOnly: opened by OpenReadOnly; path is the file, opened anew for
	// each transaction.
	readOnly bool
	path     string
}

// TxFunc runs inside a transaction. ctx carries the transaction for
// containerd's storage package; tx is the same transaction.
type TxFunc func(ctx context.Context, tx *bolt.Tx) error

// Open opens or creates the database at path.
func Open(ctx context.Context, path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create database directory: %w", err)
	}
	ms, err := storage.NewMetaStore(path, func(o *bolt.Options) error {
		o.Timeout = openTimeout
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	db := &DB{ms: ms}
	// The metastore opens the file lazily; open it now so a broken or locked
	// database is reported at start, and create the buckets the daemon owns.
	if err := db.Update(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketContent)
		if err != nil {
			return err
		}
		if _, err = b.CreateBucketIfNotExists(bucketLabels); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketNames); err != nil {
			return err
		}
		return initSnapshotBuckets(ctx)
	}); err != nil {
		ms.Close()
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open database %s: locked by another process", path)
		}
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	return db, nil
}

// View runs fn in a read-only transaction.
func (db *DB) View(ctx context.Context, fn TxFunc) error {
	return db.with(ctx, false, fn)
}

// Update runs fn in a read-write transaction, committed if fn returns nil.
func (db *DB) Update(ctx context.Context, fn TxFunc) error {
	return db.with(ctx, true, fn)
}

func (db *DB) with(ctx context.Context, writable bool, fn TxFunc) (err error) {
	ms := db.ms
	if db.readOnly {
		if writable {
			return fmt.Errorf("database %s is open read-only: %w", db.path, ErrReadOnly)
		}
		if ms, err = openReadOnly(db.path); err != nil {
			return err
		}
		defer ms.Close()
	}
	tctx, t, err := ms.TransactionContext(ctx, writable)
	if err != nil {
		return err
	}
	// storage.MetaStore hands out the bbolt transaction as its Transactor;
	// using it directly is what lets the daemon keep its own buckets in the
	// same file and transaction as the snapshot records.
	tx, ok := t.(*bolt.Tx)
	if !ok {
		t.Rollback()
		return fmt.Errorf("metadata: unexpected transaction type %T", t)
	}
	defer func() {
		if err != nil || !writable {
			if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, bolt.ErrTxClosed) {
				log.G(ctx).WithError(rerr).Warn("rollback failed")
			}
			return
		}
		if cerr := tx.Commit(); cerr != nil {
			err = fmt.Errorf("commit transaction: %w", cerr)
		}
	}()
	return fn(tctx, tx)
}

// Close closes the database file.
func (db *DB) Close() error {
	if db.readOnly {
		return nil
	}
	return db.ms.Close()
}

// initSnapshotBuckets makes the storage package's buckets exist: it creates
// them only with the first snapshot and until then answers every lookup
// with "bucket does not exist", which would make an empty store's Walk fail
// and its errors confusing. Creating and removing a placeholder snapshot in
// one transaction leaves exactly the empty buckets.
func initSnapshotBuckets(ctx context.Context) error {
	if _, err := storage.IDMap(ctx); !errdefs.IsNotFound(err) {
		return err
	}
	const placeholder = "cs-snapshotter.init"
	if _, err := storage.CreateSnapshot(ctx, snapshots.KindActive, placeholder, ""); err != nil {
		return fmt.Errorf("initialize snapshot records: %w", err)
	}
	if _, _, err := storage.Remove(ctx, placeholder); err != nil {
		return fmt.Errorf("initialize snapshot records: %w", err)
	}
	return nil
}
