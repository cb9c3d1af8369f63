package storage

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// rootListing opens root alone (as GetStore opens any root) and lists its
// layers (ID and names), images and containers, sorted.
func rootListing(t *testing.T, root, run string) []string {
	t.Helper()
	s, err := GetStore(StoreOptions{GraphRoot: root, RunRoot: run})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	var out []string
	layers, err := s.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		out = append(out, "layer "+l.ID+" "+strings.Join(l.Names, ","))
	}
	images, err := s.Images()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range images {
		names := append([]string{}, i.Names...)
		sort.Strings(names)
		out = append(out, "image "+i.ID+" "+strings.Join(names, ",")+" top "+i.TopLayer)
	}
	ctrs, err := s.Containers()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ctrs {
		out = append(out, "container "+c.ID+" "+c.ImageID)
	}
	sort.Strings(out)
	return out
}

func has(list []string, prefix string) bool {
	for _, l := range list {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// findFile reports whether a file named name is under root.
func findFile(root, name string) bool {
	found := false
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == name && d.Type().IsRegular() {
			found = true
		}
		return nil
	})
	return found
}

func TestSeparateImageStore(t *testing.T) {
	requireRoot(t)
	defer func(w time.Duration) { lockWait = w }(lockWait)
	lockWait = 2 * time.Second
	for _, mode := range []string{"embedded", "image-store-daemon", "graph-daemon"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			graph, images, run := filepath.Join(dir, "graph"), filepath.Join(dir, "images"), filepath.Join(dir, "run")

			// The graph root's images, from before the image store.
			g, err := GetStore(StoreOptions{GraphRoot: graph, RunRoot: run})
			if err != nil {
				t.Fatal(err)
			}
			oldBase, _, err := g.PutLayer("", "", []string{"old-base"}, "", false, nil, bytes.NewReader(layerTar(t, baseEntries)))
			if err != nil {
				t.Fatal(err)
			}
			oldImg, err := g.CreateImage("", []string{"old:1", "shared:latest"}, oldBase.ID, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := g.Shutdown(false); err != nil {
				t.Fatal(err)
			}
			switch mode {
			case "image-store-daemon":
				serveRoot(t, images)
			case "graph-daemon":
				serveRoot(t, graph)
			}

			s, err := GetStore(StoreOptions{GraphRoot: graph, RunRoot: run, ImageStore: images})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if s != nil {
					s.Shutdown(true)
				}
			}()
			// New layers and images: the image store's.
			base, _, err := s.PutLayer("", "", []string{"new-base"}, "", false, nil, bytes.NewReader(gz(layerTar(t, baseEntries))))
			if err != nil {
				t.Fatal(err)
			}
			child, _, err := s.PutLayer("", base.ID, nil, "", false, nil, bytes.NewReader(layerTar(t, childEntries)))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.SetLayerBigData(base.ID, "note", strings.NewReader("n")); err != nil {
				t.Fatal(err)
			}
			manifest := []byte(`{"schemaVersion":2}`)
			img, err := s.CreateImage("", []string{"new:1", "shared:latest"}, child.ID, "meta", &ImageOptions{
				BigData: []ImageBigDataOption{{Key: "manifest", Data: manifest}}})
			if err != nil {
				t.Fatal(err)
			}
			if l, err := s.Layer(child.ID); err != nil || l.ReadOnly || l.Parent != base.ID {
				t.Errorf("layer %+v %v", l, err)
			}
			// A name in both resolves to the image store's.
			if id, err := s.Lookup("shared:latest"); err != nil || id != img.ID {
				t.Errorf("shared:latest is %q %v, want the image store's %s", id, err, img.ID)
			}
			if i, err := s.Image("shared:latest"); err != nil || i.ID != img.ID {
				t.Errorf("image shared:latest %+v %v", i, err)
			}
			if data, err := s.ImageBigData("new:1", "manifest"); err != nil || !bytes.Equal(data, manifest) {
				t.Errorf("manifest %q %v", data, err)
			}
			if list, err := s.Images(); err != nil || len(list) != 2 {
				t.Errorf("images %v %v", list, err)
			}
			// On the graph root's layer: the graph root's.
			onOld, err := s.CreateLayer("", "old-base", []string{"on-old"}, "", false, nil)
			if err != nil {
				t.Fatal(err)
			}
			oldImg2, err := s.CreateImage("", []string{"old:2"}, onOld.ID, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			// Writes to the graph root's existing image.
			if err := s.AddNames(oldImg.ID, []string{"old:renamed"}); err != nil {
				t.Error(err)
			}
			if err := s.SetMetadata("old:1", "old-meta"); err != nil {
				t.Error(err)
			}
			if err := s.SetImageBigData("old:1", "config", []byte("{}"), nil); err != nil {
				t.Error(err)
			}
			if err := s.AddNames(img.ID, []string{"new:renamed"}); err != nil {
				t.Error(err)
			}
			if _, err := s.CreateImage(oldImg.ID, nil, "", "", nil); !errors.Is(err, ErrDuplicateID) {
				t.Errorf("image with the graph root's image ID: %v", err)
			}

			// A container: the graph root's, on the image's mirrored chain.
			c, err := s.CreateContainer("", []string{"ctr1"}, "new:1", "", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.ImageID != img.ID {
				t.Errorf("container image %s, want %s", c.ImageID, img.ID)
			}
			if l, err := s.Layer(c.LayerID); err != nil || l.Parent != child.ID {
				t.Errorf("container layer %+v %v", l, err)
			}
			p, err := s.Mount(c.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			if data, err := os.ReadFile(filepath.Join(p, "etc/hello")); err != nil || string(data) != "changed\n" {
				t.Errorf("etc/hello: %q %v", data, err)
			}
			if err := os.WriteFile(filepath.Join(p, "written-by-ctr1"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Unmount(c.ID, false); err != nil {
				t.Fatal(err)
			}
			if !findFile(graph, "written-by-ctr1") || findFile(images, "written-by-ctr1") {
				t.Errorf("the container's write is not (only) in the graph root")
			}
			// An image layer of the image store mounts too.
			if p, err := s.Mount(base.ID, ""); err != nil {
				t.Error(err)
			} else if _, err := os.Stat(filepath.Join(p, "etc/gone")); err != nil {
				t.Error(err)
			} else if _, err := s.Unmount(base.ID, false); err != nil {
				t.Error(err)
			}

			// Deleting what the container stacks on is refused, and
			// changes nothing.
			before := func() []string {
				var out []string
				ls, _ := s.Layers()
				for _, l := range ls {
					out = append(out, l.ID+" "+l.Parent)
				}
				is, _ := s.Images()
				for _, i := range is {
					out = append(out, i.ID+" "+strings.Join(i.Names, ","))
				}
				return out
			}
			was := before()
			for name, err := range map[string]error{
				"DeleteLayer top":  s.DeleteLayer(child.ID),
				"DeleteLayer base": s.DeleteLayer(base.ID),
				"Delete layer":     s.Delete(child.ID),
			} {
				if !errors.Is(err, ErrLayerUsedByContainer) {
					t.Errorf("%s: %v, want ErrLayerUsedByContainer", name, err)
				}
			}
			if _, err := s.DeleteImage("new:1", true); !errors.Is(err, ErrImageUsedByContainer) {
				t.Errorf("DeleteImage: %v", err)
			}
			if err := s.Delete(img.ID); !errors.Is(err, ErrImageUsedByContainer) {
				t.Errorf("Delete image: %v", err)
			}
			if now := before(); strings.Join(now, "\n") != strings.Join(was, "\n") {
				t.Errorf("refused deletions changed the store:\n%v\n%v", was, now)
			}
			if _, err := s.Mount(c.ID, ""); err != nil {
				t.Error(err)
			} else if _, err := s.Unmount(c.ID, false); err != nil {
				t.Error(err)
			}
			st, err := s.Status()
			if err != nil || !has(pairStrings(st), "Image Store: "+images) {
				t.Errorf("status %v %v", st, err)
			}
			if _, err := s.Shutdown(false); err != nil {
				t.Fatal(err)
			}
			s = nil

			// Each root alone: where everything went.
			inImages, inGraph := rootListing(t, images, run), rootListing(t, graph, run)
			for _, want := range []string{"layer " + base.ID + " new-base", "layer " + child.ID, "image " + img.ID + " new:1,new:renamed,shared:latest"} {
				if !has(inImages, want) {
					t.Errorf("image store lacks %q: %v", want, inImages)
				}
			}
			for _, want := range []string{"layer " + oldBase.ID, "layer " + onOld.ID, "image " + oldImg.ID + " old:1,old:renamed,shared:latest", "image " + oldImg2.ID, "container " + c.ID + " " + img.ID} {
				if !has(inGraph, want) {
					t.Errorf("graph root lacks %q: %v", want, inGraph)
				}
			}
			if has(inGraph, "image "+img.ID) || has(inGraph, "layer "+child.ID) || has(inImages, "container") || has(inImages, "layer "+onOld.ID) {
				t.Errorf("items in the wrong root:\ngraph %v\nimages %v", inGraph, inImages)
			}

			// Wipe: both roots, containers first.
			s, err = GetStore(StoreOptions{GraphRoot: graph, RunRoot: run, ImageStore: images})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Wipe(); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Shutdown(false); err != nil {
				t.Fatal(err)
			}
			s = nil
			if l := rootListing(t, images, run); len(l) != 0 {
				t.Errorf("image store after Wipe: %v", l)
			}
			if l := rootListing(t, graph, run); len(l) != 0 {
				t.Errorf("graph root after Wipe: %v", l)
			}
		})
	}
}

func pairStrings(pairs [][2]string) []string {
	var out []string
	for _, p := range pairs {
		out = append(out, p[0]+": "+p[1])
	}
	return out
}

// Read-only image stores keep working with the image store: a container
// on a read-only store's image, a layer on a read-only store's layer (in
// the graph root), a new image in the image store.
func TestSeparateImageStoreWithROStores(t *testing.T) {
	requireRoot(t)
	f := makeROFixture(t)
	dir := t.TempDir()
	graph, images, run := filepath.Join(dir, "graph"), filepath.Join(dir, "images"), filepath.Join(dir, "run")
	s, err := GetStore(StoreOptions{GraphRoot: graph, RunRoot: run, ImageStore: images, ROImageStores: []string{f.root}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	if l, err := s.Layer("ro-base"); err != nil || !l.ReadOnly {
		t.Errorf("read-only layer %+v %v", l, err)
	}
	if err := s.SetMetadata(f.img1.ID, "x"); !errors.Is(err, ErrStoreIsReadOnly) {
		t.Errorf("write to a read-only image: %v", err)
	}
	c, err := s.CreateContainer("", nil, "ro/img:1", "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	on, err := s.CreateLayer("", f.child.ID, nil, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	mine, _, err := s.PutLayer("", "", nil, "", false, nil, bytes.NewReader(layerTar(t, baseEntries)))
	if err != nil {
		t.Fatal(err)
	}
	m := s.(*multiStore)
	if _, err := m.store.Layer(on.ID); err != nil {
		t.Errorf("layer on a read-only layer is not in the graph root: %v", err)
	}
	if _, err := m.img.st.Layer(mine.ID); err != nil {
		t.Errorf("new layer is not in the image store: %v", err)
	}
	if _, err := m.store.Container(c.ID); err != nil {
		t.Error(err)
	}
	if err := s.Wipe(); err != nil {
		t.Error(err)
	}
	if l, err := s.Layers(); err != nil || len(l) != 3 { // the read-only store's
		t.Errorf("after Wipe: %d %v", len(l), err)
	}
}

// A bad image store fails GetStore naming the path and the option, and
// changes neither root.
func TestSeparateImageStoreBadInput(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	graph, images, run := filepath.Join(dir, "graph"), filepath.Join(dir, "images"), filepath.Join(dir, "run")
	for _, root := range []string{graph, images} {
		s, err := GetStore(StoreOptions{GraphRoot: root, RunRoot: run})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.PutLayer("", "", []string{"in-" + filepath.Base(root)}, "", false, nil, bytes.NewReader(layerTar(t, baseEntries))); err != nil {
			t.Fatal(err)
		}
		s.Shutdown(false)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	beforeGraph, beforeImages := rootListing(t, graph, run), rootListing(t, images, run)
	for _, tc := range []struct {
		name string
		o    StoreOptions
		want string
		is   error
	}{
		{"graph root", StoreOptions{ImageStore: graph + "/"},
			"image store " + graph + " (--image-store, storage.conf imagestore): it is the store's graph root", ErrNotSupported},
		{"not creatable", StoreOptions{ImageStore: filepath.Join(file, "images")},
			"image store " + filepath.Join(file, "images") + " (--image-store, storage.conf imagestore): create root", nil},
		{"also read-only", StoreOptions{ImageStore: images, ROImageStores: []string{images}},
			"image store " + images + " (--image-store, storage.conf imagestore): it is also a read-only image store", ErrNotSupported},
		{"also overlay.imagestore", StoreOptions{ImageStore: images, GraphDriverOptions: []string{"overlay.imagestore=" + images}},
			"image store " + images + " (--image-store, storage.conf imagestore): it is also a read-only image store", ErrNotSupported},
		{"containerd", StoreOptions{ImageStore: images, ContainerdAddress: "/nonexistent.sock"},
			"image store " + images + " (--image-store, storage.conf imagestore): not supported by cs-snapshotter with a store opened through containerd (--containerd)", ErrNotSupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.GraphRoot, tc.o.RunRoot = graph, run
			s, err := GetStore(tc.o)
			if err == nil {
				s.Shutdown(true)
				t.Fatal("GetStore took it")
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("%q, want %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v is not %v", err, tc.is)
			}
			if got := rootListing(t, graph, run); strings.Join(got, "\n") != strings.Join(beforeGraph, "\n") {
				t.Errorf("graph root changed: %v, was %v", got, beforeGraph)
			}
			if got := rootListing(t, images, run); strings.Join(got, "\n") != strings.Join(beforeImages, "\n") {
				t.Errorf("image store changed: %v, was %v", got, beforeImages)
			}
		})
	}
}

// Check covers both roots; Repair leaves what a graph root container
// uses in the image store, and repairs it once the container is gone.
func TestSeparateImageStoreCheck(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	graph, images, run := filepath.Join(dir, "graph"), filepath.Join(dir, "images"), filepath.Join(dir, "run")
	s, err := GetStore(StoreOptions{GraphRoot: graph, RunRoot: run, ImageStore: images})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	base, _, err := s.PutLayer("", "", nil, "", false, nil, bytes.NewReader(layerTar(t, []entry{
		{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644}, body: "hello\n"},
	})))
	if err != nil {
		t.Fatal(err)
	}
	manifest := []byte(`{"schemaVersion":2,"check":"me"}`)
	img, err := s.CreateImage("", []string{"img:1"}, base.ID, "", &ImageOptions{BigData: []ImageBigDataOption{{Key: "manifest", Data: manifest}}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.CreateContainer("", nil, img.ID, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	clean := func(r CheckReport) bool {
		return len(r.Layers)+len(r.ROLayers)+len(r.Images)+len(r.ROImages)+len(r.Containers) == 0
	}
	if r, err := s.Check(CheckEverything()); err != nil || !clean(r) {
		t.Fatalf("check: %+v %v", r, err)
	}
	if err := os.Remove(filepath.Join(images, "content", "blobs", "sha256", strings.TrimPrefix(sha(manifest), "sha256:"))); err != nil {
		t.Fatal(err)
	}
	r, err := s.Check(CheckEverything())
	if err != nil || len(r.Images[img.ID]) == 0 || len(r.Containers[c.ID]) == 0 {
		t.Fatalf("check after damage: %+v %v", r, err)
	}
	if errs := s.Repair(r, &RepairOptions{}); len(errs) == 0 || !errors.Is(errs[0], ErrImageUsedByContainer) {
		t.Errorf("repair keeping containers: %v", errs)
	}
	if _, err := s.Image(img.ID); err != nil {
		t.Errorf("the image in use was repaired away: %v", err)
	}
	if errs := s.Repair(r, RepairEverything()); len(errs) != 0 {
		t.Errorf("repair: %v", errs)
	}
	if _, err := s.Image(img.ID); !errors.Is(err, ErrImageUnknown) {
		t.Errorf("damaged image after repair: %v", err)
	}
	if r, err := s.Check(CheckEverything()); err != nil || !clean(r) {
		t.Errorf("check after repair: %+v %v", r, err)
	}
}
