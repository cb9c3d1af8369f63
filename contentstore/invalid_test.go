package contentstore_test

import (
	"context"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// contentState is what a refused call must leave as it was: every blob
// with its labels, and every ingest.
type contentState struct {
	Blobs  []content.Info
	Ingest []content.Status
}

func storeContentState(t testing.TB, cs content.Store) contentState {
	t.Helper()
	ctx := context.Background()
	var st contentState
	if err := cs.Walk(ctx, func(info content.Info) error {
		st.Blobs = append(st.Blobs, info)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Slice(st.Blobs, func(i, j int) bool { return st.Blobs[i].Digest < st.Blobs[j].Digest })
	ingests, err := cs.ListStatuses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(ingests, func(i, j int) bool { return ingests[i].Ref < ingests[j].Ref })
	st.Ingest = ingests
	return st
}

func contentLabelOfSize(n int) map[string]string {
	const key = "size-test"
	return map[string]string{key: strings.Repeat("v", n-len(key))}
}

// TestContentInvalidArguments: labels over containerd's limit or not in
// UTF-8, empty label keys, empty or non-UTF-8 refs, malformed digests and
// filters are refused with InvalidArgument naming what is wrong, and no
// blob, label or ingest changes; at the limit, labels are taken.
func TestContentInvalidArguments(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	one := write(t, cs, "one", map[string]string{"owner": "me"})
	write(t, cs, "two", nil)
	w, err := cs.Writer(ctx, content.WithRef("pending"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("part"))
	w.Close()

	over := contentLabelOfSize(4097)
	emptyKey := map[string]string{"": "value"}
	badKey := map[string]string{"bad\xffkey": "value"}
	badValue := map[string]string{"bad-value": "\xed\xa0\x80"} // a UTF-16 surrogate
	badDigests := []digest.Digest{
		"",
		"sha256:abc",
		"nonsense",
		digest.Digest("sha256:" + strings.Repeat("G", 64)),
		digest.Digest("sha256:" + strings.Repeat("a", 65)),
		"unknown:abcd",
		digest.Digest("sha256:" + strings.Repeat("a", 63) + "\xff"),
	}

	type tc struct {
		name string
		call func() error
		want []string
	}
	var cases []tc
	for _, l := range []struct {
		name   string
		labels map[string]string
		want   string
	}{
		{"label over the limit", over, "4097 bytes"},
		{"empty label key", emptyKey, "label key must not be empty"},
		{"label key not UTF-8", badKey, "not valid UTF-8"},
		{"label value not UTF-8", badValue, "not valid UTF-8"},
	} {
		var key string
		for k := range l.labels {
			key = k
		}
		cases = append(cases,
			tc{"Update " + l.name, func() error {
				_, err := cs.Update(ctx, content.Info{Digest: one, Labels: l.labels}, "labels."+key)
				return err
			}, []string{l.want, one.String()}},
			tc{"Update all labels, " + l.name, func() error {
				_, err := cs.Update(ctx, content.Info{Digest: one, Labels: l.labels})
				return err
			}, []string{l.want}},
			tc{"Commit " + l.name, func() error {
				// Refused at commit; the writer stays usable, and its
				// ingest goes again with Abort.
				w, err := cs.Writer(ctx, content.WithRef("refused"))
				if err != nil {
					return err
				}
				defer cs.Abort(ctx, "refused")
				defer w.Close()
				w.Write([]byte("refused"))
				err = w.Commit(ctx, 7, "", content.WithLabels(l.labels))
				if st, serr := w.Status(); serr != nil || st.Offset != 7 {
					t.Errorf("writer after a refused commit: %+v %v", st, serr)
				}
				return err
			}, []string{l.want}},
		)
	}
	for _, ref := range []string{"", "\xff\xfe"} {
		cases = append(cases, tc{"Writer ref " + ref, func() error {
			w, err := cs.Writer(ctx, content.WithRef(ref))
			if err == nil {
				w.Close()
			}
			return err
		}, []string{"ref"}})
	}
	cases = append(cases,
		tc{"Status empty ref", func() error {
			_, err := cs.Status(ctx, "")
			return err
		}, []string{"ref must not be empty"}},
		tc{"Abort empty ref", func() error { return cs.Abort(ctx, "") }, []string{"ref must not be empty"}},
	)
	for _, d := range badDigests {
		cases = append(cases,
			tc{"Info " + string(d), func() error {
				_, err := cs.Info(ctx, d)
				return err
			}, []string{"digest"}},
			tc{"Update " + string(d), func() error {
				_, err := cs.Update(ctx, content.Info{Digest: d, Labels: map[string]string{"a": "b"}}, "labels.a")
				return err
			}, []string{"digest"}},
			tc{"Delete " + string(d), func() error { return cs.Delete(ctx, d) }, []string{"digest"}},
			tc{"ReaderAt " + string(d), func() error {
				ra, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: d})
				if err == nil {
					ra.Close()
				}
				return err
			}, []string{"digest"}},
		)
		if d == "" {
			continue // no expected digest: allowed
		}
		cases = append(cases,
			tc{"Writer expecting " + string(d), func() error {
				w, err := cs.Writer(ctx, content.WithRef("expecting"), content.WithDescriptor(ocispec.Descriptor{Digest: d}))
				if err == nil {
					w.Close()
					cs.Abort(ctx, "expecting")
				}
				return err
			}, []string{"digest"}},
			tc{"Commit expecting " + string(d), func() error {
				w, err := cs.Writer(ctx, content.WithRef("expecting"))
				if err != nil {
					return err
				}
				defer cs.Abort(ctx, "expecting")
				defer w.Close()
				w.Write([]byte("x"))
				return w.Commit(ctx, 1, d)
			}, []string{"digest"}},
		)
	}
	for _, f := range []string{`labels."unterminated`, `digest==`, `size~=[`, `,`, `ref=="a"||`, `labels.a==b,`} {
		cases = append(cases,
			tc{"Walk filter " + f, func() error {
				return cs.Walk(ctx, func(info content.Info) error {
					t.Errorf("filter %q matched %s", f, info.Digest)
					return nil
				}, f)
			}, []string{"filter"}},
			tc{"ListStatuses filter " + f, func() error {
				st, err := cs.ListStatuses(ctx, f)
				if len(st) > 0 {
					t.Errorf("filter %q listed %v", f, st)
				}
				return err
			}, []string{"filter"}},
		)
	}

	before := storeContentState(t, cs)
	for _, c := range cases {
		err := c.call()
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", c.name, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: message %q does not say %q", c.name, err, w)
			}
		}
		if after := storeContentState(t, cs); !reflect.DeepEqual(before, after) {
			t.Fatalf("%s changed the store:\nbefore %+v\nafter  %+v", c.name, before, after)
		}
	}

	// At the limit labels are taken.
	at := contentLabelOfSize(4096)
	info, err := cs.Update(ctx, content.Info{Digest: one, Labels: at}, "labels.size-test")
	if err != nil || info.Labels["size-test"] != at["size-test"] || info.Labels["owner"] != "me" {
		t.Fatalf("Update at the limit: %v %v", info.Labels, err)
	}
	data := "at the limit"
	if err := content.WriteBlob(ctx, cs, "at-limit", strings.NewReader(data),
		ocispec.Descriptor{Digest: digest.FromString(data), Size: int64(len(data))}, content.WithLabels(at)); err != nil {
		t.Fatalf("Commit at the limit: %v", err)
	}
	if info, err := cs.Info(ctx, digest.FromString(data)); err != nil || !reflect.DeepEqual(info.Labels, at) {
		t.Fatalf("labels committed at the limit: %v %v", info.Labels, err)
	}
}
