package storage

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// roFixture is a store made at a path to be used as an additional
// read-only image store.
type roFixture struct {
	root              string
	base, child       *Layer
	baseTar, childTar []byte
	img1, img2        *Image
	rw                *Layer // writeable, as containers-storage's create-layer makes
	img3              *Image // on rw
	manifest          []byte
	manifestDigest    digest.Digest
}

func makeROFixture(t *testing.T) roFixture {
	t.Helper()
	dir := t.TempDir()
	f := roFixture{root: filepath.Join(dir, "ro")}
	s, err := GetStore(StoreOptions{GraphRoot: f.root, RunRoot: filepath.Join(dir, "ro-run")})
	if err != nil {
		t.Fatal(err)
	}
	f.baseTar, f.childTar = layerTar(t, baseEntries), layerTar(t, childEntries)
	if f.base, _, err = s.PutLayer("", "", []string{"ro-base"}, "", false, nil, bytes.NewReader(gz(f.baseTar))); err != nil {
		t.Fatal(err)
	}
	if f.child, _, err = s.PutLayer("", f.base.ID, []string{"ro-child", "shared-layer"}, "", false, nil, bytes.NewReader(f.childTar)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLayerBigData(f.base.ID, "layer-note", strings.NewReader("base note")); err != nil {
		t.Fatal(err)
	}
	f.manifest = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	f.manifestDigest = digest.FromBytes(f.manifest)
	if f.img1, err = s.CreateImage("", []string{"ro/img:1", "shared:latest"}, f.child.ID, "ro-meta", &ImageOptions{
		BigData: []ImageBigDataOption{{Key: "manifest", Data: f.manifest}, {Key: "config", Data: []byte(`{"os":"linux"}`)}},
	}); err != nil {
		t.Fatal(err)
	}
	if f.img2, err = s.CreateImage("", []string{"ro/base:1"}, f.base.ID, "", nil); err != nil {
		t.Fatal(err)
	}
	if f.rw, err = s.CreateLayer("", f.base.ID, []string{"ro-rw"}, "", true, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApplyDiff(f.rw.ID, bytes.NewReader(layerTar(t, []entry{{hdr: tar.Header{Name: "rwfile", Typeflag: tar.TypeReg, Mode: 0o644}, body: "rw"}}))); err != nil {
		t.Fatal(err)
	}
	if f.img3, err = s.CreateImage("", []string{"ro/rw:1"}, f.rw.ID, "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Shutdown(false); err != nil {
		t.Fatal(err)
	}
	return f
}

// treeHash hashes every name, type, mode, size, mtime, owner and file
// content under root (not atimes: reading is allowed).
func treeHash(t *testing.T, root string) string {
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

// serveRoot runs a daemon on root in this process until the test ends.
func serveRoot(t *testing.T, root string) {
	t.Helper()
	cfg := config.Default()
	cfg.Root, cfg.RunRoot = root, filepath.Join(t.TempDir(), "daemon-run")
	addr := cfg.Address()
	d, err := daemon.Open(context.Background(), cfg, daemon.Holder{What: "test daemon", Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	l, err := daemon.Listen(addr, cfg.GRPC)
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	srv := d.NewServer()
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Stop()
		d.Close()
	})
}

func TestROImageStores(t *testing.T) {
	requireRoot(t)
	for _, writable := range []string{"embedded", "daemon"} {
		for _, ro := range []string{"direct", "daemon"} {
			t.Run(writable+"/ro-"+ro, func(t *testing.T) {
				f := makeROFixture(t)
				if ro == "daemon" {
					serveRoot(t, f.root)
				}
				before := treeHash(t, f.root)
				dir := t.TempDir()
				opts := StoreOptions{GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run"), ROImageStores: []string{f.root}}
				if writable == "daemon" {
					serveRoot(t, opts.GraphRoot)
				}
				s, err := GetStore(opts)
				if err != nil {
					t.Fatal(err)
				}
				m := s.(*multiStore)
				if m.Remote() != (writable == "daemon") {
					t.Fatalf("writable store remote %v", m.Remote())
				}
				if via := m.ro[0].via(); !strings.HasPrefix(via, ro) {
					t.Fatalf("read-only store read %s, want %s", via, ro)
				}
				checkROStore(t, s, f)
				if _, err := s.Shutdown(true); err != nil {
					t.Fatal(err)
				}
				if after := treeHash(t, f.root); after != before {
					t.Error("the read-only store changed")
				}
			})
		}
	}
}

func checkROStore(t *testing.T, s Store, f roFixture) {
	// The writable store's own, one name colliding with the read-only
	// store's.
	wl, _, err := s.PutLayer("", "", []string{"w-base", "shared-layer"}, "", false, nil, bytes.NewReader(layerTar(t, baseEntries)))
	if err != nil {
		t.Fatal(err)
	}
	wi, err := s.CreateImage("", []string{"shared:latest"}, wl.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("listings", func(t *testing.T) {
		layers, err := s.Layers()
		if err != nil {
			t.Fatal(err)
		}
		ro := map[string]bool{}
		for _, l := range layers {
			ro[l.ID] = l.ReadOnly
		}
		if len(layers) != 4 || !ro[f.base.ID] || !ro[f.child.ID] || !ro[f.rw.ID] || ro[wl.ID] {
			t.Errorf("layers %v", ro)
		}
		images, err := s.Images()
		if err != nil {
			t.Fatal(err)
		}
		ro = map[string]bool{}
		for _, i := range images {
			ro[i.ID] = i.ReadOnly
		}
		if len(images) != 4 || !ro[f.img1.ID] || !ro[f.img2.ID] || !ro[f.img3.ID] || ro[wi.ID] {
			t.Errorf("images %v", ro)
		}
	})

	t.Run("lookups", func(t *testing.T) {
		l, err := s.Layer("ro-child")
		if err != nil || l.ID != f.child.ID || !l.ReadOnly || l.Parent != f.base.ID {
			t.Errorf("Layer: %+v %v", l, err)
		}
		i, err := s.Image("ro/img:1")
		if err != nil || i.ID != f.img1.ID || !i.ReadOnly || i.TopLayer != f.child.ID {
			t.Errorf("Image: %+v %v", i, err)
		}
		// Collisions: the writable store's first.
		if id, err := s.Lookup("shared:latest"); err != nil || id != wi.ID {
			t.Errorf("Lookup(shared:latest) = %s, %v; want the writable image %s", id, err, wi.ID)
		}
		if l, err := s.Layer("shared-layer"); err != nil || l.ID != wl.ID || l.ReadOnly {
			t.Errorf("Layer(shared-layer) = %+v, %v", l, err)
		}
		if i, err := s.Image("shared:latest"); err != nil || i.ID != wi.ID || i.ReadOnly {
			t.Errorf("Image(shared:latest) = %+v, %v", i, err)
		}
		if id, err := s.Lookup("ro/base:1"); err != nil || id != f.img2.ID {
			t.Errorf("Lookup = %s, %v", id, err)
		}
		if !s.Exists(f.img1.ID) || !s.Exists(f.base.ID) || s.Exists("nothing-here") {
			t.Error("Exists")
		}
		if names, err := s.Names(f.img1.ID); err != nil || strings.Join(names, ",") != "ro/img:1,shared:latest" {
			t.Errorf("Names %v %v", names, err)
		}
		if md, err := s.Metadata(f.img1.ID); err != nil || md != "ro-meta" {
			t.Errorf("Metadata %q %v", md, err)
		}
		imgs, err := s.ImagesByDigest(f.manifestDigest)
		if err != nil || len(imgs) != 1 || imgs[0].ID != f.img1.ID || !imgs[0].ReadOnly {
			t.Errorf("ImagesByDigest %v %v", imgs, err)
		}
		imgs, err = s.ImagesByTopLayer(f.child.ID)
		if err != nil || len(imgs) != 1 || imgs[0].ID != f.img1.ID {
			t.Errorf("ImagesByTopLayer %v %v", imgs, err)
		}
		if _, err := s.ImagesByTopLayer("no-such-layer"); !errors.Is(err, ErrLayerUnknown) {
			t.Errorf("ImagesByTopLayer(unknown): %v", err)
		}
		ls, err := s.LayersByUncompressedDigest(f.base.UncompressedDigest)
		if err != nil || len(ls) != 2 { // the writable w-base has the same diff
			t.Errorf("LayersByUncompressedDigest %v %v", ls, err)
		}
	})

	t.Run("big data and sizes", func(t *testing.T) {
		data, err := s.ImageBigData(f.img1.ID, "manifest")
		if err != nil || !bytes.Equal(data, f.manifest) {
			t.Errorf("ImageBigData %q %v", data, err)
		}
		keys, err := s.ListImageBigData(f.img1.ID)
		sort.Strings(keys)
		if err != nil || strings.Join(keys, ",") != "config,manifest" {
			t.Errorf("ListImageBigData %v %v", keys, err)
		}
		if n, err := s.ImageBigDataSize(f.img1.ID, "manifest"); err != nil || n != int64(len(f.manifest)) {
			t.Errorf("ImageBigDataSize %d %v", n, err)
		}
		if d, err := s.ImageBigDataDigest(f.img1.ID, "manifest"); err != nil || d != f.manifestDigest {
			t.Errorf("ImageBigDataDigest %s %v", d, err)
		}
		rc, err := s.LayerBigData(f.base.ID, "layer-note")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if string(b) != "base note" {
			t.Errorf("LayerBigData %q", b)
		}
		if n, err := s.ImageSize(f.img1.ID); err != nil || n <= 0 {
			t.Errorf("ImageSize %d %v", n, err)
		}
		if n, err := s.LayerSize(f.base.ID); err != nil || n <= 0 {
			t.Errorf("LayerSize %d %v", n, err)
		}
	})

	t.Run("diff is bit-exact", func(t *testing.T) {
		none := Uncompressed
		for _, c := range []struct {
			id   string
			want []byte
		}{{f.base.ID, f.baseTar}, {f.child.ID, f.childTar}} {
			rc, err := s.Diff("", c.id, &DiffOptions{Compression: &none})
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, c.want) {
				t.Errorf("Diff(%s): %d bytes, want %d, %v", c.id, len(got), len(c.want), err)
			}
		}
		if n, err := s.DiffSize("", f.child.ID); err != nil || n <= 0 {
			t.Errorf("DiffSize %d %v", n, err)
		}
		changes, err := s.Changes("", f.child.ID)
		if err != nil || len(changes) == 0 {
			t.Errorf("Changes %v %v", changes, err)
		}
	})

	t.Run("mount", func(t *testing.T) {
		p, err := s.Mount(f.child.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(p, s.RunRoot()) {
			t.Errorf("mounted at %s, outside the run root", p)
		}
		if data, err := os.ReadFile(filepath.Join(p, "etc/hello")); err != nil || string(data) != "changed\n" {
			t.Errorf("etc/hello: %q %v", data, err)
		}
		if _, err := os.Stat(filepath.Join(p, "etc/gone")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("etc/gone: %v", err)
		}
		if err := os.WriteFile(filepath.Join(p, "x"), nil, 0o644); err == nil {
			t.Error("wrote into a read-only layer's mount")
		}
		if n, err := s.Mounted(f.child.ID); err != nil || n != 1 {
			t.Errorf("Mounted %d %v", n, err)
		}
		p2, err := s.MountImage(f.img2.ID, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(filepath.Join(p2, "etc/hello")); err != nil || string(data) != "hello\n" {
			t.Errorf("image etc/hello: %q %v", data, err)
		}
		// A writeable layer of the read-only store mounts read-only.
		rp, err := s.Mount(f.rw.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(filepath.Join(rp, "rwfile")); err != nil || string(data) != "rw" {
			t.Errorf("rwfile: %q %v", data, err)
		}
		if err := os.WriteFile(filepath.Join(rp, "x"), nil, 0o644); err == nil {
			t.Error("wrote into a read-only store's writeable layer")
		}
		if _, err := s.Unmount(f.rw.ID, false); err != nil {
			t.Error(err)
		}
		if still, err := s.UnmountImage(f.img2.ID, false); err != nil || still {
			t.Errorf("UnmountImage %v %v", still, err)
		}
		if still, err := s.Unmount(f.child.ID, false); err != nil || still {
			t.Errorf("Unmount %v %v", still, err)
		}
		if n, err := s.Mounted(f.child.ID); err != nil || n != 0 {
			t.Errorf("Mounted after Unmount %d %v", n, err)
		}
		if isMountPoint(p) {
			t.Error("still mounted")
		}
	})

	t.Run("writes refused", func(t *testing.T) {
		for name, call := range map[string]func() error{
			"AddNames (layer)": func() error { return s.AddNames(f.base.ID, []string{"x"}) },
			"SetMetadata":      func() error { return s.SetMetadata(f.img1.ID, "x") },
			"Delete":           func() error { return s.Delete(f.img2.ID) },
			"DeleteLayer":      func() error { return s.DeleteLayer(f.child.ID) },
			"DeleteImage":      func() error { _, err := s.DeleteImage(f.img1.ID, true); return err },
			"SetImageData":     func() error { return s.SetImageBigData(f.img1.ID, "k", []byte("v"), nil) },
			"SetLayerData":     func() error { return s.SetLayerBigData(f.base.ID, "k", strings.NewReader("v")) },
			"ApplyDiff":        func() error { _, err := s.ApplyDiff(f.child.ID, bytes.NewReader(f.childTar)); return err },
		} {
			err := call()
			if !errors.Is(err, ErrStoreIsReadOnly) || !strings.Contains(err.Error(), f.root) {
				t.Errorf("%s: %v, want ErrStoreIsReadOnly naming %s", name, err, f.root)
			}
		}
		// Still all there.
		if i, err := s.Image(f.img1.ID); err != nil || strings.Join(i.Names, ",") != "ro/img:1,shared:latest" || i.Metadata != "ro-meta" || !i.ReadOnly {
			t.Errorf("after refusals: %+v %v", i, err)
		}
	})

	t.Run("names pull the image up", func(t *testing.T) {
		// As containers/storage: changing a read-only image's names makes
		// it in the writable store, same ID and top layer (here with its
		// metadata and big data too); deleting that copy shows the
		// read-only one again.
		for _, tc := range []struct {
			name   string
			change func() error
			want   string
		}{
			{"AddNames", func() error { return s.AddNames(f.img2.ID, []string{"more"}) }, "more,ro/base:1"},
			{"SetNames", func() error { return s.SetNames(f.img2.ID, []string{"only"}) }, "only"},
			{"RemoveNames", func() error { return s.RemoveNames(f.img2.ID, []string{"ro/base:1"}) }, ""},
		} {
			if err := tc.change(); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			i, err := s.Image(f.img2.ID)
			if err != nil || i.ReadOnly || strings.Join(i.Names, ",") != tc.want || i.TopLayer != f.base.ID {
				t.Errorf("%s: %+v %v; want the writable store's copy named %q on %s", tc.name, i, err, tc.want, f.base.ID)
			}
			if _, err := s.DeleteImage(f.img2.ID, true); err != nil {
				t.Fatalf("%s: deleting the copy: %v", tc.name, err)
			}
			if i, err := s.Image(f.img2.ID); err != nil || !i.ReadOnly || strings.Join(i.Names, ",") != "ro/base:1" {
				t.Errorf("%s: after deleting the copy: %+v %v", tc.name, i, err)
			}
			if _, err := s.Layer(f.base.ID); err != nil {
				t.Errorf("%s: the read-only layer after deleting the copy: %v", tc.name, err)
			}
		}
		// A name that is not valid changes nothing: no copy is left in
		// the writable store, whether the name is refused before the copy
		// (empty) or by the copy's own name update (too long for a label).
		before, err := s.Images()
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"", strings.Repeat("n", 5000)} {
			if err := s.AddNames(f.img2.ID, []string{bad}); !errors.Is(err, ErrInvalidName) {
				t.Errorf("AddNames %.10q on a read-only image: %v, want ErrInvalidName", bad, err)
			}
			if i, err := s.Image(f.img2.ID); err != nil || !i.ReadOnly || strings.Join(i.Names, ",") != "ro/base:1" {
				t.Errorf("after the refused name %.10q: %+v %v, want the read-only image unchanged", bad, i, err)
			}
			if after, err := s.Images(); err != nil || len(after) != len(before) {
				t.Errorf("after the refused name %.10q: %d images %v, want %d", bad, len(after), err, len(before))
			}
		}
		// A name of the read-only image that an image of the writable
		// store holds stops the copy, as in containers/storage, and
		// changes nothing.
		holder, err := s.Image("shared:latest")
		if err != nil || holder.ReadOnly {
			t.Fatalf("the writable store's shared:latest: %+v %v", holder, err)
		}
		if err := s.AddNames(f.img1.ID, []string{"copied"}); !errors.Is(err, ErrDuplicateName) {
			t.Errorf("pulling up an image whose name the writable store holds: %v, want ErrDuplicateName", err)
		}
		if i, err := s.Image(f.img1.ID); err != nil || !i.ReadOnly {
			t.Errorf("after the refused pull-up: %+v %v", i, err)
		}
		if _, err := s.DeleteImage(holder.ID, true); err != nil {
			t.Fatal(err)
		}
		// The copy has the big data; a name another image of the writable
		// store has moves to it, as names do.
		if _, err := s.CreateImage("", []string{"taken"}, "", "", nil); err != nil {
			t.Fatal(err)
		}
		roSize, err := s.ImageSize(f.img1.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.AddNames(f.img1.ID, []string{"copied", "taken"}); err != nil {
			t.Fatal(err)
		}
		if b, err := s.ImageBigData("copied", "manifest"); err != nil || !bytes.Equal(b, f.manifest) {
			t.Errorf("the copy's manifest: %q %v", b, err)
		}
		if i, err := s.Image("taken"); err != nil || i.ID != f.img1.ID || i.Metadata != "ro-meta" || i.Digest != f.manifestDigest ||
			strings.Join(i.Names, ",") != "copied,taken,ro/img:1,shared:latest" {
			t.Errorf("the copy: %+v %v", i, err)
		}
		// The copy is whole: its size counts the read-only layers, it
		// mounts, and Check finds nothing wrong.
		if n, err := s.ImageSize("copied"); err != nil || n != roSize {
			t.Errorf("ImageSize of the copy: %d %v, want the read-only image's %d", n, err, roSize)
		}
		if p, err := s.MountImage("copied", nil, ""); err != nil {
			t.Errorf("MountImage of the copy: %v", err)
		} else if entries, _ := os.ReadDir(p); len(entries) == 0 {
			t.Errorf("the copy mounted at %s shows nothing", p)
		}
		if _, err := s.UnmountImage("copied", true); err != nil {
			t.Errorf("UnmountImage of the copy: %v", err)
		}
		if r, err := s.Check(CheckEverything()); err != nil || len(r.Images) != 0 || len(r.Layers) != 0 {
			t.Errorf("Check with the copy: %+v %v", r, err)
		}
		if _, err := s.DeleteImage("copied", true); err != nil {
			t.Fatal(err)
		}
		if i, err := s.Image(f.img1.ID); err != nil || !i.ReadOnly {
			t.Errorf("after deleting the copy: %+v %v", i, err)
		}
	})

	t.Run("image on a read-only layer", func(t *testing.T) {
		img, err := s.CreateImage("", []string{"on-ro"}, f.child.ID, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if img.ReadOnly || img.TopLayer != f.child.ID {
			t.Errorf("image on a read-only layer: %+v", img)
		}
		// And one on a writable layer whose parent is read-only: both
		// count the read-only layers, and Check finds nothing wrong.
		upper, _, err := s.PutLayer("", f.child.ID, nil, "", false, nil, bytes.NewReader(layerTar(t, []entry{{hdr: tar.Header{Name: "upper", Typeflag: tar.TypeReg, Mode: 0o644}, body: "up"}})))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateImage("", []string{"on-upper"}, upper.ID, "", nil); err != nil {
			t.Fatal(err)
		}
		onRO, err := s.ImageSize("on-ro")
		if err != nil || onRO <= 0 {
			t.Errorf("ImageSize of the image on a read-only layer: %d %v", onRO, err)
		}
		if n, err := s.ImageSize("on-upper"); err != nil || n != onRO+upper.UncompressedSize {
			t.Errorf("ImageSize of the image above a read-only layer: %d %v, want %d", n, err, onRO+upper.UncompressedSize)
		}
		if r, err := s.Check(CheckEverything()); err != nil || len(r.Images) != 0 || len(r.Layers) != 0 {
			t.Errorf("Check with images on read-only layers: %+v %v", r, err)
		}
		if _, err := s.DeleteImage("on-upper", true); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateContainer("", []string{"on-ro-c"}, "on-ro", "", "", nil); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteContainer("on-ro-c"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.DeleteImage("on-ro", true); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Layer(f.child.ID); err != nil {
			t.Errorf("the read-only layer after deleting the image: %v", err)
		}
	})
}

// Layers and containers on a read-only store's layers: made in the
// writable root on mirrors of the read-only chain, removed with them.
func TestROImageStoreBuildOn(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{"embedded/ro-direct", "embedded/ro-daemon", "daemon/ro-direct"} {
		t.Run(mode, func(t *testing.T) {
			f := makeROFixture(t)
			if strings.HasSuffix(mode, "ro-daemon") {
				serveRoot(t, f.root)
			}
			before := treeHash(t, f.root)
			dir := t.TempDir()
			opts := StoreOptions{GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run"), ROImageStores: []string{f.root}}
			if strings.HasPrefix(mode, "daemon") {
				serveRoot(t, opts.GraphRoot)
			}
			s, err := GetStore(opts)
			if err != nil {
				t.Fatal(err)
			}
			m := s.(*multiStore)
			mirrors := func() []string {
				var keys []string
				m.store.sn.Walk(m.ctx, func(_ context.Context, info snapshots.Info) error {
					if strings.HasPrefix(info.Name, roPrefix) {
						keys = append(keys, info.Name)
					}
					return nil
				})
				return keys
			}

			c, err := s.CreateContainer("", []string{"ctr1"}, "ro/img:1", "", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.ImageID != f.img1.ID {
				t.Errorf("container image %s, want %s", c.ImageID, f.img1.ID)
			}
			if l, err := s.Layer(c.LayerID); err != nil || l.Parent != f.child.ID || l.ReadOnly {
				t.Errorf("container layer %+v %v", l, err)
			}
			if got := mirrors(); len(got) != 2 {
				t.Errorf("mirrors %v, want the 2 layers of the chain", got)
			}
			p, err := s.Mount(c.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			if data, err := os.ReadFile(filepath.Join(p, "etc/hello")); err != nil || string(data) != "changed\n" {
				t.Errorf("etc/hello: %q %v", data, err)
			}
			if _, err := os.Stat(filepath.Join(p, "etc/gone")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("etc/gone: %v", err)
			}
			if err := os.WriteFile(filepath.Join(p, "etc/hello"), []byte("mine\n"), 0o644); err != nil {
				t.Errorf("write in the container: %v", err)
			}
			if _, err := s.Unmount(c.ID, false); err != nil {
				t.Fatal(err)
			}

			// On an image whose top layer is a writeable layer of the
			// read-only store (as containers-storage's CLI leaves it).
			c3, err := s.CreateContainer("", nil, "ro/rw:1", "", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			p3, err := s.Mount(c3.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			if data, err := os.ReadFile(filepath.Join(p3, "rwfile")); err != nil || string(data) != "rw" {
				t.Errorf("rwfile in the container: %q %v", data, err)
			}
			if err := os.WriteFile(filepath.Join(p3, "rwfile"), []byte("changed"), 0o644); err != nil {
				t.Error(err)
			}
			s.Unmount(c3.ID, true)
			if got := mirrors(); len(got) != 3 {
				t.Errorf("mirrors %v, want base, child and rw", got)
			}

			// A second container and a layer share the mirrors.
			c2, err := s.CreateContainer("", nil, f.img2.ID, "", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			top := layerTar(t, []entry{{hdr: tar.Header{Name: "added", Typeflag: tar.TypeReg, Mode: 0o644}, body: "on ro"}})
			l, _, err := s.PutLayer("", "ro-child", []string{"on-ro"}, "", false, nil, bytes.NewReader(top))
			if err != nil {
				t.Fatal(err)
			}
			if l.Parent != f.child.ID || l.ReadOnly {
				t.Errorf("layer on a read-only parent: %+v", l)
			}
			rc, err := s.Diff("", l.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(got, top) {
				t.Errorf("Diff of the layer on a read-only parent: %d bytes, want %d", len(got), len(top))
			}
			lp, err := s.Mount(l.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			for file, want := range map[string]string{"added": "on ro", "etc/hello": "changed\n", "new": "setuid"} {
				if data, err := os.ReadFile(filepath.Join(lp, file)); err != nil || string(data) != want {
					t.Errorf("%s: %q %v", file, data, err)
				}
			}
			s.Unmount(l.ID, true)
			if got := mirrors(); len(got) != 3 {
				t.Errorf("mirrors %v, want 3", got)
			}
			if layers, err := s.Layers(); err != nil || len(layers) != 7 { // 3 read-only, 1 on them, 3 containers'
				t.Errorf("layers: %d %v", len(layers), err)
			}

			// Check finds nothing wrong (a container's image may be a
			// read-only store's).
			if rep, err := s.Check(CheckEverything()); err != nil || len(rep.Layers)+len(rep.Images)+len(rep.Containers)+len(rep.ROLayers)+len(rep.ROImages) != 0 {
				t.Errorf("Check: %+v %v", rep, err)
			}

			// Removed with what stacks on them; the read-only store intact.
			if err := s.DeleteContainer(c.ID); err != nil {
				t.Fatal(err)
			}
			if got := mirrors(); len(got) != 3 {
				t.Errorf("mirrors after one container went: %v", got)
			}
			if err := s.DeleteLayer(l.ID); err != nil {
				t.Fatal(err)
			}
			if err := s.Wipe(); err != nil { // c2
				t.Fatal(err)
			}
			if _, err := s.Container(c2.ID); !errors.Is(err, ErrContainerUnknown) {
				t.Errorf("container after Wipe: %v", err)
			}
			if imgs, err := s.Images(); err != nil || len(imgs) != 3 {
				t.Errorf("images after Wipe: %d %v", len(imgs), err)
			}
			if got := mirrors(); len(got) != 0 {
				t.Errorf("mirrors left: %v", got)
			}
			if _, err := s.Shutdown(true); err != nil {
				t.Fatal(err)
			}
			if treeHash(t, f.root) != before {
				t.Error("the read-only store changed")
			}
		})
	}
}

// Opening an additional store takes neither its root lock nor anything
// else a writer would wait for: a process holding the root's lock file
// does not stop it.
func TestROImageStoreLockHeld(t *testing.T) {
	requireRoot(t)
	f := makeROFixture(t)
	before := treeHash(t, f.root)
	lf, err := os.OpenFile(filepath.Join(f.root, "lock"), os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s, err := GetStore(StoreOptions{GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run"), ROImageStores: []string{f.root}})
	if err != nil {
		t.Fatal(err)
	}
	if imgs, err := s.Images(); err != nil || len(imgs) != 3 {
		t.Errorf("images %v %v", imgs, err)
	}
	s.Shutdown(true)
	// An in-process store elsewhere holds the root (and its database):
	// opening waits for it, and names it when it does not let go.
	if after := treeHash(t, f.root); after != before {
		t.Error("the read-only store changed")
	}
	unix.Flock(int(lf.Fd()), unix.LOCK_UN)
	holder, err := GetStore(StoreOptions{GraphRoot: f.root, RunRoot: filepath.Join(dir, "holder-run")})
	if err != nil {
		t.Fatal(err)
	}
	old := lockWait
	lockWait = 3 * time.Second
	defer func() { lockWait = old }()
	_, err = GetStore(StoreOptions{GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run"), ROImageStores: []string{f.root}})
	if err == nil || !strings.Contains(err.Error(), f.root) || !strings.Contains(err.Error(), "in use by") {
		t.Errorf("held by an in-process store: %v", err)
	}
	go func() {
		time.Sleep(time.Second)
		holder.Shutdown(true)
	}()
	s, err = GetStore(StoreOptions{GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run"), ROImageStores: []string{f.root}})
	if err != nil {
		t.Fatalf("after the holder let go: %v", err)
	}
	s.Shutdown(true)
}

// Bad additional stores fail GetStore naming the path and the option, and
// change neither the writable store nor the bad one.
func TestROImageStoreBadInput(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	opts := StoreOptions{GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run")}
	s, err := GetStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateImage("", []string{"mine"}, "", "", nil); err != nil {
		t.Fatal(err)
	}
	s.Shutdown(true)

	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	notDB := filepath.Join(dir, "notdb")
	for _, d := range []string{"snapshots", "content/blobs"} {
		os.MkdirAll(filepath.Join(notDB, d), 0o755)
	}
	os.WriteFile(filepath.Join(notDB, metadata.FileName), []byte("not a database"), 0o600)
	newer := makeROFixture(t).root
	db, err := bolt.Open(filepath.Join(newer, metadata.FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("cs.future.v9")); return err }); err != nil {
		t.Fatal(err)
	}
	db.Close()

	for _, tc := range []struct {
		name, path, want string
		is               error
	}{
		{"missing", filepath.Join(dir, "nowhere"), "does not exist", metadata.ErrNotRoot},
		{"not a root", empty, "has no snapshots directory", metadata.ErrNotRoot},
		{"not a database", notDB, "", metadata.ErrNotRoot},
		{"newer format", newer, `"cs.future.v9"`, metadata.ErrNewerFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wBefore, roBefore := treeHash(t, opts.GraphRoot), ""
			if _, err := os.Stat(tc.path); err == nil {
				roBefore = treeHash(t, tc.path)
			}
			o := opts
			o.GraphDriverOptions = []string{"overlay.imagestore=" + tc.path}
			s, err := GetStore(o)
			if err == nil {
				s.Shutdown(true)
				t.Fatal("GetStore took it")
			}
			msg := err.Error()
			if !strings.Contains(msg, "additional image store "+tc.path+" (storage option overlay.imagestore)") || !strings.Contains(msg, tc.want) || !errors.Is(err, tc.is) {
				t.Errorf("%v", err)
			}
			if treeHash(t, opts.GraphRoot) != wBefore {
				t.Error("the writable store changed")
			}
			if roBefore != "" && treeHash(t, tc.path) != roBefore {
				t.Error("the bad store changed")
			}
		})
	}
	// The writable store still works.
	s, err = GetStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Image("mine"); err != nil {
		t.Error(err)
	}
	s.Shutdown(true)
	// Containerd mode keeps refusing.
	o := opts
	o.ContainerdAddress, o.ROImageStores = "/run/containerd/containerd.sock", []string{newer}
	if _, err := GetStore(o); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "--containerd") {
		t.Errorf("containerd mode: %v", err)
	}
}

// TestROImageStoreTiming measures listing and looking up images in a store
// of 1,000 images read as an additional read-only store (directly and
// through its daemon) against the same root opened as the writable store.
// Set CS_RO_TIMING=1 to run it.
func TestROImageStoreTiming(t *testing.T) {
	if os.Getenv("CS_RO_TIMING") == "" {
		t.Skip("set CS_RO_TIMING=1")
	}
	requireRoot(t)
	const n = 1000
	dir := t.TempDir()
	root := filepath.Join(dir, "ro")
	s, err := GetStore(StoreOptions{GraphRoot: root, RunRoot: filepath.Join(dir, "ro-run")})
	if err != nil {
		t.Fatal(err)
	}
	base, _, err := s.PutLayer("", "", []string{"base"}, "", false, nil, bytes.NewReader(layerTar(t, baseEntries)))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if _, err := s.CreateImage("", []string{fmt.Sprintf("img:%d", i)}, base.ID, "", &ImageOptions{
			BigData: []ImageBigDataOption{{Key: "manifest", Data: []byte(fmt.Sprintf(`{"n":%d}`, i))}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	s.Shutdown(true)

	measure := func(name string, s Store) {
		start := time.Now()
		imgs, err := s.Images()
		list := time.Since(start)
		if err != nil || len(imgs) != n {
			t.Fatalf("%s: %d images, %v", name, len(imgs), err)
		}
		start = time.Now()
		for i := 0; i < 100; i++ {
			if _, err := s.Image(fmt.Sprintf("img:%d", i*7)); err != nil {
				t.Fatal(err)
			}
		}
		lookup := time.Since(start) / 100
		start = time.Now()
		p, err := s.MountImage("img:500", nil, "")
		if err != nil {
			t.Fatal(err)
		}
		mnt := time.Since(start)
		s.UnmountImage("img:500", true)
		start = time.Now()
		c, err := s.CreateContainer("", nil, "img:600", "", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Mount(c.ID, ""); err != nil {
			t.Fatal(err)
		}
		ctr := time.Since(start)
		s.Unmount(c.ID, true)
		s.DeleteContainer(c.ID)
		t.Logf("%-28s Images() of %d: %v; Image(name): %v; MountImage: %v; CreateContainer+Mount: %v (%s)", name, n, list, lookup, mnt, ctr, filepath.Base(p))
	}
	w, err := GetStore(StoreOptions{GraphRoot: root, RunRoot: filepath.Join(dir, "w-run")})
	if err != nil {
		t.Fatal(err)
	}
	measure("writable (embedded)", w)
	w.Shutdown(true)
	for _, via := range []string{"direct", "daemon"} {
		if via == "daemon" {
			serveRoot(t, root)
		}
		other := filepath.Join(dir, "w-"+via)
		s, err := GetStore(StoreOptions{GraphRoot: other, RunRoot: other + "-run", ROImageStores: []string{root}})
		if err != nil {
			t.Fatal(err)
		}
		measure("read-only store, "+via, s)
		s.Shutdown(true)
	}
}
