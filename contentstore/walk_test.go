package contentstore_test

import (
	"context"
	"reflect"
	"sort"
	"strconv"
	"testing"

	"github.com/containerd/containerd/v2/core/content"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// TestWalkByImageName: a Walk filtered on one image name or ID is answered
// from the name index and finds exactly what a full scan with the same
// condition finds, as names move and blobs go.
func TestWalkByImageName(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	walk := func(filter string) []string {
		var found []string
		if err := cs.Walk(ctx, func(info content.Info) error {
			found = append(found, info.Digest.String())
			return nil
		}, filter); err != nil {
			t.Fatal(err)
		}
		sort.Strings(found)
		return found
	}
	nameFilter := `labels."` + cslabels.ImageNamePrefix + `busybox:latest"`
	idFilter := `labels."` + cslabels.ImageID + `"==` + strconv.Quote("img-a")
	check := func(filter string, want ...string) {
		t.Helper()
		indexed := walk(filter)
		scanned := walk(filter + `,labels."` + cslabels.ImageMarker + `"`) // not indexable: a full scan
		if len(want) == 0 {
			want = nil
		}
		if !reflect.DeepEqual(indexed, want) || !reflect.DeepEqual(scanned, want) {
			t.Errorf("%s: indexed walk %v, scan %v; want %v", filter, indexed, scanned, want)
		}
	}
	a := write(t, cs, "record a", map[string]string{cslabels.ImageMarker: "1", cslabels.ImageID: "img-a", cslabels.ImageNamePrefix + "busybox:latest": "0"})
	b := write(t, cs, "record b", map[string]string{cslabels.ImageMarker: "1", cslabels.ImageID: "img-b"})
	write(t, cs, "unrelated", nil)
	check(nameFilter, a.String())
	check(idFilter, a.String())
	// The name moves from a to b.
	if _, err := cs.Update(ctx, content.Info{Digest: a, Labels: map[string]string{}}, "labels."+cslabels.ImageNamePrefix+"busybox:latest"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Update(ctx, content.Info{Digest: b, Labels: map[string]string{cslabels.ImageNamePrefix + "busybox:latest": "0"}}, "labels."+cslabels.ImageNamePrefix+"busybox:latest"); err != nil {
		t.Fatal(err)
	}
	check(nameFilter, b.String())
	if err := cs.Delete(ctx, a); err != nil {
		t.Fatal(err)
	}
	check(idFilter)
	check(nameFilter, b.String())
}
