package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// testCtx is the store's own (it sees and may remove what the store holds),
// in-process and over the socket.
var testCtx = snapshotter.WithStoreCaller(daemon.AsStore(namespaces.WithNamespace(context.Background(), namespace)))

// storeState describes everything the store keeps: images, layers,
// containers and every blob with its labels, so error paths can check nothing changed.
func storeState(t *testing.T, s Store, cs content.Store) string {
	t.Helper()
	imgs, err := s.Images()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := s.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ctrs, err := s.Containers()
	if err != nil {
		t.Fatal(err)
	}
	var blobs []string
	err = cs.Walk(testCtx, func(info content.Info) error {
		var l []string
		for k, v := range info.Labels {
			l = append(l, k+"="+v)
		}
		sort.Strings(l)
		blobs = append(blobs, fmt.Sprint(info.Digest, info.Size, l))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(blobs)
	out, _ := json.Marshal(struct {
		Images     []Image
		Layers     []Layer
		Containers []Container
		Blobs      []string
	}{imgs, layers, ctrs, blobs})
	return string(out)
}

// unchanged runs fn, wants an error that is want, and checks the store is
// as it was.
func unchanged(t *testing.T, s Store, cs content.Store, what string, want error, fn func() error) {
	t.Helper()
	before := storeState(t, s, cs)
	err := fn()
	if !errors.Is(err, want) {
		t.Errorf("%s: got %v, want %v", what, err, want)
	}
	if after := storeState(t, s, cs); after != before {
		t.Errorf("%s changed the store:\nbefore %s\nafter  %s", what, before, after)
	}
}

func manifestDigest(b []byte) (digest.Digest, error) { return digest.FromBytes(b), nil }

func TestImages(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		base, err := s.CreateLayer("", "", []string{"base"}, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		mid, err := s.CreateLayer("", base.ID, nil, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		top, err := s.CreateLayer("", mid.ID, nil, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		top2, err := s.CreateLayer("", mid.ID, nil, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}

		given := digest.FromString("given")
		config := []byte(`{"architecture":"amd64"}`)
		created := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
		img, err := s.CreateImage("", []string{"img:1", "img:latest", "img:1"}, "base", "", &ImageOptions{
			CreationDate: created,
			Digest:       given,
			Metadata:     "meta",
			BigData:      []ImageBigDataOption{{Key: "config", Data: config}},
			NamesHistory: []string{"old:name"},
			Flags:        map[string]interface{}{"flag": "on"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(img.ID) != 64 || img.TopLayer != base.ID || img.Metadata != "meta" || !img.Created.Equal(created) ||
			!reflect.DeepEqual(img.Names, []string{"img:1", "img:latest"}) || img.Digest != given ||
			!reflect.DeepEqual(img.Digests, []digest.Digest{given}) || !reflect.DeepEqual(img.NamesHistory, []string{"old:name"}) ||
			img.Flags["flag"] != "on" || !reflect.DeepEqual(img.BigDataNames, []string{"config"}) ||
			img.BigDataSizes["config"] != int64(len(config)) || img.BigDataDigests["config"] != digest.FromBytes(config) {
			t.Errorf("created %+v", img)
		}
		got, err := s.Image(img.ID)
		if err != nil || !reflect.DeepEqual(got, img) {
			t.Errorf("Image = %+v, %v; created %+v", got, err, img)
		}
		for _, ref := range []string{img.ID, "img:latest", img.ID[:12]} {
			if got, err := s.Image(ref); err != nil || got.ID != img.ID {
				t.Errorf("Image(%q) = %v, %v", ref, got, err)
			}
			if !s.Exists(ref) {
				t.Errorf("Exists(%q) false", ref)
			}
		}
		if id, err := s.Lookup("img:1"); err != nil || id != img.ID {
			t.Errorf("Lookup = %q, %v", id, err)
		}
		if id, err := s.Lookup("base"); err != nil || id != base.ID {
			t.Errorf("Lookup of a layer name = %q, %v", id, err)
		}
		if _, err := s.Image("nope"); !errors.Is(err, ErrImageUnknown) {
			t.Errorf("unknown image: %v", err)
		}
		if names, err := s.Names(img.ID); err != nil || !reflect.DeepEqual(names, img.Names) {
			t.Errorf("Names = %v, %v", names, err)
		}
		if md, err := s.Metadata("img:1"); err != nil || md != "meta" {
			t.Errorf("Metadata = %q, %v", md, err)
		}
		if err := s.SetMetadata("img:1", "new meta"); err != nil {
			t.Fatal(err)
		}
		if md, _ := s.Metadata(img.ID); md != "new meta" {
			t.Errorf("metadata after SetMetadata: %q", md)
		}
		if data, err := s.ImageBigData(img.ID, "config"); err != nil || !bytes.Equal(data, config) {
			t.Errorf("ImageBigData = %q, %v", data, err)
		}

		// The other images: one on top2, one whose top layer is mid.
		img2, err := s.CreateImage("", []string{"other"}, top2.ID, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		img3, err := s.CreateImage("", nil, mid.ID, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		img4, err := s.CreateImage("", []string{"four"}, top.ID, "", nil)
		if err != nil {
			t.Fatal(err)
		}

		t.Run("big data", func(t *testing.T) {
			big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB
			if err := s.SetImageBigData(img4.ID, "big", big, nil); err != nil {
				t.Fatal(err)
			}
			data, err := s.ImageBigData("four", "big")
			if err != nil || !bytes.Equal(data, big) {
				t.Fatalf("64 MiB item read back: %d bytes, %v", len(data), err)
			}
			if n, err := s.ImageBigDataSize("four", "big"); err != nil || n != int64(len(big)) {
				t.Errorf("size %d, %v", n, err)
			}
			if d, err := s.ImageBigDataDigest("four", "big"); err != nil || d != digest.FromBytes(big) {
				t.Errorf("digest %s, %v", d, err)
			}
			if keys, err := s.ListImageBigData("four"); err != nil || !reflect.DeepEqual(keys, []string{"big"}) {
				t.Errorf("keys %v, %v", keys, err)
			}
			// Labels stay small: the data is in a blob.
			cs.Walk(testCtx, func(info content.Info) error {
				for k, v := range info.Labels {
					if len(k)+len(v) > 4096 {
						t.Errorf("label %s of %s is %d bytes", k, info.Digest, len(k)+len(v))
					}
				}
				return nil
			})
			if n, err := s.ImageSize("four"); err != nil || n != int64(len(big)) {
				t.Errorf("ImageSize %d, %v", n, err)
			}
			unchanged(t, s, cs, "empty key", ErrInvalidBigDataName, func() error { return s.SetImageBigData("four", "", []byte("x"), nil) })
			unchanged(t, s, cs, "manifest without a digest function", ErrDigestUnknown, func() error {
				return s.SetImageBigData("four", "manifest", []byte("{}"), nil)
			})
			unchanged(t, s, cs, "a key too long for a label", ErrInvalidBigDataName, func() error {
				return s.SetImageBigData("four", strings.Repeat("k", 5000), []byte("x"), nil)
			})
			unchanged(t, s, cs, "unknown image", ErrImageUnknown, func() error { return s.SetImageBigData("nope", "k", []byte("x"), nil) })
			if _, err := s.ImageBigDataDigest("four", "missing"); !errors.Is(err, ErrDigestUnknown) {
				t.Errorf("digest of a missing item: %v", err)
			}
		})

		t.Run("by digest", func(t *testing.T) {
			manifest := []byte(`{"schemaVersion":2}`)
			md := digest.FromBytes(manifest)
			if err := s.SetImageBigData(img2.ID, "manifest-"+md.String(), manifest, manifestDigest); err != nil {
				t.Fatal(err)
			}
			got, err := s.ImagesByDigest(md)
			if err != nil || len(got) != 1 || got[0].ID != img2.ID {
				t.Fatalf("ImagesByDigest(manifest) = %v, %v", got, err)
			}
			if got[0].Digest != md || !reflect.DeepEqual(got[0].Digests, []digest.Digest{md}) {
				t.Errorf("digests %s %v", got[0].Digest, got[0].Digests)
			}
			if got, err := s.ImagesByDigest(given); err != nil || len(got) != 1 || got[0].ID != img.ID {
				t.Errorf("ImagesByDigest(given) = %v, %v", got, err)
			}
			if got, err := s.ImagesByDigest(digest.FromString("none")); err != nil || len(got) != 0 {
				t.Errorf("ImagesByDigest(none) = %v, %v", got, err)
			}
		})

		t.Run("by top layer", func(t *testing.T) {
			got, err := s.ImagesByTopLayer(top.ID)
			if err != nil || len(got) != 1 || got[0].ID != img4.ID {
				t.Errorf("ImagesByTopLayer(top) = %v, %v", got, err)
			}
			if got, err := s.ImagesByTopLayer(top2.ID); err != nil || len(got) != 1 || got[0].ID != img2.ID {
				t.Errorf("ImagesByTopLayer(top2) = %v, %v", got, err)
			}
			if _, err := s.ImagesByTopLayer("nope"); !errors.Is(err, ErrLayerUnknown) {
				t.Errorf("unknown layer: %v", err)
			}
		})

		t.Run("refusals", func(t *testing.T) {
			unchanged(t, s, cs, "duplicate name", ErrDuplicateName, func() error {
				_, err := s.CreateImage("", []string{"fresh", "img:latest"}, "", "", &ImageOptions{BigData: []ImageBigDataOption{{Key: "k", Data: []byte("v")}}})
				return err
			})
			unchanged(t, s, cs, "duplicate ID", ErrDuplicateID, func() error {
				_, err := s.CreateImage(img.ID, nil, "", "", nil)
				return err
			})
			unchanged(t, s, cs, "unknown top layer", ErrLayerUnknown, func() error {
				_, err := s.CreateImage("", []string{"fresh"}, "nope", "", nil)
				return err
			})
			unchanged(t, s, cs, "empty big data key", ErrInvalidBigDataName, func() error {
				_, err := s.CreateImage("", []string{"fresh"}, "", "", &ImageOptions{BigData: []ImageBigDataOption{{Key: "k", Data: []byte("v")}, {Key: ""}}})
				return err
			})
			unchanged(t, s, cs, "oversized metadata", errdefs.ErrInvalidArgument, func() error {
				_, err := s.CreateImage("", []string{"fresh"}, "", strings.Repeat("m", 5000), nil)
				return err
			})
			unchanged(t, s, cs, "oversized SetMetadata", errdefs.ErrInvalidArgument, func() error {
				return s.SetMetadata(img.ID, strings.Repeat("m", 5000))
			})
			unchanged(t, s, cs, "deleting an image's top layer", ErrLayerUsedByImage, func() error { return s.DeleteLayer(top2.ID) })
			unchanged(t, s, cs, "deleting an unknown image", ErrNotAnImage, func() error {
				_, err := s.DeleteImage("nope", true)
				return err
			})
		})

		t.Run("names", func(t *testing.T) {
			if err := s.AddNames(img2.ID, []string{"img:latest", "added"}); err != nil {
				t.Fatal(err)
			}
			i1, _ := s.Image(img.ID)
			i2, _ := s.Image(img2.ID)
			if !reflect.DeepEqual(i1.Names, []string{"img:1"}) || !reflect.DeepEqual(i2.Names, []string{"img:latest", "added", "other"}) {
				t.Errorf("after the move: %v, %v", i1.Names, i2.Names)
			}
			// As containers/storage: each new name goes to the front in turn.
			if !reflect.DeepEqual(i2.NamesHistory, []string{"other", "added", "img:latest"}) {
				t.Errorf("names history %v", i2.NamesHistory)
			}
			if err := s.SetNames(img.ID, []string{"added", "img:1"}); err != nil {
				t.Fatal(err)
			}
			if err := s.RemoveNames(img2.ID, []string{"other"}); err != nil {
				t.Fatal(err)
			}
			i1, _ = s.Image(img.ID)
			i2, _ = s.Image(img2.ID)
			if !reflect.DeepEqual(i1.Names, []string{"added", "img:1"}) || !reflect.DeepEqual(i2.Names, []string{"img:latest"}) {
				t.Errorf("after SetNames/RemoveNames: %v, %v", i1.Names, i2.Names)
			}
			// A freed name can be taken again.
			if err := s.AddNames(img3.ID, []string{"other"}); err != nil {
				t.Error(err)
			}
			// Image names are not layer names.
			if err := s.AddNames(img3.ID, []string{"base"}); err != nil {
				t.Error(err)
			}
			if id, _ := s.Lookup("base"); id != base.ID {
				t.Errorf("Lookup prefers layers: %s", id)
			}
			unchanged(t, s, cs, "an empty name", ErrInvalidName, func() error { return s.AddNames(img3.ID, []string{""}) })
		})

		t.Run("the record survives containerd's GC", func(t *testing.T) {
			var blobs []digest.Digest
			cs.Walk(testCtx, func(info content.Info) error {
				blobs = append(blobs, info.Digest)
				return nil
			})
			before := storeState(t, s, cs)
			for _, d := range blobs { // what containerd's GC does to blobs it does not know
				if err := cs.Delete(testCtx, d); err != nil {
					t.Errorf("delete %s: %v", d, err)
				}
			}
			if after := storeState(t, s, cs); after != before {
				t.Errorf("containerd's GC changed the store:\nbefore %s\nafter  %s", before, after)
			}
		})

		t.Run("delete", func(t *testing.T) {
			bigBlob := ""
			if i4, err := s.Image(img4.ID); err == nil {
				bigBlob = recordLabels(t, cs, i4.ID)[cslabels.ImageBigDataPrefix+"big"]
			}
			// img4's top layer is only its own; mid is img3's top layer.
			before := storeState(t, s, cs)
			layers, err := s.DeleteImage(img4.ID, false)
			if err != nil || !reflect.DeepEqual(layers, []string{top.ID}) {
				t.Errorf("DeleteImage(commit=false) = %v, %v", layers, err)
			}
			if after := storeState(t, s, cs); after != before {
				t.Errorf("DeleteImage(commit=false) changed the store")
			}
			layers, err = s.DeleteImage(img4.ID, true)
			if err != nil || !reflect.DeepEqual(layers, []string{top.ID}) {
				t.Errorf("DeleteImage = %v, %v", layers, err)
			}
			if s.Exists(img4.ID) || s.Exists(top.ID) || !s.Exists(mid.ID) {
				t.Errorf("after DeleteImage: image %v, top %v, mid %v", s.Exists(img4.ID), s.Exists(top.ID), s.Exists(mid.ID))
			}
			if _, err := cs.Info(testCtx, digest.Digest(bigBlob)); !errdefs.IsNotFound(err) {
				t.Errorf("the big data blob %q is still there: %v", bigBlob, err)
			}
			// The name is free again.
			if _, err := s.CreateImage("", []string{"four"}, "", "", nil); err != nil {
				t.Errorf("reuse of a deleted image's name: %v", err)
			}

			// img2 on top2: mid stays (img3's top layer, and img's ancestor).
			layers, err = s.DeleteImage("img:latest", true)
			if err != nil || !reflect.DeepEqual(layers, []string{top2.ID}) {
				t.Errorf("DeleteImage(img2) = %v, %v", layers, err)
			}
			// img3 on mid: mid has no other child now, base is img's top layer.
			layers, err = s.DeleteImage(img3.ID, true)
			if err != nil || !reflect.DeepEqual(layers, []string{mid.ID}) {
				t.Errorf("DeleteImage(img3) = %v, %v", layers, err)
			}
			layers, err = s.DeleteImage(img.ID, true)
			if err != nil || !reflect.DeepEqual(layers, []string{base.ID}) {
				t.Errorf("DeleteImage(img) = %v, %v", layers, err)
			}
			// Delete removes an image's record only.
			five, err := s.CreateImage("", []string{"five"}, "", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Delete("five"); err != nil || s.Exists(five.ID) {
				t.Errorf("Delete(image) = %v, exists %v", err, s.Exists(five.ID))
			}
			if _, err := s.CreateImage("", []string{"six"}, "", "", nil); err != nil {
				t.Fatal(err)
			}
			if err := s.Wipe(); err != nil {
				t.Fatal(err)
			}
			if imgs, _ := s.Images(); len(imgs) != 0 {
				t.Errorf("images left: %v", imgs)
			}
			cs.Walk(testCtx, func(info content.Info) error {
				t.Errorf("blob left: %s %v", info.Digest, info.Labels)
				return nil
			})
		})
	})
}

// recordLabels returns the labels of image id's record blob.
func recordLabels(t *testing.T, cs content.Store, id string) map[string]string {
	t.Helper()
	var labels map[string]string
	cs.Walk(testCtx, func(info content.Info) error {
		if info.Labels[cslabels.ImageID] == id {
			labels = info.Labels
		}
		return nil
	})
	if labels == nil {
		t.Fatalf("no record of image %s", id)
	}
	return labels
}

func TestImageNameRace(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		wins := race(t, 16, ErrDuplicateName, func(i int) error {
			_, err := s.CreateImage("", []string{"contested", fmt.Sprint("own-", i)}, "", "", &ImageOptions{
				BigData: []ImageBigDataOption{{Key: "config", Data: []byte(fmt.Sprint("config ", i))}},
			})
			return err
		})
		imgs, _ := s.Images()
		if wins != 1 || len(imgs) != 1 {
			t.Fatalf("%d winners, %d images", wins, len(imgs))
		}
		n := 0
		cs.Walk(testCtx, func(info content.Info) error {
			n++
			return nil
		})
		if n != 2 {
			t.Errorf("%d blobs, want the winner's record and big data", n)
		}
		// Racing for an ID: one record holds it.
		id := newID()
		wins = race(t, 16, ErrDuplicateID, func(int) error {
			_, err := s.CreateImage(id, nil, "", "", nil)
			return err
		})
		if imgs, _ := s.Images(); wins != 1 || len(imgs) != 2 {
			t.Errorf("%d winners of the ID, %d images", wins, len(imgs))
		}
		// SetNames takes the contested name over: still one image holds it.
		a, err := s.CreateImage("", []string{"a"}, "", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetNames(a.ID, []string{"contested"}); err != nil {
			t.Fatal(err)
		}
		holders := 0
		imgs, _ = s.Images()
		for _, i := range imgs {
			for _, name := range i.Names {
				if name == "contested" {
					holders++
				}
			}
		}
		if holders != 1 {
			t.Errorf("%d images hold the name", holders)
		}
	})
}

// TestImageOnWriteableLayer: an image whose top layer is writeable keeps
// pointing at it once the layer is committed to become a parent.
func TestImageOnWriteableLayer(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		rw, err := s.CreateLayer("", "", nil, "", true, nil)
		if err != nil {
			t.Fatal(err)
		}
		img, err := s.CreateImage("", []string{"on-rw"}, rw.ID, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateLayer("", rw.ID, nil, "", false, nil); err != nil {
			t.Fatal(err)
		}
		idx, err := s.(*store).loadImages()
		if err != nil {
			t.Fatal(err)
		}
		r := idx.byID[img.ID]
		if got := r.labels[cslabels.GCRefSnapshot]; got != rw.ID {
			t.Errorf("image's snapshot reference %q, want the committed layer %q", got, rw.ID)
		}
	})
}
