package contentstore_test

import (
	"context"
	"os"
	"reflect"
	"sort"
	"testing"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// Fuzz targets (seed corpus in testdata/fuzz/<target>/), e.g.
//
//	go test -run '^$' -fuzz '^FuzzContentFilters$' -fuzztime 60s ./contentstore/

// fuzzDir is a directory for a fuzz target's store: in /dev/shm where there
// is one, so the database's fsyncs do not bound the executions a second.
func fuzzDir(f *testing.F) string {
	if dir, err := os.MkdirTemp("/dev/shm", "cs-fuzz-"); err == nil {
		f.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return f.TempDir()
}

// FuzzContentFilters: Walk and ListStatuses with any filter never panic; a
// filter they refuse is refused with InvalidArgument, and one they take
// selects exactly what containerd's filter semantics select.
func FuzzContentFilters(f *testing.F) {
	_, cs, closeFn, err := newStore(context.Background(), fuzzDir(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { closeFn() })
	ctx := context.Background()
	write(f, cs, "one", map[string]string{"owner": "me", "containerd.io/gc.ref.content.l": "x"})
	write(f, cs, "two", nil)
	write(f, cs, "three", map[string]string{"cs.image-name.web": "0"})
	for _, ref := range []string{"pull-1", "pull-2", `odd"ref\`} {
		w, err := cs.Writer(ctx, content.WithRef(ref))
		if err != nil {
			f.Fatal(err)
		}
		w.Write([]byte(ref))
		w.Close()
	}
	var blobs []content.Info
	if err := cs.Walk(ctx, func(info content.Info) error {
		blobs = append(blobs, info)
		return nil
	}); err != nil {
		f.Fatal(err)
	}
	ingests, err := cs.ListStatuses(ctx)
	if err != nil {
		f.Fatal(err)
	}

	f.Add(`labels.owner==me`)
	f.Add(`ref~=^pull-`)
	f.Fuzz(func(t *testing.T, filter string) {
		parsed, perr := metadata.ParseFilters(filter)
		if perr != nil && !errdefs.IsInvalidArgument(perr) {
			t.Fatalf("ParseFilters(%q): %v, not InvalidArgument", filter, perr)
		}

		var got []string
		err := cs.Walk(ctx, func(info content.Info) error {
			got = append(got, info.Digest.String())
			return nil
		}, filter)
		if (err == nil) != (perr == nil) || (err != nil && !errdefs.IsInvalidArgument(err)) {
			t.Fatalf("Walk(%q): %v (parse: %v)", filter, err, perr)
		}
		if err == nil {
			var want []string
			for _, info := range blobs {
				if parsed.Match(content.AdaptInfo(info)) {
					want = append(want, info.Digest.String())
				}
			}
			sort.Strings(got)
			sort.Strings(want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Walk(%q) = %v, containerd's semantics select %v", filter, got, want)
			}
		}

		sts, err := cs.ListStatuses(ctx, filter)
		if (err == nil) != (perr == nil) || (err != nil && !errdefs.IsInvalidArgument(err)) {
			t.Fatalf("ListStatuses(%q): %v (parse: %v)", filter, err, perr)
		}
		if err == nil {
			got = nil
			for _, st := range sts {
				got = append(got, st.Ref)
			}
			var want []string
			for _, st := range ingests {
				ref := st.Ref
				if parsed.Match(filters.AdapterFunc(func(fieldpath []string) (string, bool) {
					if len(fieldpath) > 0 && fieldpath[0] == "ref" {
						return ref, true
					}
					return "", false
				})) {
					want = append(want, ref)
				}
			}
			sort.Strings(got)
			sort.Strings(want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("ListStatuses(%q) = %q, containerd's semantics select %q", filter, got, want)
			}
		}
	})
}

// FuzzContentLabels: Update with any label never panics; it succeeds
// exactly when the label is non-empty, UTF-8 and at most 4096 bytes key and
// value together, and otherwise answers InvalidArgument and changes nothing.
func FuzzContentLabels(f *testing.F) {
	_, cs, closeFn, err := newStore(context.Background(), fuzzDir(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { closeFn() })
	ctx := context.Background()
	one := write(f, cs, "one", map[string]string{"owner": "me"})
	baseline := storeContentState(f, cs)

	f.Add("k", "v")
	f.Add("", "v")
	f.Add("k\xff", "v")
	f.Fuzz(func(t *testing.T, key, value string) {
		_, err := cs.Update(ctx, content.Info{Digest: one, Labels: map[string]string{key: value}}, "labels."+key)
		valid := key != "" && utf8.ValidString(key) && utf8.ValidString(value) && len(key)+len(value) <= 4096
		switch {
		case err == nil:
			if !valid {
				t.Fatalf("label %q=%q taken", key, value)
			}
			info, err := cs.Info(ctx, one)
			if err != nil {
				t.Fatal(err)
			}
			if value != "" && info.Labels[key] != value {
				t.Fatalf("label %q=%q reads back as %q", key, value, info.Labels[key])
			}
			// Back as it was.
			if _, err := cs.Update(ctx, content.Info{Digest: one, Labels: map[string]string{"owner": "me"}}, "labels"); err != nil {
				t.Fatal(err)
			}
			// An update sets the blob's update time: the new baseline.
			baseline = storeContentState(t, cs)
			if !reflect.DeepEqual(baseline.Blobs[0].Labels, map[string]string{"owner": "me"}) {
				t.Fatalf("labels not restored: %v", baseline.Blobs[0].Labels)
			}
			return
		case errdefs.IsInvalidArgument(err):
			if valid {
				t.Fatalf("label %q=%q refused: %v", key, value, err)
			}
		default:
			t.Fatalf("label %q=%q: %v", key, value, err)
		}
		if after := storeContentState(t, cs); !reflect.DeepEqual(baseline, after) {
			t.Fatalf("label %q=%q left the store changed: %+v", key, value, after)
		}
	})
}
