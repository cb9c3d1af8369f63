package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// roTreeHash hashes names, modes, sizes, mtimes, owners and contents under
// root (not atimes).
func roTreeHash(t *testing.T, root string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(h, "%s %v %d %d %d %d\n", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano(), st.Uid, st.Gid)
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(data)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// An additional read-only image store given as containers-storage's
// --storage-opt overlay.imagestore=PATH: listed, looked up and mounted;
// writes to it fail with containers-storage's read-only error and exit 1,
// and it does not change. Read directly, then through a daemon serving it.
func TestROImageStoreCLI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("must run as root")
	}
	ro := newCLIStore(t)
	base := createdID(t, ro.okIn(gzipped(t, baseTar(t)), "import-layer", "-r", "--name", "ro-base", ""), "ro-base")
	ro.ok("create-image", "-n", "ro/img:1", "ro-base")
	img := strings.TrimSpace(ro.ok("images", "-q"))
	ro.okIn([]byte(`{"schemaVersion":2}`), "set-image-data", "ro/img:1", "manifest")

	for _, via := range []string{"direct", "daemon"} {
		t.Run(via, func(t *testing.T) {
			if via == "daemon" {
				ro.with(t).startDaemon()
			}
			before := roTreeHash(t, ro.graph)
			w := newCLIStore(t).with(t)
			opt := []string{"--storage-opt", "overlay.imagestore=" + ro.graph}
			run := func(args ...string) result {
				t.Helper()
				return w.cs(nil, append(append([]string{}, opt...), args...)...)
			}
			ok := func(args ...string) string {
				t.Helper()
				r := run(args...)
				if r.code != 0 {
					t.Fatalf("%v: %s", args, r)
				}
				return r.stdout
			}
			if out := ok("images"); !strings.Contains(out, img) || !strings.Contains(out, "name: ro/img:1") {
				t.Errorf("images: %q", out)
			}
			if out := ok("layers", "-q"); out != base+"\n" {
				t.Errorf("layers -q: %q", out)
			}
			if out := ok("image", "ro/img:1"); !strings.Contains(out, img) {
				t.Errorf("image: %q", out)
			}
			if out := ok("get-image-data", "ro/img:1", "manifest"); out != `{"schemaVersion":2}` {
				t.Errorf("get-image-data: %q", out)
			}
			mp := strings.TrimSpace(ok("mount", "ro-base"))
			if !strings.HasPrefix(mp, w.run) {
				t.Errorf("mounted at %s", mp)
			}
			if entries, err := os.ReadDir(mp); err != nil || len(entries) == 0 {
				t.Errorf("mount shows %v %v", entries, err)
			}
			ok("unmount", "ro-base")
			// A container on the read-only image, in the writable root.
			ok("create-container", "-n", "c1", "ro/img:1")
			cp := strings.TrimSpace(ok("mount", "c1"))
			if err := os.WriteFile(filepath.Join(cp, "written"), []byte("x"), 0o644); err != nil {
				t.Errorf("write in the container: %v", err)
			}
			ok("unmount", "c1")
			ok("delete-container", "c1")
			// Without the option the writable store is empty.
			if r := w.cs(nil, "images", "-q"); r.code != 0 || r.stdout != "" {
				t.Errorf("images without the option: %s", r)
			}
			for _, args := range [][]string{
				{"delete-image", "ro/img:1"},
				{"add-names", "-n", "other", "ro-base"},
				{"delete-layer", "ro-base"},
				{"set-metadata", "-m", "x", "ro/img:1"},
			} {
				r := run(args...)
				if r.code != 1 || !strings.Contains(r.stderr, "called a write method on a read-only store") || !strings.Contains(r.stderr, ro.graph) {
					t.Errorf("%v: %s; want exit 1 and the read-only error", args, r)
				}
			}
			if after := roTreeHash(t, ro.graph); after != before {
				t.Error("the read-only store changed")
			}
		})
	}
}
