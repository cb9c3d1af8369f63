package storage

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
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
			{MediaType: v1.MediaTypeImageManifest, Digest: manDesc.Digest, Size: manDesc.Size, Platform: &host,
				Annotations: map[string]string{"io.containerd.image.name": "docker.io/library/tiny:imported"}},
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
		// The CRI's reference, then the name ctr images import's index
		// gives it.
		if want := []string{"docker.io/library/tiny:1", "docker.io/library/tiny:imported"}; !reflect.DeepEqual(img.Names, want) {
			t.Errorf("Names %v, want %v", img.Names, want)
		}
		if byName, err := s.Image("docker.io/library/tiny:imported"); err != nil || byName.ID != id {
			t.Errorf("Image by the index's name: %+v, %v", byName, err)
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

// ctrdSeq numbers the snapshots fakeCtrdImage makes, as containerd numbers
// its keys "<namespace>/<n>/<chain ID>".
var ctrdSeq int

// fakeCtrdImage puts an image into the store's blobs and snapshots as
// containerd's import does: one layer whose content names name (so each
// image's digests are its own), its config, its manifest, and the chain
// committed as "default/<n>/<chain ID>". It returns the image's ID and the
// manifest's and config's descriptors.
func fakeCtrdImage(t *testing.T, sn snapshots.Snapshotter, cs content.Store, name string) (string, v1.Descriptor, v1.Descriptor) {
	t.Helper()
	b := layerTar(t, []entry{{hdr: tar.Header{Name: "name", Typeflag: tar.TypeReg, Mode: 0o644}, body: name}})
	layer := putBlob(t, cs, v1.MediaTypeImageLayer, b)
	diffIDs := []digest.Digest{digest.FromBytes(b)}
	cfg, _ := json.Marshal(v1.Image{Platform: platforms.DefaultSpec(), RootFS: v1.RootFS{Type: "layers", DiffIDs: diffIDs}})
	cfgDesc := putBlob(t, cs, v1.MediaTypeImageConfig, cfg)
	man, _ := json.Marshal(v1.Manifest{Versioned: ocispec.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfgDesc, Layers: []v1.Descriptor{layer}})
	manDesc := putBlob(t, cs, v1.MediaTypeImageManifest, man)
	chain := identity.ChainIDs(diffIDs)
	ctrdSeq++
	extract := fmt.Sprintf("default/%d/extract-%s", ctrdSeq, chain[0].Encoded())
	if _, err := sn.Prepare(testCtx, extract, ""); err != nil {
		t.Fatal(err)
	}
	ctrdSeq++
	if err := sn.Commit(testCtx, fmt.Sprintf("default/%d/%s", ctrdSeq, chain[0]), extract); err != nil {
		t.Fatal(err)
	}
	return cfgDesc.Digest.Encoded(), manDesc, cfgDesc
}

// vanishingReads is a content store whose blobs in gone are deleted
// between the caller's ReaderAt and its reads: their reads answer
// NotFound, as a blob containerd's garbage collector removed meanwhile
// answers through the daemon's socket.
type vanishingReads struct {
	content.Store
	gone map[digest.Digest]bool
}

func (v vanishingReads) ReaderAt(ctx context.Context, desc v1.Descriptor) (content.ReaderAt, error) {
	ra, err := v.Store.ReaderAt(ctx, desc)
	if err != nil || !v.gone[desc.Digest] {
		return ra, err
	}
	return vanishedReader{ra}, nil
}

type vanishedReader struct{ content.ReaderAt }

func (vanishedReader) ReadAt([]byte, int64) (int, error) {
	return 0, fmt.Errorf("content gone: %w", errdefs.ErrNotFound)
}

// TestContainerdImagesVanishing: containerd's garbage collector deletes an
// image's blobs one by one while the store lists them. A blob deleted since
// the content walk, or while it is read, leaves its image out of the
// listing instead of failing it; a manifest whose config was deleted is no
// image even when the config was read (and cached) before. The store's own
// images, and containerd's intact ones, are listed as ever.
func TestContainerdImagesVanishing(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		st := s.(*store)
		prefix := t.Name() + "-" + newID()[:8] + "-" // digests no earlier listing cached
		keep, _, _ := fakeCtrdImage(t, sn, cs, prefix+"keep")
		cfgGone, _, cfgDesc := fakeCtrdImage(t, sn, cs, prefix+"config-deleted")
		_, own := imageOn(t, s, prefix+"own")

		// A listing caches what these images' blobs are; then one config
		// goes.
		imgs, err := s.Images()
		if err != nil {
			t.Fatal(err)
		}
		if len(imgs) != 3 {
			t.Fatalf("Images before anything goes: %d images, want 3: %+v", len(imgs), imgs)
		}
		if err := cs.Delete(testCtx, cfgDesc.Digest); err != nil {
			t.Fatal(err)
		}
		// Two images no listing has read yet: the next listing's walk sees
		// them, then one manifest goes before it is read, the other while
		// it is read.
		walkedGone, walkedMan, _ := fakeCtrdImage(t, sn, cs, prefix+"deleted-after-walk")
		readGone, readMan, _ := fakeCtrdImage(t, sn, cs, prefix+"deleted-while-read")
		var infos []content.Info
		if err := cs.Walk(testCtx, func(info content.Info) error {
			infos = append(infos, info)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := cs.Delete(testCtx, walkedMan.Digest); err != nil {
			t.Fatal(err)
		}
		racing := *st
		racing.cs = vanishingReads{Store: st.cs, gone: map[digest.Digest]bool{readMan.Digest: true}}
		list, err := racing.ctrdImages(infos)
		if err != nil {
			t.Fatalf("listing containerd's images while their blobs go: %v", err)
		}
		var ids []string
		for _, r := range list {
			ids = append(ids, r.ID)
		}
		if !reflect.DeepEqual(ids, []string{keep}) {
			t.Errorf("containerd's images listed: %v, want only %s (not %s, %s, %s)", ids, keep, walkedGone, readGone, cfgGone)
		}

		// Through the whole store: the intact images, nothing failing.
		imgs, err = s.Images()
		if err != nil {
			t.Fatal(err)
		}
		var all []string
		for _, img := range imgs {
			all = append(all, img.ID)
		}
		sort.Strings(all)
		want := []string{keep, readGone, own.ID} // readGone's manifest is still there
		sort.Strings(want)
		if !reflect.DeepEqual(all, want) {
			t.Errorf("Images: %v, want %v", all, want)
		}
		there(t, s, keep, own.ID, own.TopLayer)
		wantClean(t, s, CheckMost(), "after containerd's blobs went")
	})
}

// TestContainerdImagesCache: what a listing found out about containerd's
// blobs is kept in the run root, read back by a process with empty caches
// (same listing), rewritten when the blobs change (a deleted manifest's
// entry goes), and ignored when unreadable.
func TestContainerdImagesCache(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		st := s.(*store)
		prefix := t.Name() + "-" + newID()[:8] + "-"
		a, _, _ := fakeCtrdImage(t, sn, cs, prefix+"a")
		b, manBDesc, _ := fakeCtrdImage(t, sn, cs, prefix+"b")
		manB := manBDesc.Digest
		ids := func() string {
			t.Helper()
			imgs, err := s.Images()
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, i := range imgs {
				out = append(out, i.ID)
			}
			sort.Strings(out)
			return strings.Join(out, ",")
		}
		want := ids()
		if !strings.Contains(want, a) || !strings.Contains(want, b) {
			t.Fatalf("listing %s lacks %s or %s", want, a, b)
		}
		path := st.ctrdCachePath()
		var f ctrdCacheFile
		if data, err := os.ReadFile(path); err != nil || json.Unmarshal(data, &f) != nil || !f.Blobs[manB].Manifest || len(f.Configs) < 2 {
			t.Fatalf("cache file %s: %d blobs, %d configs, %v", path, len(f.Blobs), len(f.Configs), err)
		}
		forget := func() {
			ctrdBlobCache.Clear()
			ctrdConfigCache.Clear()
			ctrdCacheLoaded.Clear()
		}
		forget()
		if got := ids(); got != want {
			t.Errorf("listing from the cache file: %s, want %s", got, want)
		}
		if err := cs.Delete(testCtx, manB); err != nil {
			t.Fatal(err)
		}
		if got := ids(); strings.Contains(got, b) {
			t.Errorf("listing after image b's manifest went: %s", got)
		}
		f = ctrdCacheFile{}
		if data, err := os.ReadFile(path); err != nil || json.Unmarshal(data, &f) != nil {
			t.Fatal(err)
		}
		if _, ok := f.Blobs[manB]; ok {
			t.Error("the deleted manifest is still in the cache file")
		}
		if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		forget()
		if got := ids(); !strings.Contains(got, a) || strings.Contains(got, b) {
			t.Errorf("listing with an unreadable cache file: %s", got)
		}
		if data, err := os.ReadFile(path); err != nil || json.Unmarshal(data, &ctrdCacheFile{}) != nil {
			t.Errorf("the unreadable cache file was not remade: %v", err)
		}
	})
}
