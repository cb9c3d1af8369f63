package contentstore_test

import (
	"context"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
)

// TestOwnIngestsListedWhenAsked: a filtered listing shows the daemon's own
// ingests that match (OwnIngests selects exactly them), so the store can
// find its own through the socket; an unfiltered one, containerd's garbage
// collector's, still hides them.
func TestOwnIngestsListedWhenAsked(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	for _, ref := range []string{contentstore.OwnRefPrefix + "bigdata.x", contentstore.OwnRefPrefix + "tar-split.y", "pull-layer", "csv-import"} {
		w, err := cs.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("partial"))
		w.Close()
	}
	refs := func(filters ...string) string {
		t.Helper()
		st, err := cs.ListStatuses(ctx, filters...)
		if err != nil {
			t.Fatalf("ListStatuses(%q): %v", filters, err)
		}
		var out []string
		for _, s := range st {
			out = append(out, s.Ref)
		}
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		filters []string
		want    string
	}{
		{nil, "csv-import pull-layer"},
		{[]string{""}, "csv-import pull-layer"},
		{[]string{contentstore.OwnIngests}, "cs.bigdata.x cs.tar-split.y"},
		{[]string{`ref~="tar-split|pull"`}, "cs.tar-split.y pull-layer"},
		{[]string{`ref==pull-layer`}, "pull-layer"},
	} {
		if got := refs(c.filters...); got != c.want {
			t.Errorf("ListStatuses(%q) = %q, want %q", c.filters, got, c.want)
		}
	}
}
