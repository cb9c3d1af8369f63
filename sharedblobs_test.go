package storage

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

var sharedEntries = []entry{
	{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "etc/shared", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 100}, body: "shared\n"},
	{hdr: tar.Header{Name: "etc/sym", Typeflag: tar.TypeSymlink, Linkname: "/etc/shared"}},
}

// TestSharedLayerBlobs: two layers with the same diff share its tar-split
// (or, when the files cannot reproduce it, its diff blob) and the blobs of
// equal big data items, each holding its own reference. Deleting one
// leaves the other whole: Check finds nothing, its Diff and big data read
// back. Deleting the second deletes the blobs.
func TestSharedLayerBlobs(t *testing.T) {
	sparse, err := os.ReadFile("layerdiff/testdata/sparse-pax.tar")
	if err != nil {
		t.Fatal(err)
	}
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		ctx := context.Background()
		for name, c := range map[string]struct {
			diff  []byte
			label string
		}{
			"tar-split": {layerTar(t, sharedEntries), cslabels.TarSplit},
			"diff blob": {sparse, cslabels.DiffBlob},
		} {
			var ids []string
			var blob string
			for i := 0; i < 2; i++ {
				l, _, err := s.PutLayer("", "", nil, "", false, nil, bytes.NewReader(gz(c.diff)))
				if err != nil {
					t.Fatalf("%s: layer %d: %v", name, i, err)
				}
				if err := s.SetLayerBigData(l.ID, "item", strings.NewReader("same big data")); err != nil {
					t.Fatal(err)
				}
				info, err := sn.Stat(ctx, l.ID)
				if err != nil {
					t.Fatal(err)
				}
				if info.Labels[c.label] == "" || blob != "" && info.Labels[c.label] != blob {
					t.Fatalf("%s: layer %d records %s = %q, want %q", name, i, c.label, info.Labels[c.label], blob)
				}
				blob = info.Labels[c.label]
				ids = append(ids, l.ID)
			}
			big := digest.FromString("same big data")
			for _, d := range []digest.Digest{digest.Digest(blob), big} {
				info, err := cs.Info(ctx, d)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				n := 0
				for k := range info.Labels {
					if strings.HasPrefix(k, cslabels.BlobRefPrefix) {
						n++
					}
				}
				if n != 2 {
					t.Errorf("%s: blob %s shared by two layers has references %v", name, d, info.Labels)
				}
			}

			if err := s.DeleteLayer(ids[0]); err != nil {
				t.Fatal(err)
			}
			wantClean(t, s, CheckEverything(), name+": after deleting the first layer")
			u := Uncompressed
			rc, err := s.Diff("", ids[1], &DiffOptions{Compression: &u})
			if err != nil {
				t.Fatalf("%s: Diff of the layer left: %v", name, err)
			}
			got, _ := io.ReadAll(rc)
			rc.Close()
			if sha(got) != sha(c.diff) {
				t.Errorf("%s: Diff of the layer left is %s, want %s", name, sha(got), sha(c.diff))
			}
			rc2, err := s.LayerBigData(ids[1], "item")
			if err != nil {
				t.Fatalf("%s: big data of the layer left: %v", name, err)
			}
			got, _ = io.ReadAll(rc2)
			rc2.Close()
			if string(got) != "same big data" {
				t.Errorf("%s: big data of the layer left reads %q", name, got)
			}

			if err := s.DeleteLayer(ids[1]); err != nil {
				t.Fatal(err)
			}
			for _, d := range []digest.Digest{digest.Digest(blob), big} {
				if _, err := cs.Info(ctx, d); !errdefs.IsNotFound(err) {
					t.Errorf("%s: blob %s outlived both layers: %v", name, d, err)
				}
			}
			wantClean(t, s, CheckEverything(), name+": after deleting both")
		}
	})
}
