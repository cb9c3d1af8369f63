package metadata

import (
	"strconv"
	"testing"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

func TestIndexedFilter(t *testing.T) {
	for _, c := range []struct {
		filters []string
		kind    cslabels.Kind
		name    string
		ok      bool
	}{
		{[]string{`labels."` + cslabels.NameKey(cslabels.Layer, "web:v1") + `"`}, cslabels.Layer, "web:v1", true},
		{[]string{`labels."` + cslabels.NameKey(cslabels.Container, "db") + `"`}, cslabels.Container, "db", true},
		{[]string{`labels."` + cslabels.ImageNamePrefix + "busybox:latest" + `"`}, cslabels.Image, "busybox:latest", true},
		{[]string{`labels."` + cslabels.ImageID + `"==` + strconv.Quote("abc")}, cslabels.ImageIDKind, "abc", true},
		// Anything else is an ordinary filter.
		{nil, "", "", false},
		{[]string{`labels."a"`, `labels."b"`}, "", "", false},
		{[]string{`labels."` + cslabels.ImageID + `"`}, "", "", false},
		{[]string{`labels."` + cslabels.ImageID + `"!=` + strconv.Quote("abc")}, "", "", false},
		{[]string{`labels."` + cslabels.NameKey(cslabels.Layer, "x") + `"=="1"`}, "", "", false},
		{[]string{`labels."other"`}, "", "", false},
		{[]string{`name=="x"`}, "", "", false},
		{[]string{`labels."` + cslabels.ImageID + `"==abc`}, "", "", false},
		{[]string{`labels."unterminated`}, "", "", false},
	} {
		kind, name, ok := IndexedFilter(c.filters)
		if kind != c.kind || name != c.name || ok != c.ok {
			t.Errorf("IndexedFilter(%q) = %q, %q, %v; want %q, %q, %v", c.filters, kind, name, ok, c.kind, c.name, c.ok)
		}
	}
}
