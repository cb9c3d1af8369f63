package metadata

import (
	"testing"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// Fuzz targets (seed corpus in testdata/fuzz/<target>/), e.g.
//
//	go test -run '^$' -fuzz '^FuzzParseFilters$' -fuzztime 60s ./metadata/

// FuzzValidateLabels: ValidateLabels never panics, takes exactly the labels
// with a non-empty key, key and value in UTF-8 and at most 4096 bytes
// together, and refuses the others with InvalidArgument.
func FuzzValidateLabels(f *testing.F) {
	f.Add("k", "v")
	f.Add("", "")
	f.Add("\xff", "v")
	f.Fuzz(func(t *testing.T, key, value string) {
		err := ValidateLabels(map[string]string{key: value, "other": "fine"})
		valid := key != "" && utf8.ValidString(key) && utf8.ValidString(value) && len(key)+len(value) <= 4096
		if valid != (err == nil) {
			t.Fatalf("ValidateLabels(%q=%q) = %v", key, value, err)
		}
		if err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("ValidateLabels(%q=%q) = %v, not InvalidArgument", key, value, err)
		}
	})
}

// FuzzParseFilters: ParseFilters never panics and refuses with
// InvalidArgument; a filter IndexedFilter answers from the name index means
// what containerd's parser makes of it: present exactly on an item holding
// that name (or image ID).
func FuzzParseFilters(f *testing.F) {
	f.Add(`labels."` + cslabels.NameKey(cslabels.Layer, "web") + `"`)
	f.Add(`labels."` + cslabels.ImageID + `"=="abc"`)
	f.Fuzz(func(t *testing.T, s string) {
		parsed, err := ParseFilters(s)
		if err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("ParseFilters(%q) = %v, not InvalidArgument", s, err)
		}
		kind, name, ok := IndexedFilter([]string{s})
		if !ok {
			return
		}
		if err != nil {
			// Refused before the index is asked: Walk parses first.
			return
		}
		var holding map[string]string
		switch kind {
		case cslabels.Image:
			holding = map[string]string{cslabels.ImageNamePrefix + name: "0"}
		case cslabels.ImageIDKind:
			holding = map[string]string{cslabels.ImageID: name}
		default:
			holding = map[string]string{cslabels.NameKey(kind, name): "0"}
		}
		if !parsed.Match(labelsAdaptor(holding)) {
			t.Fatalf("%q answered from the index as %s %q, but does not match an item holding it", s, kind, name)
		}
		if parsed.Match(labelsAdaptor(map[string]string{"unrelated": "x"})) {
			t.Fatalf("%q answered from the index as %s %q, but matches an item without it", s, kind, name)
		}
	})
}

func labelsAdaptor(labels map[string]string) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) < 2 || fieldpath[0] != "labels" {
			return "", false
		}
		key := fieldpath[1]
		for _, p := range fieldpath[2:] {
			key += "." + p
		}
		v, ok := labels[key]
		return v, ok
	})
}
