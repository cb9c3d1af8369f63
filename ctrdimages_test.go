package storage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// putBlob writes data into the content store as containerd's importer
// would (no store labels), returning its descriptor.
func putBlob(t *testing.T, cs content.Store, mediaType string, data []byte) v1.Descriptor {
	t.Helper()
	desc := v1.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := content.WriteBlob(testCtx, cs, "import-"+desc.Digest.Encoded(), bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}
	return desc
}

// TestContainerdImages: an image containerd imported (manifest, config and
// layer blobs in the content store, its chain unpacked into committed
// snapshots "default/<n>/<chain ID>") is listed read-only.
func TestContainerdImages(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		// Two tiny layers: their tars are their diff IDs.
		tars := [][]byte{
			layerTar(t, []entry{{hdr: tar.Header{Name: "a.txt", Typeflag: tar.TypeReg, Mode: 0o644}, body: "a\n"}}),
			layerTar(t, []entry{{hdr: tar.Header{Name: "b.txt", Typeflag: tar.TypeReg, Mode: 0o644}, body: "b\n"}}),
		}
		var layerDescs []v1.Descriptor
		var diffIDs []digest.Digest
		for _, b := range tars {
			layerDescs = append(layerDescs, putBlob(t, cs, v1.MediaTypeImageLayer, b))
			diffIDs = append(diffIDs, digest.FromBytes(b))
		}
		created := time.Date(2023, 5, 6, 7, 8, 9, 0, time.UTC)
		cfg, _ := json.Marshal(v1.Image{
			Created:  &created,
			Platform: platforms.DefaultSpec(),
			RootFS:   v1.RootFS{Type: "layers", DiffIDs: diffIDs},
		})
		cfgDesc := putBlob(t, cs, v1.MediaTypeImageConfig, cfg)
		man, _ := json.Marshal(v1.Manifest{Versioned: ocispec.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfgDesc, Layers: layerDescs})
		manDesc := putBlob(t, cs, v1.MediaTypeImageManifest, man)
		host := platforms.DefaultSpec()
		other := v1.Platform{OS: "plan9", Architecture: "mips"}
		otherMan := digest.FromString("not here")
		idxDoc, _ := json.Marshal(v1.Index{Versioned: ocispec.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{
			{MediaType: v1.MediaTypeImageManifest, Digest: otherMan, Size: 10, Platform: &other},
			{MediaType: v1.MediaTypeImageManifest, Digest: manDesc.Digest, Size: manDesc.Size, Platform: &host},
		}})
		idxDesc := putBlob(t, cs, v1.MediaTypeImageIndex, idxDoc)
		putBlob(t, cs, "application/json", []byte(`{"config":"not a descriptor"}`))
		putBlob(t, cs, "text/plain", []byte("hello"))

		// A manifest whose chain is not unpacked is not listed.
		orphan, _ := json.Marshal(v1.Image{RootFS: v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromString("x")}}})
		orphanCfg := putBlob(t, cs, v1.MediaTypeImageConfig, orphan)
		orphanMan, _ := json.Marshal(v1.Manifest{Versioned: ocispec.Versioned{SchemaVersion: 2}, Config: orphanCfg, Layers: []v1.Descriptor{}})
		putBlob(t, cs, v1.MediaTypeImageManifest, orphanMan)

		// Unpack as containerd does: committed snapshots keyed by chain ID.
		chain := identity.ChainIDs(diffIDs)
		parent := ""
		var topKey string
		for i, c := range chain {
			key := "default/" + string(rune('1'+i)) + "/" + c.String()
			var opts []snapshots.Opt
			if i == len(chain)-1 {
				opts = append(opts, snapshots.WithLabels(map[string]string{criImageRef: "docker.io/library/tiny:1"}))
			}
			if _, err := sn.Prepare(testCtx, "extract-"+c.Encoded(), parent); err != nil {
				t.Fatal(err)
			}
			if err := sn.Commit(testCtx, key, "extract-"+c.Encoded(), opts...); err != nil {
				t.Fatal(err)
			}
			parent, topKey = key, key
		}
		sum := sha256.Sum256([]byte(topKey))
		topID := hex.EncodeToString(sum[:])
		id := cfgDesc.Digest.Encoded()

		imgs, err := s.Images()
		if err != nil {
			t.Fatal(err)
		}
		if len(imgs) != 1 {
			t.Fatalf("Images: %+v, want containerd's image only", imgs)
		}
		img := imgs[0]
		if img.ID != id || img.TopLayer != topID || !img.ReadOnly || img.Digest != manDesc.Digest || !img.Created.Equal(created) {
			t.Errorf("image %+v; want ID %s, top layer %s, digest %s, created %s, read-only", img, id, topID, manDesc.Digest, created)
		}
		if want := []digest.Digest{manDesc.Digest, idxDesc.Digest}; !reflect.DeepEqual(img.Digests, want) {
			t.Errorf("Digests %v, want %v", img.Digests, want)
		}
		if want := []string{"docker.io/library/tiny:1"}; !reflect.DeepEqual(img.Names, want) {
			t.Errorf("Names %v, want %v", img.Names, want)
		}
		manKey, idxKey, cfgKey := "manifest-"+manDesc.Digest.String(), "manifest-"+idxDesc.Digest.String(), cfgDesc.Digest.String()
		keys, err := s.ListImageBigData(id)
		if err != nil {
			t.Fatal(err)
		}
		wantKeys := []string{"manifest", manKey, idxKey, cfgKey}
		for _, k := range wantKeys {
			found := false
			for _, x := range keys {
				found = found || x == k
			}
			if !found {
				t.Errorf("big data keys %v lack %q", keys, k)
			}
		}
		if len(keys) != len(wantKeys) {
			t.Errorf("big data keys %v, want %v", keys, wantKeys)
		}
		for key, want := range map[string][]byte{"manifest": man, manKey: man, idxKey: idxDoc, cfgKey: cfg} {
			got, err := s.ImageBigData(id, key)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("big data %q: %q, %v", key, got, err)
			}
			if n, err := s.ImageBigDataSize(id, key); err != nil || n != int64(len(want)) {
				t.Errorf("big data %q size %d, %v; want %d", key, n, err, len(want))
			}
			if d, err := s.ImageBigDataDigest(id, key); err != nil || d != digest.FromBytes(want) {
				t.Errorf("big data %q digest %s, %v", key, d, err)
			}
		}
		for _, name := range []string{id, id[:12], "docker.io/library/tiny:1"} {
			if got, err := s.Image(name); err != nil || got.ID != id {
				t.Errorf("Image(%q): %v, %v", name, got, err)
			}
			if got, err := s.Lookup(name); err != nil || got != id {
				t.Errorf("Lookup(%q): %q, %v", name, got, err)
			}
		}
		if got, err := s.ImagesByTopLayer(topID); err != nil || len(got) != 1 || got[0].ID != id {
			t.Errorf("ImagesByTopLayer: %v, %v", got, err)
		}
		for _, d := range []digest.Digest{manDesc.Digest, idxDesc.Digest} {
			if got, err := s.ImagesByDigest(d); err != nil || len(got) != 1 || got[0].ID != id {
				t.Errorf("ImagesByDigest(%s): %v, %v", d, got, err)
			}
		}
		if !s.Exists(id) {
			t.Error("Exists: false")
		}

		// Read-only: every write is refused and nothing changes.
		writes := map[string]func() error{
			"SetNames":         func() error { return s.SetNames(id, []string{"x"}) },
			"AddNames":         func() error { return s.AddNames(id, []string{"x"}) },
			"RemoveNames":      func() error { return s.RemoveNames(id, []string{"docker.io/library/tiny:1"}) },
			"SetMetadata":      func() error { return s.SetMetadata(id, "m") },
			"SetImageBigData":  func() error { return s.SetImageBigData(id, "k", []byte("v"), manifestDigest) },
			"DeleteImage":      func() error { _, err := s.DeleteImage(id, true); return err },
			"DeleteImage(dry)": func() error { _, err := s.DeleteImage(id, false); return err },
			"Delete":           func() error { return s.Delete(id) },
		}
		for what, fn := range writes {
			unchanged(t, s, cs, what, ErrStoreIsReadOnly, fn)
		}

		// A store-made image with the same ID (and name) wins; when it
		// goes, containerd's is listed again.
		base, err := s.CreateLayer("", "", nil, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		own, err := s.CreateImage(id, []string{"docker.io/library/tiny:1"}, base.ID, "", nil)
		if err != nil {
			t.Fatalf("CreateImage with containerd's image's ID: %v", err)
		}
		imgs, err = s.Images()
		if err != nil {
			t.Fatal(err)
		}
		if len(imgs) != 1 || imgs[0].ReadOnly || imgs[0].TopLayer != base.ID {
			t.Errorf("with a store image of the same ID: %+v", imgs)
		}
		if got, err := s.Image("docker.io/library/tiny:1"); err != nil || got.TopLayer != own.TopLayer {
			t.Errorf("name: %v, %v", got, err)
		}
		if err := s.SetMetadata(id, "mine"); err != nil {
			t.Errorf("SetMetadata of the store's image: %v", err)
		}
		if _, err := s.DeleteImage(id, true); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Image(id); err != nil || !got.ReadOnly || got.TopLayer != topID {
			t.Errorf("after the store's image went: %+v, %v", got, err)
		}
		// Wipe leaves containerd's image alone.
		if err := s.Wipe(); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Image(id); err != nil || !got.ReadOnly {
			t.Errorf("after Wipe: %+v, %v", got, err)
		}
	})
}
