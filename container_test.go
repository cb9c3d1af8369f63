package storage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// imageWithFile makes a one-layer image holding /etc/hello.
func imageWithFile(t *testing.T, s Store, names ...string) *Image {
	t.Helper()
	tarball := layerTar(t, []entry{
		{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644}, body: "hello from the image\n"},
	})
	l, _, err := s.PutLayer("", "", nil, "", false, nil, bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.CreateImage("", names, l.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestContainers(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		img := imageWithFile(t, s, "busybox:latest")
		c, err := s.CreateContainer("", []string{"web", "web-alias"}, "busybox:latest", "", "meta", &ContainerOptions{
			MountOpts: []string{"nodev"},
			Flags:     map[string]interface{}{"custom": "x"},
			BigData:   []ContainerBigDataOption{{Key: "config.json", Data: []byte(`{"a":1}`)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(c.ID) != 64 || c.ImageID != img.ID || c.Metadata != "meta" || !reflect.DeepEqual(c.Names, []string{"web", "web-alias"}) {
			t.Errorf("container record: %+v", c)
		}
		if c.Flags["custom"] != "x" || !reflect.DeepEqual(c.Flags[mountOptsFlag], []interface{}{"nodev"}) || c.Flags[mountLabelFlag] != "" {
			t.Errorf("flags: %v", c.Flags)
		}
		if want := digest.FromString(`{"a":1}`); c.BigDataDigests["config.json"] != want || c.BigDataSizes["config.json"] != 7 {
			t.Errorf("big data: %v %v", c.BigDataDigests, c.BigDataSizes)
		}

		// Its layer: a writeable child of the image's top layer.
		l, err := s.Layer(c.LayerID)
		if err != nil {
			t.Fatal(err)
		}
		if l.Parent != img.TopLayer {
			t.Errorf("container layer's parent %s, want the image's top layer %s", l.Parent, img.TopLayer)
		}
		for _, ref := range []string{c.ID, "web", "web-alias", c.ID[:12]} {
			got, err := s.Container(ref)
			if err != nil || got.ID != c.ID {
				t.Errorf("Container(%q) = %v, %v", ref, got, err)
			}
		}
		if got, err := s.ContainerByLayer(c.LayerID); err != nil || got.ID != c.ID {
			t.Errorf("ContainerByLayer = %v, %v", got, err)
		}
		if _, err := s.ContainerByLayer(img.TopLayer); !errors.Is(err, ErrContainerUnknown) {
			t.Errorf("ContainerByLayer of an image layer: %v", err)
		}

		// The whole-store methods find containers.
		if !s.Exists("web") {
			t.Error("Exists(web) = false")
		}
		if id, err := s.Lookup("web"); err != nil || id != c.ID {
			t.Errorf("Lookup(web) = %q, %v", id, err)
		}
		if err := s.AddNames(c.ID, []string{"front"}); err != nil {
			t.Fatal(err)
		}
		if err := s.RemoveNames(c.ID, []string{"web-alias"}); err != nil {
			t.Fatal(err)
		}
		if names, err := s.Names("web"); err != nil || !reflect.DeepEqual(names, []string{"front", "web"}) {
			t.Errorf("Names = %v, %v", names, err)
		}
		if err := s.SetMetadata("front", "new meta"); err != nil {
			t.Fatal(err)
		}
		if m, err := s.Metadata(c.ID); err != nil || m != "new meta" {
			t.Errorf("Metadata = %q, %v", m, err)
		}

		// Big data.
		big := bytes.Repeat([]byte("0123456789abcdef"), 8<<20/16)
		if err := s.SetContainerBigData(c.ID, "state", big); err != nil {
			t.Fatal(err)
		}
		if got, err := s.ContainerBigData("web", "state"); err != nil || !bytes.Equal(got, big) {
			t.Errorf("ContainerBigData: %d bytes, %v", len(got), err)
		}
		if n, err := s.ContainerBigDataSize(c.ID, "state"); err != nil || n != int64(len(big)) {
			t.Errorf("ContainerBigDataSize = %d, %v", n, err)
		}
		if d, err := s.ContainerBigDataDigest(c.ID, "state"); err != nil || d != digest.FromBytes(big) {
			t.Errorf("ContainerBigDataDigest = %s, %v", d, err)
		}
		if keys, err := s.ListContainerBigData(c.ID); err != nil || !reflect.DeepEqual(keys, []string{"config.json", "state"}) {
			t.Errorf("ListContainerBigData = %v, %v", keys, err)
		}
		if err := s.SetContainerBigData(c.ID, "state", []byte("small")); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.ContainerBigData(c.ID, "state"); string(got) != "small" {
			t.Errorf("replaced big data reads %q", got)
		}
		if _, err := s.ContainerBigData(c.ID, "nope"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing big data item: %v", err)
		}

		// Directories.
		if err := s.SetContainerDirectoryFile(c.ID, "sub/hostname", []byte("web\n")); err != nil {
			t.Fatal(err)
		}
		if got, err := s.FromContainerDirectory("web", "sub/hostname"); err != nil || string(got) != "web\n" {
			t.Errorf("FromContainerDirectory = %q, %v", got, err)
		}
		if err := s.SetContainerRunDirectoryFile(c.ID, "pidfile", []byte("42")); err != nil {
			t.Fatal(err)
		}
		if got, err := s.FromContainerRunDirectory(c.ID, "pidfile"); err != nil || string(got) != "42" {
			t.Errorf("FromContainerRunDirectory = %q, %v", got, err)
		}
		dir, _ := s.ContainerDirectory(c.ID)
		runDir, _ := s.ContainerRunDirectory(c.ID)
		if !strings.HasPrefix(dir, s.GraphRoot()) || !strings.HasPrefix(runDir, s.RunRoot()) {
			t.Errorf("directories %s, %s not under the graph and run roots", dir, runDir)
		}

		// Mounting the container mounts its layer read-write over the image.
		mnt, err := s.Mount(c.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(filepath.Join(mnt, "etc/hello")); err != nil || string(data) != "hello from the image\n" {
			t.Errorf("image file in the container: %q, %v", data, err)
		}
		if err := os.WriteFile(filepath.Join(mnt, "written"), make([]byte, 1000), 0o644); err != nil {
			t.Fatal(err)
		}
		if n, err := s.Mounted("web"); err != nil || n != 1 {
			t.Errorf("Mounted = %d, %v", n, err)
		}
		if _, err := s.Unmount(c.ID, false); err != nil {
			t.Fatal(err)
		}
		size, err := s.ContainerSize(c.ID)
		if err != nil {
			t.Fatal(err)
		}
		// 1000 written + 5 big data + 7 config.json + 4 hostname + 2 pid.
		if size != 1000+5+7+4+2 {
			t.Errorf("ContainerSize = %d", size)
		}
		changes, err := s.Changes("", c.LayerID)
		if err != nil || len(changes) != 1 || changes[0].Path != "/written" {
			t.Errorf("Changes = %v, %v", changes, err)
		}

		// Delete removes the layer, big data blobs and directories.
		before := blobCount(t, cs)
		if err := s.DeleteContainer("web"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Layer(c.LayerID); !errors.Is(err, ErrLayerUnknown) {
			t.Errorf("container layer after delete: %v", err)
		}
		if after := blobCount(t, cs); after != before-2 {
			t.Errorf("%d blobs before delete, %d after; want its two big data blobs gone", before, after)
		}
		for _, d := range []string{dir, runDir} {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s after delete: %v", d, err)
			}
		}
		if ctrs, _ := s.Containers(); len(ctrs) != 0 {
			t.Errorf("containers after delete: %v", ctrs)
		}
		// The image and its layer stay.
		if _, err := s.Image(img.ID); err != nil {
			t.Error(err)
		}
	})
}

func blobCount(t *testing.T, cs content.Store) int {
	t.Helper()
	n := 0
	if err := cs.Walk(testCtx, func(content.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestContainerWithoutImage(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		c, err := s.CreateContainer("my-id", nil, "", "my-layer", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.ID != "my-id" || c.LayerID != "my-layer" || c.ImageID != "" {
			t.Errorf("container %+v", c)
		}
		l, err := s.Layer("my-layer")
		if err != nil || l.Parent != "" {
			t.Errorf("layer %+v, %v", l, err)
		}
		// Delete works on a container ID, and also on its layer's ID.
		if err := s.Delete("my-layer"); err != nil {
			t.Fatal(err)
		}
		if s.Exists("my-id") || s.Exists("my-layer") {
			t.Error("container remains after Delete of its layer")
		}
	})
}

// TestContainerBadInput: each refusal names what was wrong and changes
// nothing.
func TestContainerBadInput(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		img := imageWithFile(t, s, "img")
		c, err := s.CreateContainer("", []string{"taken"}, img.ID, "", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		unchanged(t, s, cs, "unknown image", ErrImageUnknown, func() error {
			_, err := s.CreateContainer("", nil, "no-such-image", "", "", nil)
			return err
		})
		unchanged(t, s, cs, "duplicate name", ErrDuplicateName, func() error {
			_, err := s.CreateContainer("", []string{"taken"}, img.ID, "", "", nil)
			return err
		})
		unchanged(t, s, cs, "duplicate ID", ErrDuplicateID, func() error {
			_, err := s.CreateContainer(c.ID, nil, img.ID, "", "", nil)
			return err
		})
		unchanged(t, s, cs, "layer ID in use", ErrDuplicateID, func() error {
			_, err := s.CreateContainer("", nil, img.ID, img.TopLayer, "", nil)
			return err
		})
		unchanged(t, s, cs, "delete image used by container", ErrImageUsedByContainer, func() error {
			_, err := s.DeleteImage(img.ID, true)
			return err
		})
		unchanged(t, s, cs, "delete container's layer", ErrLayerUsedByContainer, func() error {
			return s.DeleteLayer(c.LayerID)
		})
		unchanged(t, s, cs, "delete layer under a container", ErrLayerHasChildren, func() error {
			return s.DeleteLayer(img.TopLayer)
		})
		unchanged(t, s, cs, "container layer as a parent", ErrParentIsContainer, func() error {
			_, err := s.CreateLayer("", c.LayerID, nil, "", false, nil)
			return err
		})
		unchanged(t, s, cs, "empty big data key", ErrInvalidBigDataName, func() error {
			return s.SetContainerBigData(c.ID, "", []byte("x"))
		})
		unchanged(t, s, cs, "big data key too long for a label", ErrInvalidBigDataName, func() error {
			return s.SetContainerBigData(c.ID, strings.Repeat("k", 5000), []byte("x"))
		})
		unchanged(t, s, cs, "big data of an unknown container", ErrContainerUnknown, func() error {
			return s.SetContainerBigData("nope", "k", []byte("x"))
		})
		unchanged(t, s, cs, "delete unknown container", ErrNotAContainer, func() error {
			return s.DeleteContainer("nope")
		})
		unchanged(t, s, cs, "bad container ID", ErrNotSupported, func() error {
			_, err := s.CreateContainer("a/b", nil, img.ID, "", "", nil)
			return err
		})
		before := storeState(t, s, cs)
		if _, err := s.CreateContainer("", nil, img.ID, "", strings.Repeat("m", 5000), nil); err == nil || !strings.Contains(err.Error(), "metadata") {
			t.Errorf("oversized metadata: %v", err)
		}
		if err := s.SetMetadata(c.ID, strings.Repeat("m", 5000)); err == nil || !strings.Contains(err.Error(), "metadata of container") {
			t.Errorf("oversized SetMetadata: %v", err)
		}
		if after := storeState(t, s, cs); after != before {
			t.Errorf("oversized metadata changed the store:\n%s\n%s", before, after)
		}
	})
}

func TestContainerNameRace(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		img := imageWithFile(t, s)
		wins := race(t, 16, ErrDuplicateName, func(i int) error {
			_, err := s.CreateContainer("", []string{"contested", fmt.Sprint("own-", i)}, img.ID, "", "", nil)
			return err
		})
		ctrs, _ := s.Containers()
		if wins != 1 || len(ctrs) != 1 {
			t.Fatalf("%d winners, %d containers", wins, len(ctrs))
		}
		layers, _ := s.Layers()
		if len(layers) != 2 {
			t.Errorf("%d layers, want the image's and the winner's", len(layers))
		}
		id := newID()
		wins = race(t, 16, ErrDuplicateID, func(int) error {
			_, err := s.CreateContainer(id, nil, img.ID, "", "", nil)
			return err
		})
		if ctrs, _ := s.Containers(); wins != 1 || len(ctrs) != 2 {
			t.Errorf("%d winners of the ID, %d containers", wins, len(ctrs))
		}
	})
}

// race runs fn as clients at once and counts the winners; every loser
// must fail with lose.
func race(t *testing.T, clients int, lose error, fn func(i int) error) int {
	t.Helper()
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		go func() { errs <- fn(i) }()
	}
	wins := 0
	for i := 0; i < clients; i++ {
		switch err := <-errs; {
		case err == nil:
			wins++
		case !errors.Is(err, lose):
			t.Errorf("unexpected error: %v (want %v)", err, lose)
		}
	}
	return wins
}

func TestWipeContainers(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		img := imageWithFile(t, s)
		for i := 0; i < 3; i++ {
			if _, err := s.CreateContainer("", nil, img.ID, "", "", &ContainerOptions{BigData: []ContainerBigDataOption{{Key: "k", Data: []byte(fmt.Sprint(i))}}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Wipe(); err != nil {
			t.Fatal(err)
		}
		ctrs, _ := s.Containers()
		layers, _ := s.Layers()
		imgs, _ := s.Images()
		if len(ctrs)+len(layers)+len(imgs) != 0 || blobCount(t, cs) != 0 {
			t.Errorf("after Wipe: %d containers, %d layers, %d images, %d blobs", len(ctrs), len(layers), len(imgs), blobCount(t, cs))
		}
	})
}

// TestDeleteAfterReboot: a layer mounted before a reboot (the run root
// wiped, the mount gone) deletes without a gc first.
func TestDeleteAfterReboot(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		img := imageWithFile(t, s)
		mnt, err := s.Mount(img.TopLayer, "")
		if err != nil {
			t.Fatal(err)
		}
		// The reboot: the mount and the run root's records are gone.
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(s.RunRoot()); err != nil {
			t.Fatal(err)
		}
		if n, err := s.Mounted(img.TopLayer); err != nil || n != 0 {
			t.Errorf("after the reboot: mounted %d, %v", n, err)
		}
		if _, err := s.DeleteImage(img.ID, true); err != nil {
			t.Fatalf("delete after a reboot: %v", err)
		}
		if layers, _ := s.Layers(); len(layers) != 0 {
			t.Errorf("layers left: %v", layers)
		}
		n := 0
		sn.Walk(testCtx, func(context.Context, snapshots.Info) error { n++; return nil })
		if n != 0 {
			t.Errorf("%d snapshots left (the stale mount view?)", n)
		}
	})
}

// TestMountOptions: an image mounts read-only with the options given, a
// container with its own mount options.
func TestMountOptions(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		img := imageWithFile(t, s, "img")
		mnt, err := s.MountImage("img", []string{"noexec", "nosuid"}, "")
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(mnt, "etc/hello")); err != nil || string(b) != "hello from the image\n" {
			t.Errorf("image mount: %q, %v", b, err)
		}
		if err := os.WriteFile(filepath.Join(mnt, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("write into an image mount: %v, want EROFS", err)
		}
		if opts := mountOptions(t, mnt); !opts["noexec"] || !opts["nosuid"] || !opts["ro"] {
			t.Errorf("image mount options %v", opts)
		}
		if still, err := s.UnmountImage(img.ID, false); err != nil || still {
			t.Errorf("UnmountImage = %v, %v", still, err)
		}
		c, err := s.CreateContainer("", nil, img.ID, "", "", &ContainerOptions{MountOpts: []string{"nodev"}})
		if err != nil {
			t.Fatal(err)
		}
		mnt, err = s.Mount(c.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		if opts := mountOptions(t, mnt); !opts["nodev"] || opts["ro"] {
			t.Errorf("container mount options %v", opts)
		}
		if _, err := s.Unmount(c.ID, true); err != nil {
			t.Fatal(err)
		}
	})
}

// mountOptions returns the options the kernel reports for the mount at
// path.
func mountOptions(t *testing.T, path string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == path {
			opts := map[string]bool{}
			for _, o := range strings.Split(f[5], ",") {
				opts[o] = true
			}
			return opts
		}
	}
	t.Fatalf("%s is not mounted", path)
	return nil
}
