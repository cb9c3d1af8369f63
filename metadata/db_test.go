package metadata

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

func open(t *testing.T) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), FileName)
	db, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

func TestOpenLocked(t *testing.T) {
	_, path := open(t)
	_, err := Open(context.Background(), path)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open: %v", err)
	}
}

// TestOneTransaction shows snapshot records and the daemon's own buckets
// commit and roll back together.
func TestOneTransaction(t *testing.T) {
	db, _ := open(t)
	ctx := context.Background()
	boom := errors.New("boom")
	err := db.Update(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		if _, err := storage.CreateSnapshot(ctx, snapshots.KindActive, "a", ""); err != nil {
			return err
		}
		if err := putLabels(labelsBucket(tx), "sha256:x", map[string]string{"k": "v"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	db.View(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		if _, _, _, err := storage.GetInfo(ctx, "a"); err == nil {
			t.Error("snapshot survived a rolled back transaction")
		}
		if labelsBucket(tx).Bucket([]byte("sha256:x")) != nil {
			t.Error("labels survived a rolled back transaction")
		}
		return nil
	})

	if err := db.Update(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		_, err := storage.CreateSnapshot(ctx, snapshots.KindActive, "a", "")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	db.View(ctx, func(ctx context.Context, tx *bolt.Tx) error {
		if _, _, _, err := storage.GetInfo(ctx, "a"); err != nil {
			t.Errorf("committed snapshot missing: %v", err)
		}
		return nil
	})
}

func TestContentLabels(t *testing.T) {
	db, _ := open(t)
	l := db.ContentLabels()
	d := digest.FromString("blob")

	if got, err := l.Get(d); err != nil || got != nil {
		t.Fatalf("labels of unknown blob: %v %v", got, err)
	}
	if err := l.Set(d, map[string]string{"a": "1", "b": "2"}); err != nil {
		t.Fatal(err)
	}
	got, err := l.Update(d, map[string]string{"b": "", "c": "3"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"a": "1", "c": "3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after update %v, want %v", got, want)
	}
	if err := l.Set(d, map[string]string{"z": "9"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Get(d); !reflect.DeepEqual(got, map[string]string{"z": "9"}) {
		t.Errorf("set did not replace: %v", got)
	}
	if got, _ := l.Update(d, map[string]string{"z": ""}); got != nil {
		t.Errorf("removing the last label left %v", got)
	}
	l.Set(d, map[string]string{"a": "1"})
	if err := l.Delete(d); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Get(d); got != nil {
		t.Errorf("labels after delete: %v", got)
	}
	if err := l.Delete(d); err != nil {
		t.Errorf("deleting twice: %v", err)
	}
}
