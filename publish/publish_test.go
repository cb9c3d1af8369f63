package publish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

func newStore(t *testing.T) storage.Store {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the store mounts file systems: this test must run as root")
	}
	s, err := storage.GetStore(storage.StoreOptions{GraphRoot: t.TempDir(), RunRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(true) })
	return s
}

func manifestDigest(b []byte) (digest.Digest, error) { return digest.FromBytes(b), nil }

// newImage creates an image named names (none if empty) whose big data are
// data.
func newImage(t *testing.T, s storage.Store, names []string, data map[string][]byte) *storage.Image {
	t.Helper()
	img, err := s.CreateImage("", names, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range data {
		if err := s.SetImageBigData(img.ID, k, v, manifestDigest); err != nil {
			t.Fatalf("big data %s: %v", k, err)
		}
	}
	if img, err = s.Image(img.ID); err != nil {
		t.Fatal(err)
	}
	return img
}

// storeState describes every image of s with its names and big data, to
// check that a failure changed nothing.
func storeState(t *testing.T, s storage.Store) string {
	t.Helper()
	imgs, err := s.Images()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].ID < imgs[j].ID })
	for _, img := range imgs {
		fmt.Fprintf(&b, "%s %v %s %q\n", img.ID, img.Names, img.Digest, img.TopLayer)
		keys, err := s.ListImageBigData(img.ID)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v, err := s.ImageBigData(img.ID, k)
			if err != nil {
				t.Fatalf("big data %s of %s: %v", k, img.ID, err)
			}
			fmt.Fprintf(&b, "  %s %s\n", k, digest.FromBytes(v))
		}
	}
	return b.String()
}

func manifestJSON(t *testing.T, mediaType string, config digest.Digest, manifests int) []byte {
	t.Helper()
	m := map[string]any{"schemaVersion": 2}
	if mediaType != "" {
		m["mediaType"] = mediaType
	}
	if config != "" {
		m["config"] = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: config, Size: 2}
	}
	m["layers"] = []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("layer"), Size: 5}}
	if manifests > 0 {
		var ds []ocispec.Descriptor
		for i := 0; i < manifests; i++ {
			ds = append(ds, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(fmt.Sprint(i)), Size: 1})
		}
		m["manifests"] = ds
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"

func TestReadManifest(t *testing.T) {
	s := newStore(t)
	cfg := digest.FromString("{}")
	for _, tc := range []struct {
		name     string
		manifest []byte
		// wantType is the media type of the descriptor; empty means
		// the manifest is refused with an error saying want.
		wantType string
		want     string
	}{
		{name: "OCI manifest", manifest: manifestJSON(t, ocispec.MediaTypeImageManifest, cfg, 0), wantType: ocispec.MediaTypeImageManifest},
		{name: "no media type is OCI", manifest: manifestJSON(t, "", cfg, 0), wantType: ocispec.MediaTypeImageManifest},
		{name: "Docker schema 2", manifest: manifestJSON(t, dockerManifest, cfg, 0), wantType: dockerManifest},
		{name: "OCI index", manifest: manifestJSON(t, ocispec.MediaTypeImageIndex, "", 2), want: "is an index"},
		{name: "Docker manifest list", manifest: manifestJSON(t, "application/vnd.docker.distribution.manifest.list.v2+json", "", 0), want: "is an index"},
		{name: "manifests without a media type", manifest: manifestJSON(t, "", cfg, 1), want: "is an index"},
		{name: "config media type", manifest: manifestJSON(t, ocispec.MediaTypeImageConfig, cfg, 0), want: `has media type "` + ocispec.MediaTypeImageConfig + `", not an image manifest`},
		{name: "no config", manifest: manifestJSON(t, ocispec.MediaTypeImageManifest, "", 0), want: "names no config"},
		{name: "invalid JSON", manifest: []byte(`{"mediaType": `), want: "manifest of image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := newImage(t, s, nil, map[string][]byte{"manifest": tc.manifest})
			before := storeState(t, s)
			m, desc, b, err := readManifest(s, img)
			if tc.wantType != "" {
				if err != nil {
					t.Fatal(err)
				}
				if desc.MediaType != tc.wantType || desc.Digest != digest.FromBytes(tc.manifest) || desc.Size != int64(len(tc.manifest)) {
					t.Errorf("descriptor %+v, want %s %s %d", desc, tc.wantType, digest.FromBytes(tc.manifest), len(tc.manifest))
				}
				if string(b) != string(tc.manifest) || m.Config.Digest != cfg || len(m.Layers) != 1 {
					t.Errorf("manifest %+v from %s", m, b)
				}
			} else {
				if err == nil {
					t.Fatalf("accepted: %+v", m)
				}
				if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), img.ID) {
					t.Errorf("error %q: want an invalid argument naming image %s and saying %q", err, img.ID, tc.want)
				}
			}
			if after := storeState(t, s); after != before {
				t.Errorf("the store changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}

	t.Run("manifest by the image's digest", func(t *testing.T) {
		mb := manifestJSON(t, ocispec.MediaTypeImageManifest, cfg, 0)
		d := digest.FromBytes(mb)
		img, err := s.CreateImage("", nil, "", "", &storage.ImageOptions{Digest: d})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetImageBigData(img.ID, "manifest-"+d.String(), mb, manifestDigest); err != nil {
			t.Fatal(err)
		}
		if img, err = s.Image(img.ID); err != nil {
			t.Fatal(err)
		}
		_, desc, _, err := readManifest(s, img)
		if err != nil || desc.Digest != d {
			t.Fatalf("descriptor %+v, %v; want digest %s", desc, err, d)
		}
	})

	t.Run("no manifest", func(t *testing.T) {
		img := newImage(t, s, []string{"example.com/nomanifest:1"}, map[string][]byte{"other": []byte("x")})
		before := storeState(t, s)
		_, _, _, err := readManifest(s, img)
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "image "+img.ID+" has no manifest") {
			t.Errorf("error %v: want a failed precondition saying image %s has no manifest", err, img.ID)
		}
		if after := storeState(t, s); after != before {
			t.Errorf("the store changed:\nbefore %s\nafter  %s", before, after)
		}
	})
}

// TestImageFailsBeforeContainerd: Image refuses what it cannot publish
// before it uses its client (nil here): every one of these returns before
// c.WithLease.
func TestImageFailsBeforeContainerd(t *testing.T) {
	s := newStore(t)
	config := []byte(`{"rootfs":{"type":"layers","diff_ids":[]}}`)
	good := manifestJSON(t, ocispec.MediaTypeImageManifest, digest.FromBytes(config), 0)
	unnamed := newImage(t, s, nil, map[string][]byte{"manifest": good, digest.FromBytes(config).String(): config})
	noManifest := newImage(t, s, []string{"example.com/nomanifest:1"}, nil)
	noConfig := newImage(t, s, []string{"example.com/noconfig:1"}, map[string][]byte{"manifest": good})
	badConfig := newImage(t, s, []string{"example.com/badconfig:1"}, map[string][]byte{"manifest": good, digest.FromBytes(config).String(): []byte(`{}`)})
	for _, tc := range []struct {
		name  string
		ref   string
		o     Options
		is    func(error) bool
		wants []string
	}{
		{"unknown image", "example.com/nothere:1", Options{}, func(err error) bool { return errors.Is(err, storage.ErrImageUnknown) }, []string{`"example.com/nothere:1"`}},
		{"no name", unnamed.ID, Options{}, errdefs.IsInvalidArgument, []string{"image " + unnamed.ID + " has no name", "name one"}},
		{"no manifest", noManifest.ID, Options{}, errdefs.IsFailedPrecondition, []string{"image " + noManifest.ID + " has no manifest"}},
		{"no manifest, named", noManifest.ID, Options{Names: []string{"example.com/x:1"}}, errdefs.IsFailedPrecondition, []string{"image " + noManifest.ID + " has no manifest"}},
		{"no config", "example.com/noconfig:1", Options{}, func(error) bool { return true }, []string{"config " + digest.FromBytes(config).String() + " of image " + noConfig.ID}},
		{"config not its digest", badConfig.ID, Options{}, errdefs.IsDataLoss, []string{"config of image " + badConfig.ID + " does not match its digest"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := storeState(t, s)
			res, err := Image(context.Background(), s, nil, tc.ref, tc.o)
			if err == nil {
				t.Fatalf("published: %+v", res)
			}
			if !tc.is(err) {
				t.Errorf("error %v is not of the expected kind", err)
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if after := storeState(t, s); after != before {
				t.Errorf("the store changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestNotHere(t *testing.T) {
	d := digest.FromString("blob")
	n := &notHere{d: d, size: 10}
	buf := make([]byte, 4)
	if k, err := n.Read(buf); err == nil || k != 0 || !strings.Contains(err.Error(), d.String()) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read at 0: %d, %v; want an error naming %s", k, err, d)
	}
	if pos, err := n.Seek(4, io.SeekStart); err != nil || pos != 4 {
		t.Fatalf("seek 4: %d %v", pos, err)
	}
	if _, err := n.Read(buf); err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), d.String()) {
		t.Errorf("read at 4 of 10: %v; want an error naming %s", err, d)
	}
	if _, err := n.Seek(1, io.SeekCurrent); err == nil {
		t.Error("relative seek accepted")
	}
	if _, err := n.Seek(-1, io.SeekStart); err == nil {
		t.Error("negative seek accepted")
	}
	if pos, err := n.Seek(10, io.SeekStart); err != nil || pos != 10 {
		t.Fatalf("seek to the end: %d %v", pos, err)
	}
	if k, err := n.Read(buf); k != 0 || err != io.EOF {
		t.Errorf("read at the end: %d, %v; want io.EOF", k, err)
	}
	// What containerd's WriteBlob does with it: io.Copy reads nothing.
	if k, err := io.Copy(io.Discard, n); k != 0 || err != nil {
		t.Errorf("copy from the end: %d, %v", k, err)
	}
	empty := &notHere{d: digest.FromString(""), size: 0}
	if _, err := empty.Read(buf); err != io.EOF {
		t.Errorf("read of an empty blob: %v; want io.EOF", err)
	}
}
