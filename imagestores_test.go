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
func TestImageStoresNotSupportedYet(t *testing.T) {
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
	if err := CheckImageStores(StoreOptions{ROImageStores: []string{""}, GraphDriverOptions: []string{"overlay.imagestore=", "overlay.mountopt=nodev"}}); err != nil {
		t.Error(err)
	}
}
