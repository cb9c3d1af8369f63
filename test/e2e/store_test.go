package e2e

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

func storeTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	return buf.Bytes()
}

// TestStoreAndContainerd: the store, opened on the root a running daemon
// serves, sees containerd's unpacked layers (and diffs them from their
// files), and the layers and blobs it makes itself survive containerd's
// garbage collection, which removes everything containerd does not know.
func TestStoreAndContainerd(t *testing.T) {
	if baseline {
		t.Skip("the store needs cs-snapshotter")
	}
	e := NewEnv(t)
	e.ImportImage(imageArchive)

	s, err := storage.GetStore(storage.StoreOptions{GraphRoot: e.CSRoot, RunRoot: filepath.Join(e.Dir, "store-run")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)

	// The image containerd imported is the store's too, read-only: ID =
	// config digest hex, top layer = the snapshot of its last chain ID,
	// its manifest and config readable as big data.
	imageID := image.Config.Digest.Encoded()
	img, err := s.Image(imageID)
	if err != nil {
		imgs, _ := s.Images()
		t.Fatalf("the store does not list containerd's image %s: %v (images %+v)", imageID, err, imgs)
	}
	if !img.ReadOnly || img.Digest != image.Manifest.Digest {
		t.Errorf("containerd's image: read-only %v, digest %s (manifest %s)", img.ReadOnly, img.Digest, image.Manifest.Digest)
	}
	if top, err := s.Layer(img.TopLayer); err != nil || len(top.Names) == 0 || !strings.HasSuffix(top.Names[0], "/"+image.ChainIDs()[len(image.Layers)-1].String()) {
		t.Errorf("containerd's image's top layer %s: %+v, %v", img.TopLayer, top, err)
	}
	for key, want := range map[string][]byte{
		"manifest": image.Blobs[image.Manifest.Digest],
		"manifest-" + image.Manifest.Digest.String(): image.Blobs[image.Manifest.Digest],
		image.Config.Digest.String():                 image.Blobs[image.Config.Digest],
	} {
		if got, err := s.ImageBigData(imageID, key); err != nil || !bytes.Equal(got, want) {
			t.Errorf("big data %q of containerd's image: %d bytes, %v; want %d bytes", key, len(got), err, len(want))
		}
	}
	if got, err := s.ImagesByDigest(image.Manifest.Digest); err != nil || len(got) != 1 || got[0].ID != imageID {
		t.Errorf("ImagesByDigest(%s): %v, %v", image.Manifest.Digest, got, err)
	}
	if err := s.SetMetadata(imageID, "x"); !errors.Is(err, storage.ErrStoreIsReadOnly) {
		t.Errorf("SetMetadata of containerd's image: %v, want ErrStoreIsReadOnly", err)
	}

	// containerd's layers are the store's too, named by their keys; the
	// daemon's diff service unpacked them recording their tar-split, so
	// Diff reproduces each layer exactly: its digest is the diff ID.
	chain := image.ChainIDs()
	baseKey := ""
	layers, err := s.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		for _, n := range l.Names {
			if strings.HasSuffix(n, "/"+chain[0].String()) {
				baseKey = n
			}
		}
	}
	if baseKey == "" {
		t.Fatalf("the store does not list containerd's base layer %s among %v", chain[0], layers)
	}
	for i, c := range chain {
		id := ""
		for _, l := range layers {
			for _, n := range l.Names {
				if strings.HasSuffix(n, "/"+c.String()) {
					id = l.ID
				}
			}
		}
		u := storage.Uncompressed
		rc, err := s.Diff("", id, &storage.DiffOptions{Compression: &u})
		if err != nil {
			t.Fatalf("diff of containerd's layer %d: %v", i, err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if got := digest.FromBytes(b); got != image.DiffIDs()[i] {
			t.Errorf("diff of containerd's layer %d: %s, diff ID %s", i, got, image.DiffIDs()[i])
		}
		if l, _ := s.Layer(id); l.CompressionType != storage.Gzip || l.CompressedDigest != image.Layers[i].Descriptor.Digest {
			t.Errorf("layer %d record: compression %v, compressed digest %s (blob %s)", i, l.CompressionType, l.CompressedDigest, image.Layers[i].Descriptor.Digest)
		}
	}
	u := storage.Uncompressed
	rc, err := s.Diff("", baseKey, &storage.DiffOptions{Compression: &u})
	if err != nil {
		t.Fatal(err)
	}
	found := ""
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("diff of containerd's layer: %v", err)
		}
		if "/"+strings.TrimPrefix(h.Name, "/") == imagebuild.HelloPath {
			b, _ := io.ReadAll(tr)
			found = string(b)
		}
	}
	rc.Close()
	if found != imagebuild.HelloText {
		t.Errorf("diff of containerd's base layer: %s holds %q, want %q", imagebuild.HelloPath, found, imagebuild.HelloText)
	}

	// Layers of the store's own, with a tar-split and big data.
	tarball := storeTar(t, map[string]string{"etc/store.txt": "made by the store\n"})
	owned, _, err := s.PutLayer("", "", []string{"store-base"}, "", false, nil, bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetLayerBigData(owned.ID, "note", strings.NewReader("kept")); err != nil {
		t.Fatal(err)
	}
	child, err := s.CreateLayer("", owned.ID, []string{"store-child"}, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}

	// containerd's GC runs when the image goes; the store's snapshots are
	// not in containerd's view of the daemon, so it leaves them and the
	// store's blobs alone (and logs nothing about them).
	var tarSplits []digest.Digest
	for _, info := range e.DialDaemon().Snapshots(t) {
		if ts := info.Labels["containerd.io/snapshot/cs.tar-split"]; ts != "" && !strings.HasPrefix(info.Name, owned.ID) {
			tarSplits = append(tarSplits, digest.Digest(ts))
		}
	}
	if len(tarSplits) != len(chain) {
		t.Errorf("%d of containerd's %d layers have a tar-split", len(tarSplits), len(chain))
	}
	e.MustCtr("images", "rm", "--sync", imageName)
	// containerd never saw them: nothing about them in its log.
	if log, _ := os.ReadFile(e.CtrdLog); bytes.Contains(log, []byte(owned.ID)) {
		t.Errorf("containerd's log names the store's layer %s, which it should not see", owned.ID)
	}
	client := e.DialDaemon()
	snaps := client.Snapshots(t)
	for _, c := range chain {
		if _, ok := chainSnapshot(snaps, c); ok {
			t.Errorf("containerd's GC left the image's snapshot %s", c)
		}
	}
	for _, ts := range tarSplits {
		if client.BlobExists(t, ts) {
			t.Errorf("tar-split %s outlived the snapshot containerd's GC removed", ts)
		}
	}
	for _, id := range []string{owned.ID, child.ID} {
		if _, ok := snaps[id]; !ok {
			t.Errorf("containerd's GC removed the store's layer %s", id)
		}
	}
	rc, err = s.Diff("", owned.ID, &storage.DiffOptions{Compression: &u})
	if err != nil {
		t.Fatalf("diff after GC: %v", err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if digest.FromBytes(got) != digest.FromBytes(tarball) {
		t.Error("the store's layer no longer reproduces its diff after containerd's GC (tar-split lost?)")
	}
	bd, err := s.LayerBigData(owned.ID, "note")
	if err != nil {
		t.Fatalf("big data after GC: %v", err)
	}
	b, _ := io.ReadAll(bd)
	bd.Close()
	if string(b) != "kept" {
		t.Errorf("big data after GC: %q", b)
	}
	if names, _ := s.Names(child.ID); len(names) != 1 || names[0] != "store-child" {
		t.Errorf("names after GC: %v", names)
	}

	// The store lets go; nothing of it remains.
	if err := s.Wipe(); err != nil {
		t.Fatal(err)
	}
	for key := range client.Snapshots(t) {
		if key == owned.ID || key == child.ID || strings.HasPrefix(key, "cs.") {
			t.Errorf("after wipe the daemon still has %s", key)
		}
	}
}
