package overlayutils

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
)

func TestMounts(t *testing.T) {
	opts := []string{"index=off"}
	for _, tc := range []struct {
		name string
		l    Layers
		want []mount.Mount
	}{
		{"active without parent", Layers{Upper: "/u", Work: "/w"},
			[]mount.Mount{{Type: "bind", Source: "/u", Options: []string{"rw", "rbind"}}}},
		{"view without parent", Layers{Upper: "/u", ReadOnly: true},
			[]mount.Mount{{Type: "bind", Source: "/u", Options: []string{"ro", "rbind"}}}},
		{"view of one layer", Layers{Upper: "/u", Lowers: []string{"/p"}, ReadOnly: true},
			[]mount.Mount{{Type: "bind", Source: "/p", Options: []string{"ro", "rbind"}}}},
		{"active on one layer", Layers{Upper: "/u", Work: "/w", Lowers: []string{"/p"}},
			[]mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"workdir=/w", "upperdir=/u", "lowerdir=/p", "index=off"}}}},
		{"view of two layers", Layers{Upper: "/u", Lowers: []string{"/p2", "/p1"}, ReadOnly: true},
			[]mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/p2:/p1", "index=off"}}}},
	} {
		got, err := Mounts(tc.l, opts)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
	lowers := make([]string, MaxLowerDirs+1)
	for i := range lowers {
		lowers[i] = "/l"
	}
	if _, err := Mounts(Layers{Upper: "/u", Work: "/w", Lowers: lowers}, opts); err == nil || !strings.Contains(err.Error(), "501 parent layers") {
		t.Errorf("too many layers: %v", err)
	}
}

func TestDefaultOptions(t *testing.T) {
	dir := t.TempDir()
	opts := DefaultOptions(dir, []string{"volatile"})
	if opts[0] != "volatile" {
		t.Errorf("extra option lost: %v", opts)
	}
	if supportsIndex() && !hasOption(opts, "index") {
		t.Errorf("index=off missing: %v", opts)
	}
	// An option the caller set is not added again.
	if got := DefaultOptions(dir, []string{"index=on"}); strings.Count(strings.Join(got, ","), "index=") != 1 {
		t.Errorf("index set twice: %v", got)
	}
}

func TestCheck(t *testing.T) {
	if err := Check(t.TempDir()); err != nil {
		t.Fatalf("overlay unusable on a temp dir: %v", err)
	}
	if err := Check("/nonexistent/dir"); err == nil || !strings.Contains(err.Error(), "/nonexistent/dir") {
		t.Errorf("check of a missing dir: %v", err)
	}
}

// TestCheckRemovesLeftovers: a check killed with its probe mounted leaves
// a mounted overlay in the root; the next Check undoes it.
func TestCheckRemovesLeftovers(t *testing.T) {
	root := t.TempDir()
	probe := filepath.Join(root, "multiple-lowerdir-check123456")
	for _, d := range []string{"lower1", "lower2", "upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(probe, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m := mount.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"lowerdir=" + filepath.Join(probe, "lower2") + ":" + filepath.Join(probe, "lower1"),
		"upperdir=" + filepath.Join(probe, "upper"), "workdir=" + filepath.Join(probe, "work"),
	}}
	merged := filepath.Join(probe, "merged")
	if err := m.Mount(merged); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mount.UnmountAll(merged, 0) })
	other := filepath.Join(root, "snapshots")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Check(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(probe); !os.IsNotExist(err) {
		t.Errorf("the killed check's directory is still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("Check removed what is not a check's: %v", err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), probe) {
		t.Error("the killed check's overlay is still mounted")
	}
}
