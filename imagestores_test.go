package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// An additional store that is not a store (here: missing) is refused,
// naming the option and the path, before anything is made on disk (the
// separate image store's bad input: imagestore_separate_test.go).
func TestBadAdditionalImageStores(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(o *StoreOptions)
		want string
		is   error
	}{
		{"ROImageStores", func(o *StoreOptions) { o.ROImageStores = []string{"", "/mnt/nfs/images/"} },
			"additional image store /mnt/nfs/images (storage.conf additionalimagestores): /mnt/nfs/images does not exist", metadata.ErrNotRoot},
		{"overlay.imagestore", func(o *StoreOptions) {
			o.GraphDriverOptions = []string{"overlay.mountopt=nodev", "overlay.imagestore=/a,/b"}
		}, "additional image store /a (storage option overlay.imagestore): /a does not exist", metadata.ErrNotRoot},
		{"overlay.additionalimagestores", func(o *StoreOptions) {
			o.GraphDriverOptions = []string{"overlay.additionalimagestores=,/c"}
		}, "additional image store /c (storage option overlay.additionalimagestores)", metadata.ErrNotRoot},
		{"additionalimagestore, no prefix", func(o *StoreOptions) {
			o.GraphDriverOptions = []string{"AdditionalImageStore=/d"}
		}, "additional image store /d (storage option AdditionalImageStore)", metadata.ErrNotRoot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			o := StoreOptions{GraphRoot: filepath.Join(dir, "graph"), RunRoot: filepath.Join(dir, "run")}
			tc.set(&o)
			s, err := GetStore(o)
			if err == nil {
				s.Shutdown(true)
				t.Fatal("GetStore took it")
			}
			if err.Error() != tc.want && !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("%q, want %q", err, tc.want)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("%v is not %v", err, tc.is)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("GetStore made %v", entries)
			}
		})
	}
	// Empty values name no store, as in containers/storage.
	empty := StoreOptions{ROImageStores: []string{""}, GraphDriverOptions: []string{"overlay.imagestore=", "overlay.mountopt=nodev"}}
	if err := CheckImageStores(empty); err != nil {
		t.Error(err)
	}
	if got := ImageStorePaths(empty); len(got) != 0 {
		t.Errorf("ImageStorePaths of empty values: %v", got)
	}
}

// ImageStorePaths names every store however the options name it, the
// separate one first, so serve can hand the same ones to the daemon.
func TestImageStorePaths(t *testing.T) {
	o := StoreOptions{
		ImageStore:         "/srv/images",
		ROImageStores:      []string{"/mnt/nfs/a/"},
		GraphDriverOptions: []string{"overlay.mountopt=nodev", "overlay.imagestore=/mnt/b,/mnt/c", "overlay.additionalimagestores=/mnt/d"},
	}
	want := []ImageStorePath{{"/srv/images", true}, {"/mnt/nfs/a", false}, {"/mnt/b", false}, {"/mnt/c", false}, {"/mnt/d", false}}
	got := ImageStorePaths(o)
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%d: got %v, want %v", i, got[i], want[i])
		}
	}
}
