package metadata

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

func holder(t *testing.T, db *DB, kind cslabels.Kind, name string) string {
	t.Helper()
	var h string
	db.View(context.Background(), func(_ context.Context, tx *bolt.Tx) error {
		h = Names(tx).Get(string(kind), name)
		return nil
	})
	return h
}

// TestImageNameClaims: content labels naming an image claim the name (and
// an image ID its ID) for the blob in the transaction that writes them; a
// second blob is refused and changes nothing; removing the label, replacing
// the labels or deleting the blob frees it.
func TestImageNameClaims(t *testing.T) {
	db, _ := open(t)
	l := db.ContentLabels()
	a, b := digest.FromString("a"), digest.FromString("b")
	name := cslabels.ImageNamePrefix + "img:1"

	if err := l.Set(a, map[string]string{name: "0", cslabels.ImageID: "id-a", "other": "x"}); err != nil {
		t.Fatal(err)
	}
	if h := holder(t, db, cslabels.Image, "img:1"); h != a.String() {
		t.Fatalf("holder %q", h)
	}
	for _, try := range []map[string]string{
		{name: "0"},
		{cslabels.ImageID: "id-a"},
		{cslabels.ImageNamePrefix + "free": "0", name: "1"},
	} {
		err := l.Set(b, try)
		if !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), a.String()) {
			t.Errorf("Set %v: %v", try, err)
		}
		if _, err := l.Update(b, try); !errdefs.IsAlreadyExists(err) {
			t.Errorf("Update %v: %v", try, err)
		}
		if got, _ := l.Get(b); got != nil {
			t.Errorf("refused labels were written: %v", got)
		}
		if h := holder(t, db, cslabels.Image, "free"); h != "" {
			t.Errorf("a refused change claimed a name: %q", h)
		}
	}
	// The holder may rewrite its own labels.
	if _, err := l.Update(a, map[string]string{name: "3"}); err != nil {
		t.Fatal(err)
	}
	// Removing the label frees the name.
	if _, err := l.Update(a, map[string]string{name: ""}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Update(b, map[string]string{name: "0"}); err != nil {
		t.Fatalf("a freed name: %v", err)
	}
	// Set replaces: names and ID not in the new labels are freed.
	if err := l.Set(a, map[string]string{"other": "y"}); err != nil {
		t.Fatal(err)
	}
	if h := holder(t, db, cslabels.ImageIDKind, "id-a"); h != "" {
		t.Errorf("ID still held by %q", h)
	}
	// Delete frees them.
	if err := l.Delete(b); err != nil {
		t.Fatal(err)
	}
	if h := holder(t, db, cslabels.Image, "img:1"); h != "" {
		t.Errorf("name still held by %q", h)
	}
	if got, _ := l.Get(a); !reflect.DeepEqual(got, map[string]string{"other": "y"}) {
		t.Errorf("labels %v", got)
	}
}
