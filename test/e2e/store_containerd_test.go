package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

// containerdGC runs containerd's garbage collector now and waits for it:
// deleting a lease with --sync collects everything unreferenced.
func containerdGC(e *Env, ns string) {
	e.t.Helper()
	lease := strings.TrimSpace(e.MustCtr("-n", ns, "leases", "create"))
	lease = strings.Fields(lease)[0]
	e.MustCtr("-n", ns, "leases", "delete", "--sync", lease)
}

// TestStoreThroughContainerd: the store opened on containerd's socket
// makes its layers, images and containers as containerd's own: ctr lists
// them in the namespace, containerd's GC keeps them while the store holds
// them and collects them, down to the daemon's disk, once it lets go.
func TestStoreThroughContainerd(t *testing.T) {
	if baseline {
		t.Skip("the store needs cs-snapshotter")
	}
	e := NewEnv(t)
	e.ImportImage(imageArchive)
	const ns = "cs-store"
	open := func(ns string) storage.Store {
		s, err := storage.GetStore(storage.StoreOptions{
			GraphRoot:           filepath.Join(e.Dir, "store-graph"),
			RunRoot:             filepath.Join(e.Dir, "store-run"),
			ContainerdAddress:   e.CtrdSocket,
			ContainerdNamespace: ns,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Shutdown(true) })
		return s
	}
	s := open(ns)

	tarball := storeTar(t, map[string]string{"etc/store.txt": "made through containerd\n"})
	base, _, err := s.PutLayer("", "", []string{"ctrd-base"}, "", false, nil, bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetLayerBigData(base.ID, "note", strings.NewReader("kept")); err != nil {
		t.Fatal(err)
	}
	bigData := bytes.Repeat([]byte("config "), 200_000)
	img, err := s.CreateImage("", []string{"ctrd-image"}, base.ID, "", &storage.ImageOptions{
		BigData: []storage.ImageBigDataOption{{Key: "config", Data: bigData}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := s.CreateContainer("", []string{"ctrd-container"}, img.ID, "", "", &storage.ContainerOptions{
		BigData: []storage.ContainerBigDataOption{{Key: "state", Data: []byte("running")}},
	})
	if err != nil {
		t.Fatal(err)
	}

	// containerd lists them in the namespace.
	snapList := e.MustCtr("-n", ns, "snapshots", "--snapshotter", "cs", "ls")
	for _, key := range []string{base.ID, "cs.rw/" + ctr.LayerID} {
		if !strings.Contains(snapList, key) {
			t.Errorf("ctr -n %s snapshots ls lacks %s:\n%s", ns, key, snapList)
		}
	}
	blobs := e.MustCtr("-n", ns, "content", "ls")
	for _, d := range []digest.Digest{digest.FromBytes(bigData), digest.FromString("running"), digest.FromString("kept")} {
		if !strings.Contains(blobs, d.String()) {
			t.Errorf("ctr -n %s content ls lacks %s:\n%s", ns, d, blobs)
		}
	}

	// containerd's GC keeps all of it: each is a gc.root.
	containerdGC(e, ns)
	if got, err := s.ImageBigData(img.ID, "config"); err != nil || !bytes.Equal(got, bigData) {
		t.Errorf("image big data after containerd's GC: %d bytes, %v", len(got), err)
	}
	if got, err := s.ContainerBigData(ctr.ID, "state"); err != nil || string(got) != "running" {
		t.Errorf("container big data after containerd's GC: %q, %v", got, err)
	}
	u := storage.Uncompressed
	rc, err := s.Diff("", base.ID, &storage.DiffOptions{Compression: &u})
	if err != nil {
		t.Fatalf("diff after containerd's GC: %v", err)
	}
	var diff bytes.Buffer
	diff.ReadFrom(rc)
	rc.Close()
	if digest.FromBytes(diff.Bytes()) != digest.FromBytes(tarball) {
		t.Error("the layer no longer reproduces its diff after containerd's GC")
	}
	mnt, err := s.Mount(ctr.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "etc/store.txt")); err != nil || string(b) != "made through containerd\n" {
		t.Errorf("container mount: %q, %v", b, err)
	}
	if _, err := s.Unmount(ctr.ID, true); err != nil {
		t.Fatal(err)
	}

	// Names are unique through containerd too: the daemon claims layer
	// and container names, a lock image names.
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		go func() {
			_, err := s.CreateImage("", []string{"contested", fmt.Sprint("own-", i)}, "", "", nil)
			errs <- err
		}()
	}
	wins := 0
	for i := 0; i < 8; i++ {
		if err := <-errs; err == nil {
			wins++
		} else if !errors.Is(err, storage.ErrDuplicateName) {
			t.Errorf("image name race: %v", err)
		}
	}
	if wins != 1 {
		t.Errorf("%d images won the name", wins)
	}
	if _, err := s.CreateContainer("", []string{"ctrd-container"}, img.ID, "", "", nil); !errors.Is(err, storage.ErrDuplicateName) {
		t.Errorf("duplicate container name through containerd: %v", err)
	}

	// containerd's own image, seen from its namespace: read-only, and a
	// container of the store's can run on it.
	def := open("default")
	cimg, err := def.Image(image.Config.Digest.Encoded())
	if err != nil {
		t.Fatalf("containerd's image in namespace default: %v", err)
	}
	if !cimg.ReadOnly {
		t.Error("containerd's image is not read-only")
	}
	c2, err := def.CreateContainer("", nil, cimg.ID, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	mnt, err = def.Mount(c2.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, imagebuild.HelloPath)); err != nil || string(b) != imagebuild.HelloText {
		t.Errorf("container on containerd's image: %q, %v", b, err)
	}
	if _, err := def.Unmount(c2.ID, true); err != nil {
		t.Fatal(err)
	}
	if err := def.DeleteContainer(c2.ID); err != nil {
		t.Fatal(err)
	}

	// Letting go: once the store deletes them, containerd's GC removes
	// them from the daemon, files and blobs too.
	if err := s.Wipe(); err != nil {
		t.Fatal(err)
	}
	containerdGC(e, ns)
	client := e.DialDaemon()
	for key := range client.Snapshots(t) {
		if strings.Contains(key, base.ID) || strings.Contains(key, ctr.LayerID) || strings.Contains(key, c2.LayerID) {
			t.Errorf("after the store let go and containerd's GC ran, the daemon still has %s", key)
		}
	}
	for _, d := range []digest.Digest{digest.FromBytes(bigData), digest.FromString("running"), digest.FromString("kept")} {
		if client.BlobExists(t, d) {
			t.Errorf("after the store let go and containerd's GC ran, the daemon still has blob %s", d)
		}
	}
	if out := e.MustCtr("-n", ns, "snapshots", "--snapshotter", "cs", "ls"); strings.Contains(out, base.ID) {
		t.Errorf("ctr still lists the store's layer:\n%s", out)
	}
}
