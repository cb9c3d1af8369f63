package cslabels

import (
	"reflect"
	"sort"
	"testing"
)

func TestNames(t *testing.T) {
	labels := map[string]string{
		NameKey(Layer, "web"):              "0",
		NameKey(Layer, "web:v1"):           "1",
		NameKey(Container, "db"):           "0",
		Prefix + "layer-name.":             "empty name: ignored",
		Owned:                              "store",
		"containerd.io/snapshot/other.x":   "y",
		"containerd.io/gc.ref.content.l.0": "sha256:...",
	}
	got := Names(labels)
	sort.Strings(got[Layer])
	want := map[Kind][]string{Layer: {"web", "web:v1"}, Container: {"db"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	if Names(map[string]string{"a": "b"}) != nil {
		t.Error("names from unrelated labels")
	}
	if k, n, ok := ParseName(NameKey(Container, "a.b/c")); !ok || k != Container || n != "a.b/c" {
		t.Errorf("ParseName: %v %q %v", k, n, ok)
	}
}
