package storage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
)

// reportErrors flattens a report for messages.
func reportErrors(r CheckReport) string {
	var out []string
	for kind, m := range map[string]map[string][]error{"layer": r.Layers, "ro-layer": r.ROLayers, "image": r.Images, "ro-image": r.ROImages, "container": r.Containers} {
		for id, errs := range m {
			for _, err := range errs {
				out = append(out, kind+" "+id+": "+err.Error())
			}
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// wantClean checks that Check finds nothing.
func wantClean(t *testing.T, s Store, opts *CheckOptions, when string) {
	t.Helper()
	r, err := s.Check(opts)
	if err != nil {
		t.Fatalf("%s: Check: %v", when, err)
	}
	if e := reportErrors(r); e != "" {
		t.Errorf("%s: Check found problems:\n%s", when, e)
	}
}

// wantReported checks that errs holds an error that is want.
func wantReported(t *testing.T, errs []error, want error, what string) {
	t.Helper()
	for _, err := range errs {
		if errors.Is(err, want) {
			return
		}
	}
	t.Errorf("%s: want %v among %v", what, want, errs)
}

// wantReportedText checks that errs holds an error saying want.
func wantReportedText(t *testing.T, errs []error, want, what string) {
	t.Helper()
	for _, err := range errs {
		if strings.Contains(err.Error(), want) {
			return
		}
	}
	t.Errorf("%s: want an error saying %q among %v", what, want, errs)
}

// checkAndRepair checks with opts, hands the report to want, repairs with
// ropts and checks the store is clean then.
func checkAndRepair(t *testing.T, s Store, opts *CheckOptions, ropts *RepairOptions, want func(CheckReport)) {
	t.Helper()
	r, err := s.Check(opts)
	if err != nil {
		t.Fatal(err)
	}
	want(r)
	if errs := s.Repair(r, ropts); len(errs) > 0 {
		t.Errorf("Repair: %v", errs)
	}
	wantClean(t, s, opts, "after Repair")
}

// snapshotDir returns the directory holding snapshot key's own files.
func snapshotDir(t *testing.T, sn snapshots.Snapshotter, key string) string {
	t.Helper()
	info, err := sn.Stat(testCtx, key)
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind == snapshots.KindActive {
		m, err := sn.Mounts(testCtx, key)
		if err != nil {
			t.Fatal(err)
		}
		upper, _, err := overlayutils.Dirs(m, false)
		if err != nil {
			t.Fatal(err)
		}
		return upper
	}
	probe := "probe-" + newID()
	m, err := sn.View(testCtx, probe, key)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Remove(testCtx, probe)
	dir, _, err := overlayutils.Dirs(m, true)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// removeBehindBack removes a snapshot the store holds, as something else
// than the store might.
func removeBehindBack(t *testing.T, sn snapshots.Snapshotter, key string) {
	t.Helper()
	if _, err := sn.Update(testCtx, snapshots.Info{Name: key}, "labels."+cslabels.Owned); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(testCtx, key); err != nil {
		t.Fatal(err)
	}
}

// deleteBlobBehindBack deletes a blob the store references.
func deleteBlobBehindBack(t *testing.T, cs content.Store, dgst digest.Digest) {
	t.Helper()
	info, err := cs.Info(testCtx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for k := range info.Labels {
		if strings.HasPrefix(k, cslabels.BlobRefPrefix) {
			paths = append(paths, "labels."+k)
		}
	}
	if _, err := cs.Update(testCtx, content.Info{Digest: dgst}, paths...); err != nil {
		t.Fatal(err)
	}
	if err := cs.Delete(testCtx, dgst); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Info(testCtx, dgst); !errdefs.IsNotFound(err) {
		t.Fatalf("blob %s still there: %v", dgst, err)
	}
}

// blobFile is where the daemon keeps blob dgst.
func blobFile(s Store, dgst digest.Digest) string {
	return filepath.Join(s.GraphRoot(), "content", "blobs", dgst.Algorithm().String(), dgst.Encoded())
}

// overwrite replaces the bytes of a file behind everybody's back.
func overwrite(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func layerLabels(t *testing.T, sn snapshots.Snapshotter, key string) map[string]string {
	t.Helper()
	info, err := sn.Stat(testCtx, key)
	if err != nil {
		t.Fatal(err)
	}
	return info.Labels
}

var checkTar = []entry{
	{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644}, body: "hello\n"},
	{hdr: tar.Header{Name: "etc/other", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 7, Gid: 8}, body: "other\n"},
}

// uniqueTar is checkTar with a file naming name, so no two layers share a
// tar-split blob.
func uniqueTar(t *testing.T, name string) []byte {
	return layerTar(t, append(append([]entry(nil), checkTar...),
		entry{hdr: tar.Header{Name: "etc/name", Typeflag: tar.TypeReg, Mode: 0o644}, body: name}))
}

// realisticEntries have every kind of entry, with the attributes tools
// give them (a hard link's are its target's, a symlink's mode 0777).
var realisticEntries = []entry{
	{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 100}, body: "hello\n"},
	{hdr: tar.Header{Name: "etc/gone", Typeflag: tar.TypeReg, Mode: 0o600}, body: "to be deleted"},
	{hdr: tar.Header{Name: "etc/link", Typeflag: tar.TypeLink, Linkname: "etc/hello", Mode: 0o644, Uid: 1000, Gid: 100}},
	{hdr: tar.Header{Name: "etc/sym", Typeflag: tar.TypeSymlink, Linkname: "/etc/hello", Mode: 0o777}},
	{hdr: tar.Header{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "opt/old", Typeflag: tar.TypeReg, Mode: 0o644}, body: "hidden by an opaque directory"},
	{hdr: tar.Header{Name: "opt/" + strings.Repeat("long-name-", 20), Typeflag: tar.TypeReg, Mode: 0o644,
		PAXRecords: map[string]string{"SCHILY.xattr.user.test": "value"}}, body: "long"},
	{hdr: tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}},
	{hdr: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "bin/su", Typeflag: tar.TypeReg, Mode: 0o4755}, body: "setuid"},
}

var realisticChild = []entry{
	{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "etc/.wh.gone", Typeflag: tar.TypeReg}},
	{hdr: tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 5}, body: "changed\n"},
	{hdr: tar.Header{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o700}},
	{hdr: tar.Header{Name: "opt/.wh..wh..opq", Typeflag: tar.TypeReg}},
	{hdr: tar.Header{Name: "opt/new", Typeflag: tar.TypeReg, Mode: 0o644}, body: "new"},
	{hdr: tar.Header{Name: "new", Typeflag: tar.TypeReg, Mode: 0o755}, body: "new file"},
}

// imageOn makes a layer and an image on it with a big data item.
func imageOn(t *testing.T, s Store, name string) (*Layer, *Image) {
	t.Helper()
	l, _, err := s.PutLayer("", "", []string{name + "-layer"}, "", false, nil, bytes.NewReader(uniqueTar(t, name)))
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.CreateImage("", []string{name}, l.ID, "", &ImageOptions{BigData: []ImageBigDataOption{{Key: "config", Data: []byte(`{"config":"` + name + `"}`)}}})
	if err != nil {
		t.Fatal(err)
	}
	return l, img
}

func gone(t *testing.T, s Store, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if s.Exists(id) {
			t.Errorf("%s still exists after Repair", id)
		}
	}
}

func there(t *testing.T, s Store, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if !s.Exists(id) {
			t.Errorf("%s is gone", id)
		}
	}
}

// TestCheckClean: a store holding layers of every kind, images and
// containers checks clean, and Repair of a clean report changes nothing.
func TestCheckClean(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		wantClean(t, s, CheckEverything(), "empty store")
		base, _, err := s.PutLayer("", "", []string{"base"}, "", false, nil, bytes.NewReader(gz(layerTar(t, realisticEntries))))
		if err != nil {
			t.Fatal(err)
		}
		child, _, err := s.PutLayer("", base.ID, nil, "", false, nil, bytes.NewReader(layerTar(t, realisticChild)))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetLayerBigData(child.ID, "note", strings.NewReader("layer data")); err != nil {
			t.Fatal(err)
		}
		img, err := s.CreateImage("", []string{"img"}, child.ID, "", &ImageOptions{BigData: []ImageBigDataOption{{Key: "config", Data: []byte("{}")}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetImageBigData(img.ID, "manifest", []byte(`{"schemaVersion":2}`), manifestDigest); err != nil {
			t.Fatal(err)
		}
		c, err := s.CreateContainer("", []string{"ctr"}, img.ID, "", "", &ContainerOptions{BigData: []ContainerBigDataOption{{Key: "config.json", Data: []byte("{}")}}})
		if err != nil {
			t.Fatal(err)
		}
		// A container's mounted layer, with files of its own.
		mp, err := s.Mount(c.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mp, "scratch"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		// A writeable layer with a diff applied, and an empty read-only one.
		rw, err := s.CreateLayer("", "", []string{"rw"}, "", true, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ApplyDiff(rw.ID, bytes.NewReader(uniqueTar(t, "rw"))); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateImage("", []string{"rw-img"}, rw.ID, "", nil); err != nil {
			t.Fatal(err)
		}
		empty, err := s.CreateLayer("", "", nil, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateImage("", nil, empty.ID, "", nil); err != nil {
			t.Fatal(err)
		}
		// A snapshot containerd made (a read-only layer here).
		if _, err := sn.Prepare(testCtx, "default/1/extract", ""); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(testCtx, "default/2/sha256:"+strings.Repeat("1", 64), "default/1/extract"); err != nil {
			t.Fatal(err)
		}

		before := storeState(t, s, cs)
		wantClean(t, s, CheckEverything(), "full store")
		wantClean(t, s, CheckMost(), "full store, quick")
		wantClean(t, s, nil, "full store, default options")
		r, err := s.Check(CheckEverything())
		if err != nil {
			t.Fatal(err)
		}
		if errs := s.Repair(r, RepairEverything()); len(errs) != 0 {
			t.Errorf("Repair of a clean report: %v", errs)
		}
		if after := storeState(t, s, cs); after != before {
			t.Errorf("Check and Repair of a clean store changed it:\nbefore %s\nafter  %s", before, after)
		}
		if n, err := s.Mounted(c.ID); err != nil || n != 1 {
			t.Errorf("the container's mount: %d, %v", n, err)
		}
		// Check leaves neither views nor mounts behind.
		sn.Walk(testCtx, func(_ context.Context, info snapshots.Info) error {
			if strings.HasPrefix(info.Name, viewPrefix) {
				t.Errorf("Check left view %s", info.Name)
			}
			return nil
		})
		if left, _ := filepath.Glob(filepath.Join(s.RunRoot(), ".check-*")); len(left) > 0 {
			t.Errorf("Check left %v", left)
		}

		// A change in the base layer shows in the layers above it too.
		su := filepath.Join(snapshotDir(t, sn, base.ID), "bin", "su")
		if err := os.Chmod(su, 0o700); err != nil {
			t.Fatal(err)
		}
		r, err = s.Check(CheckEverything())
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{base.ID, child.ID} {
			wantReportedText(t, r.Layers[id], "/bin/su(mode:4755￫0700)", "layer "+id)
		}
		wantReported(t, r.Images[img.ID], ErrLayerContentModified, "image")
		if err := os.Chmod(su, 0o4755); err != nil {
			t.Fatal(err)
		}
		wantClean(t, s, CheckEverything(), "mode restored")
	})
}

// TestCheckLayers: each kind of damage to a layer is reported, on the
// layer and on the images using it; Repair removes them, and then the
// store checks clean.
func TestCheckLayers(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		keep, keepImg := imageOn(t, s, "keep")

		t.Run("tar-split blob missing", func(t *testing.T) {
			l, img := imageOn(t, s, "no-tar-split")
			deleteBlobBehindBack(t, cs, digest.Digest(layerLabels(t, sn, l.ID)[cslabels.TarSplit]))
			checkAndRepair(t, s, CheckMost(), nil, func(r CheckReport) {
				wantReportedText(t, r.Layers[l.ID], "tar-split of layer "+l.ID, "layer")
				wantReportedText(t, r.Images[img.ID], "tar-split of layer "+l.ID, "image")
				if len(r.Layers) != 1 || len(r.Images) != 1 {
					t.Errorf("report names more:\n%s", reportErrors(r))
				}
			})
			gone(t, s, l.ID, img.ID)
		})

		t.Run("file content changed", func(t *testing.T) {
			l, img := imageOn(t, s, "changed")
			overwrite(t, filepath.Join(snapshotDir(t, sn, l.ID), "etc", "hello"), []byte("HELLO\n"))
			checkAndRepair(t, s, CheckMost(), nil, func(r CheckReport) {
				wantReportedText(t, r.Layers[l.ID], "checksum", "layer")
				wantReportedText(t, r.Images[img.ID], "checksum", "image")
			})
			gone(t, s, l.ID, img.ID)
		})

		t.Run("recorded digest and size", func(t *testing.T) {
			l, img := imageOn(t, s, "relabelled")
			if _, err := sn.Update(testCtx, snapshots.Info{Name: l.ID, Labels: map[string]string{
				cslabels.UncompressedDigest: digest.FromString("something else").String(),
				cslabels.UncompressedSize:   "12345",
			}}, "labels."+cslabels.UncompressedDigest, "labels."+cslabels.UncompressedSize); err != nil {
				t.Fatal(err)
			}
			checkAndRepair(t, s, CheckMost(), nil, func(r CheckReport) {
				wantReported(t, r.Layers[l.ID], ErrLayerIncorrectContentDigest, "layer")
				wantReported(t, r.Layers[l.ID], ErrLayerIncorrectContentSize, "layer")
				wantReported(t, r.Images[img.ID], ErrLayerIncorrectContentDigest, "image")
			})
			gone(t, s, l.ID, img.ID)
		})

		t.Run("snapshot directory missing", func(t *testing.T) {
			l, img := imageOn(t, s, "no-dir")
			if err := os.RemoveAll(snapshotDir(t, sn, l.ID)); err != nil {
				t.Fatal(err)
			}
			checkAndRepair(t, s, CheckMost(), nil, func(r CheckReport) {
				wantReportedText(t, r.Layers[l.ID], "no such file or directory", "layer")
				wantReportedText(t, r.Images[img.ID], "no such file or directory", "image")
			})
			gone(t, s, l.ID, img.ID)
		})

		t.Run("contents modified", func(t *testing.T) {
			l, img := imageOn(t, s, "modified")
			dir := snapshotDir(t, sn, l.ID)
			if err := os.Chmod(filepath.Join(dir, "etc", "hello"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "etc", "added"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			wantClean(t, s, CheckMost(), "quick check of changed permissions") // only the full check looks
			checkAndRepair(t, s, CheckEverything(), nil, func(r CheckReport) {
				wantReported(t, r.Layers[l.ID], ErrLayerContentModified, "layer")
				wantReportedText(t, r.Layers[l.ID], "/etc/hello(mode:0644￫0600)", "layer")
				wantReportedText(t, r.Layers[l.ID], "+/etc/added", "layer")
				wantReported(t, r.Images[img.ID], ErrLayerContentModified, "image")
			})
			gone(t, s, l.ID, img.ID)
		})

		t.Run("big data missing", func(t *testing.T) {
			l, img := imageOn(t, s, "no-data")
			if err := s.SetLayerBigData(l.ID, "k", strings.NewReader("v")); err != nil {
				t.Fatal(err)
			}
			deleteBlobBehindBack(t, cs, digest.FromString("v"))
			checkAndRepair(t, s, CheckMost(), nil, func(r CheckReport) {
				wantReported(t, r.Layers[l.ID], ErrLayerDataMissing, "layer")
				wantReported(t, r.Images[img.ID], ErrLayerDataMissing, "image")
			})
			gone(t, s, l.ID, img.ID)
		})

		t.Run("unreferenced", func(t *testing.T) {
			l, err := s.CreateLayer("", "", []string{"lonely"}, "", false, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantClean(t, s, CheckMost(), "a young unreferenced layer")
			zero := time.Duration(0)
			opts := CheckMost()
			opts.LayerUnreferencedMaximumAge = &zero
			checkAndRepair(t, s, opts, nil, func(r CheckReport) {
				wantReported(t, r.Layers[l.ID], ErrLayerUnreferenced, "layer")
				if len(r.Layers) != 1 {
					t.Errorf("report names more:\n%s", reportErrors(r))
				}
			})
			gone(t, s, l.ID)
		})

		t.Run("incomplete", func(t *testing.T) {
			// What PutLayer leaves if its process dies, and a layer whose
			// ApplyDiff stopped half-way.
			dead := newID()
			if _, err := sn.Prepare(testCtx, incompletePrefix+dead, "", snapshots.WithLabels(map[string]string{
				cslabels.Owned: "store", cslabels.Incomplete: "applying"})); err != nil {
				t.Fatal(err)
			}
			half, err := s.CreateLayer("", "", nil, "", true, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sn.Update(testCtx, snapshots.Info{Name: rwPrefix + half.ID, Labels: map[string]string{cslabels.Incomplete: "applying"}}, "labels."+cslabels.Incomplete); err != nil {
				t.Fatal(err)
			}
			wantClean(t, s, CheckEverything(), "incomplete layers written to just now")
			// Left alone long enough, they count as abandoned even
			// though unreferenced layers would not yet.
			old := staleAfter
			staleAfter = -time.Hour
			r, err := s.Check(CheckEverything())
			staleAfter = old
			if err != nil {
				t.Fatal(err)
			}
			wantReported(t, r.Layers[dead], ErrLayerUnaccounted, "PutLayer's remains, default options")
			wantReported(t, r.Layers[half.ID], ErrLayerIncomplete, "half-applied layer, default options")
			zero := time.Duration(0)
			opts := CheckEverything()
			opts.LayerUnreferencedMaximumAge = &zero
			checkAndRepair(t, s, opts, nil, func(r CheckReport) {
				wantReported(t, r.Layers[dead], ErrLayerUnaccounted, "PutLayer's remains")
				wantReported(t, r.Layers[half.ID], ErrLayerIncomplete, "half-applied layer")
				if len(r.Layers) != 2 {
					t.Errorf("report names more:\n%s", reportErrors(r))
				}
			})
			if _, err := sn.Stat(testCtx, incompletePrefix+dead); !errdefs.IsNotFound(err) {
				t.Errorf("incomplete snapshot after Repair: %v", err)
			}
			gone(t, s, half.ID)
		})

		there(t, s, keep.ID, keepImg.ID, "keep-layer")
		wantClean(t, s, CheckEverything(), "the end")
	})
}

// TestCheckImagesAndContainers: images missing their layer or big data,
// containers missing their image, big data or layer directory.
func TestCheckImagesAndContainers(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		keep, keepImg := imageOn(t, s, "keep")

		t.Run("image top layer missing", func(t *testing.T) {
			l, img := imageOn(t, s, "no-top")
			removeBehindBack(t, sn, l.ID)
			checkAndRepair(t, s, CheckMost(), nil, func(r CheckReport) {
				wantReported(t, r.Images[img.ID], ErrImageLayerMissing, "image")
				if len(r.Images) != 1 || len(r.Layers) != 0 {
					t.Errorf("report names more:\n%s", reportErrors(r))
				}
			})
			gone(t, s, img.ID)
		})

		t.Run("image big data missing", func(t *testing.T) {
			l, img := imageOn(t, s, "no-config")
			deleteBlobBehindBack(t, cs, img.BigDataDigests["config"])
			checkAndRepair(t, s, CheckMost(), nil, func(r CheckReport) {
				wantReported(t, r.Images[img.ID], ErrImageDataMissing, "image")
				if len(r.Layers) != 0 {
					t.Errorf("the layer is fine:\n%s", reportErrors(r))
				}
			})
			gone(t, s, img.ID, l.ID) // the image's layers go with it
		})

		t.Run("image big data corrupt", func(t *testing.T) {
			_, img := imageOn(t, s, "bad-config")
			d := img.BigDataDigests["config"]
			data, err := s.ImageBigData(img.ID, "config")
			if err != nil {
				t.Fatal(err)
			}
			overwrite(t, blobFile(s, d), bytes.ToUpper(data))
			_, img2 := imageOn(t, s, "short-config")
			overwrite(t, blobFile(s, img2.BigDataDigests["config"]), []byte("{}"))
			checkAndRepair(t, s, CheckMost(), nil, func(r CheckReport) {
				wantReported(t, r.Images[img.ID], ErrImageDataIncorrectDigest, "same size")
				wantReported(t, r.Images[img2.ID], ErrImageDataIncorrectSize, "other size")
			})
			gone(t, s, img.ID, img2.ID)
		})

		t.Run("container image missing", func(t *testing.T) {
			_, img := imageOn(t, s, "vanishing")
			c, err := s.CreateContainer("", []string{"orphan"}, img.ID, "", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			// The record goes behind the store's back.
			var rec digest.Digest
			cs.Walk(testCtx, func(info content.Info) error {
				if info.Labels[cslabels.ImageID] == img.ID {
					rec = info.Digest
				}
				return nil
			})
			deleteBlobBehindBack(t, cs, rec)
			r, err := s.Check(CheckMost())
			if err != nil {
				t.Fatal(err)
			}
			wantReported(t, r.Containers[c.ID], ErrContainerImageMissing, "container")
			// Without RemoveContainers the container stays, and so does
			// its layer; nothing else is wrong, so nothing fails.
			if errs := s.Repair(r, &RepairOptions{}); len(errs) != 0 {
				t.Errorf("Repair: %v", errs)
			}
			there(t, s, c.ID)
			checkAndRepair(t, s, CheckMost(), RepairEverything(), func(r CheckReport) {
				wantReported(t, r.Containers[c.ID], ErrContainerImageMissing, "container")
			})
			gone(t, s, c.ID)
		})

		t.Run("container big data missing", func(t *testing.T) {
			c, err := s.CreateContainer("", nil, keepImg.ID, "", "", &ContainerOptions{BigData: []ContainerBigDataOption{{Key: "state", Data: []byte("running")}}})
			if err != nil {
				t.Fatal(err)
			}
			deleteBlobBehindBack(t, cs, digest.FromString("running"))
			checkAndRepair(t, s, CheckMost(), RepairEverything(), func(r CheckReport) {
				wantReported(t, r.Containers[c.ID], ErrContainerDataMissing, "container")
				if len(r.Containers) != 1 || len(r.Images) != 0 || len(r.Layers) != 0 {
					t.Errorf("report names more:\n%s", reportErrors(r))
				}
			})
			gone(t, s, c.ID)
		})

		t.Run("container layer directory missing", func(t *testing.T) {
			c, err := s.CreateContainer("", nil, keepImg.ID, "", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(snapshotDir(t, sn, rwPrefix+c.LayerID)); err != nil {
				t.Fatal(err)
			}
			r, err := s.Check(CheckMost())
			if err != nil {
				t.Fatal(err)
			}
			wantReportedText(t, r.Layers[c.LayerID], "snapshot directory", "layer")
			wantReportedText(t, r.Containers[c.ID], "snapshot directory", "container")
			if errs := s.Repair(r, &RepairOptions{}); len(errs) != 0 {
				t.Errorf("Repair without removing containers: %v", errs)
			}
			there(t, s, c.ID) // left to the container
			checkAndRepair(t, s, CheckMost(), RepairEverything(), func(CheckReport) {})
			gone(t, s, c.ID, c.LayerID)
		})

		there(t, s, keep.ID, keepImg.ID)
		wantClean(t, s, CheckEverything(), "the end")
	})
}

// TestCheckReadOnly: damage to what containerd made is reported as
// read-only and left alone by Repair.
func TestCheckReadOnly(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		key := "default/3/sha256:" + strings.Repeat("2", 64)
		if _, err := sn.Prepare(testCtx, "default/1/extract", ""); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(snapshotDir(t, sn, "default/1/extract"), "f"), []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
		// A digest no diff of it has.
		if err := sn.Commit(testCtx, key, "default/1/extract", snapshots.WithLabels(map[string]string{
			cslabels.UncompressedDigest: digest.FromString("not it").String(),
		})); err != nil {
			t.Fatal(err)
		}
		l, err := s.Layer(key)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Check(CheckEverything())
		if err != nil {
			t.Fatal(err)
		}
		wantReported(t, r.ROLayers[l.ID], ErrLayerIncorrectContentDigest, "containerd's layer")
		if len(r.Layers) != 0 || len(r.ROLayers) != 1 {
			t.Errorf("report:\n%s", reportErrors(r))
		}
		if errs := s.Repair(r, RepairEverything()); len(errs) != 0 {
			t.Errorf("Repair: %v", errs)
		}
		there(t, s, l.ID)
	})
}

// TestParentOwners: without ID mappings no parent directory of a mount
// point has an owner a layer cannot map.
func TestParentOwners(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		l, img := imageOn(t, s, "owners")
		c, err := s.CreateContainer("", []string{"owners-ctr"}, img.ID, "", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{l.ID, "owners-layer", c.LayerID} {
			if uids, gids, err := s.LayerParentOwners(id); err != nil || uids != nil || gids != nil {
				t.Errorf("LayerParentOwners(%s) = %v, %v, %v", id, uids, gids, err)
			}
		}
		if _, _, err := s.LayerParentOwners("nope"); !errors.Is(err, ErrLayerUnknown) {
			t.Errorf("LayerParentOwners of nothing: %v", err)
		}
		for _, id := range []string{"owners-ctr", c.ID, c.LayerID} {
			if uids, gids, err := s.ContainerParentOwners(id); err != nil || uids != nil || gids != nil {
				t.Errorf("ContainerParentOwners(%s) = %v, %v, %v", id, uids, gids, err)
			}
		}
		if _, _, err := s.ContainerParentOwners(l.ID); !errors.Is(err, ErrContainerUnknown) {
			t.Errorf("ContainerParentOwners of a layer: %v", err)
		}
	})
}

// staleNow makes GarbageCollect take everything for stale for the test.
func staleNow(t *testing.T) {
	old := staleAfter
	staleAfter = -time.Hour
	t.Cleanup(func() { staleAfter = old })
}

func snapshotExists(sn snapshots.Snapshotter, key string) bool {
	_, err := sn.Stat(testCtx, key)
	return err == nil
}

func blobExists(cs content.Store, dgst digest.Digest) bool {
	_, err := cs.Info(testCtx, dgst)
	return err == nil
}

// rawBlob writes a blob carrying labels behind the store's back.
func rawBlob(t *testing.T, cs content.Store, data string, labels map[string]string) digest.Digest {
	t.Helper()
	d := digest.FromString(data)
	if err := content.WriteBlob(testCtx, cs, "test-"+d.Encoded(), strings.NewReader(data), ocispec.Descriptor{Digest: d, Size: int64(len(data))}, content.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestGarbageCollect(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		l, img := imageOn(t, s, "live")
		if err := s.SetLayerBigData(l.ID, "k", strings.NewReader("layer item")); err != nil {
			t.Fatal(err)
		}
		c, err := s.CreateContainer("", nil, img.ID, "", "", &ContainerOptions{BigData: []ContainerBigDataOption{{Key: "k", Data: []byte("container item")}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ContainerDirectory(c.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ContainerRunDirectory(c.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.GarbageCollect(); err != nil {
			t.Fatal(err)
		}
		staleNow(t)
		live := storeState(t, s, cs)
		if err := s.GarbageCollect(); err != nil {
			t.Fatal(err)
		}
		if after := storeState(t, s, cs); after != live {
			t.Errorf("GarbageCollect of a store with no garbage changed it:\nbefore %s\nafter  %s", live, after)
		}

		t.Run("container directories", func(t *testing.T) {
			var orphans []string
			for _, root := range []string{s.GraphRoot(), s.RunRoot()} {
				orphan := filepath.Join(root, "overlay-containers", strings.Repeat("e", 64), "userdata")
				other := filepath.Join(root, "overlay-containers", "not-a-container-id")
				for _, d := range []string{orphan, other} {
					if err := os.MkdirAll(d, 0o700); err != nil {
						t.Fatal(err)
					}
				}
				orphans = append(orphans, filepath.Dir(orphan))
			}
			if err := s.GarbageCollect(); err != nil {
				t.Fatal(err)
			}
			for _, d := range orphans {
				if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s survived: %v", d, err)
				}
			}
			for _, root := range []string{s.GraphRoot(), s.RunRoot()} {
				for _, keep := range []string{c.ID, "not-a-container-id"} {
					if _, err := os.Stat(filepath.Join(root, "overlay-containers", keep)); err != nil {
						t.Errorf("%s: %v", keep, err)
					}
				}
			}
		})

		t.Run("incomplete layers", func(t *testing.T) {
			dead := newID()
			if _, err := sn.Prepare(testCtx, incompletePrefix+dead, l.ID, snapshots.WithLabels(map[string]string{
				cslabels.Owned: "store", cslabels.Incomplete: "applying"})); err != nil {
				t.Fatal(err)
			}
			// Its tar-split, stored before the crash.
			ts := rawBlob(t, cs, "tar-split of "+dead, map[string]string{cslabels.BlobRefPrefix + dead + ".tar-split": "tar-split"})
			half, err := s.CreateLayer("", "", nil, "", true, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sn.Update(testCtx, snapshots.Info{Name: rwPrefix + half.ID, Labels: map[string]string{cslabels.Incomplete: "applying"}}, "labels."+cslabels.Incomplete); err != nil {
				t.Fatal(err)
			}
			// Written to recently: under way.
			staleAfter = time.Hour
			if err := s.GarbageCollect(); err != nil {
				t.Fatal(err)
			}
			if !snapshotExists(sn, incompletePrefix+dead) || !s.Exists(half.ID) || !blobExists(cs, ts) {
				t.Fatal("GarbageCollect took layers under way")
			}
			staleAfter = -time.Hour
			if err := s.GarbageCollect(); err != nil {
				t.Fatal(err)
			}
			if snapshotExists(sn, incompletePrefix+dead) || s.Exists(half.ID) || blobExists(cs, ts) {
				t.Error("incomplete layers, or the tar-split of one, survived")
			}
			there(t, s, l.ID, img.ID, c.ID)
		})

		t.Run("views and mounts", func(t *testing.T) {
			view := viewPrefix + newID()
			if _, err := sn.View(testCtx, view, l.ID, snapshots.WithLabels(map[string]string{cslabels.Owned: "store"})); err != nil {
				t.Fatal(err)
			}
			other, _, err := s.PutLayer("", "", []string{"mounted-twice"}, "", false, nil, bytes.NewReader(uniqueTar(t, "mounted-twice")))
			if err != nil {
				t.Fatal(err)
			}
			mp, err := s.Mount(l.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			stays, err := s.Mount(other.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			// A reboot, or someone, unmounts it behind the store's back.
			if err := unix.Unmount(mp, 0); err != nil {
				t.Fatal(err)
			}
			if err := s.GarbageCollect(); err != nil {
				t.Fatal(err)
			}
			if snapshotExists(sn, view) || snapshotExists(sn, mountPrefix+l.ID) {
				t.Error("a stale view survived")
			}
			if n, err := s.Mounted(l.ID); err != nil || n != 0 {
				t.Errorf("count of a mount that is gone: %d, %v", n, err)
			}
			if n, err := s.Mounted(other.ID); err != nil || n != 1 || !snapshotExists(sn, mountPrefix+other.ID) {
				t.Errorf("a live mount: count %d, %v", n, err)
			}
			if _, err := os.Stat(filepath.Join(stays, "etc", "hello")); err != nil {
				t.Error(err)
			}
			if _, err := s.Unmount(other.ID, true); err != nil {
				t.Fatal(err)
			}
			// With its mount view gone the layer deletes.
			if err := s.DeleteLayer(other.ID); err != nil {
				t.Fatal(err)
			}
		})

		t.Run("blobs", func(t *testing.T) {
			gl, gimg := imageOn(t, s, "dying")
			if err := s.SetLayerBigData(gl.ID, "k", strings.NewReader("dying layer item")); err != nil {
				t.Fatal(err)
			}
			gc, err := s.CreateContainer("", nil, gimg.ID, "", "", &ContainerOptions{BigData: []ContainerBigDataOption{{Key: "k", Data: []byte("dying container item")}}})
			if err != nil {
				t.Fatal(err)
			}
			tarSplit := digest.Digest(layerLabels(t, sn, gl.ID)[cslabels.TarSplit])
			var record digest.Digest
			cs.Walk(testCtx, func(info content.Info) error {
				if info.Labels[cslabels.ImageID] == gimg.ID {
					record = info.Digest
				}
				return nil
			})
			config := gimg.BigDataDigests["config"]
			// The container, the image record and the layer go behind the
			// store's back, leaving their blobs referenced.
			removeBehindBack(t, sn, rwPrefix+gc.LayerID)
			// (what a CreateImage that died before labelling its record leaves)
			if _, err := cs.Update(testCtx, content.Info{Digest: record}, "labels."+cslabels.ImageID, "labels."+cslabels.ImageMarker, "labels."+cslabels.ImageDoc); err != nil {
				t.Fatal(err)
			}
			removeBehindBack(t, sn, gl.ID)
			dead := []digest.Digest{tarSplit, record, config, digest.FromString("dying layer item"), digest.FromString("dying container item")}
			// Blobs with references of forms the store does not know, or
			// the daemon's own, stay.
			weird := rawBlob(t, cs, "weird", map[string]string{cslabels.BlobRefPrefix + "something": "x"})
			daemons := rawBlob(t, cs, "daemon's", map[string]string{cslabels.BlobRefPrefix + "snapshot.42.tar-split": "tar-split"})
			// A blob both a live and a dead item reference loses only the
			// dead reference.
			shared := rawBlob(t, cs, "shared", map[string]string{cslabels.BlobRefPrefix + "container." + strings.Repeat("9", 64) + ".bigdata/x": "bigdata"})
			if err := s.SetLayerBigData(l.ID, "shared", strings.NewReader("shared")); err != nil {
				t.Fatal(err)
			}
			for _, d := range dead {
				if !blobExists(cs, d) {
					t.Fatalf("blob %s gone before GarbageCollect", d)
				}
			}
			staleAfter = time.Hour
			if err := s.GarbageCollect(); err != nil {
				t.Fatal(err)
			}
			for _, d := range dead {
				if !blobExists(cs, d) {
					t.Errorf("blob %s, written just now, collected", d)
				}
			}
			staleAfter = -time.Hour
			if err := s.GarbageCollect(); err != nil {
				t.Fatal(err)
			}
			for _, d := range dead {
				if blobExists(cs, d) {
					t.Errorf("blob %s survived", d)
				}
			}
			for _, d := range []digest.Digest{weird, daemons, shared} {
				if !blobExists(cs, d) {
					t.Errorf("blob %s collected", d)
				}
			}
			info, err := cs.Info(testCtx, shared)
			if err != nil {
				t.Fatal(err)
			}
			for k := range info.Labels {
				if strings.Contains(k, "container.") {
					t.Errorf("dead reference %s kept", k)
				}
			}
			if r, err := s.LayerBigData(l.ID, "shared"); err != nil {
				t.Errorf("live item: %v", err)
			} else {
				r.Close()
			}
		})

		there(t, s, l.ID, img.ID, c.ID)
		for _, key := range []string{"k"} {
			if _, err := s.ContainerBigData(c.ID, key); err != nil {
				t.Error(err)
			}
		}
		wantClean(t, s, CheckEverything(), "after collecting")
	})
}

// TestGarbageCollectIngests: GarbageCollect aborts the store's own ingests
// nobody writes any more (what a client killed while it wrote leaves),
// however recent, and never one whose writer is open, however long it has
// been idle; containerd's ingests are left to containerd. The store stays
// intact, and the ref of an aborted ingest can be written again.
func TestGarbageCollectIngests(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		l, img := imageOn(t, s, "ingests")
		c, err := s.CreateContainer("", nil, img.ID, "", "", &ContainerOptions{BigData: []ContainerBigDataOption{{Key: "k", Data: []byte("container item")}}})
		if err != nil {
			t.Fatal(err)
		}
		// The store's own content store: through the daemon, a writer
		// lives in the daemon as long as this client's stream does.
		scs := s.(*store).cs
		dead := "cs.bigdata." + l.ID + "." + digest.FromString("k").Encoded()
		w, err := scs.Writer(testCtx, content.WithRef(dead))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(bytes.Repeat([]byte("x"), 1<<20)); err != nil {
			t.Fatal(err)
		}
		w.Close() // the client is gone
		live := "cs.bigdata." + l.ID + ".live"
		lw, err := scs.Writer(testCtx, content.WithRef(live))
		if err != nil {
			t.Fatal(err)
		}
		defer lw.Close()
		half := bytes.Repeat([]byte("half of it, "), 1<<15) // written through to the file
		if _, err := lw.Write(half); err != nil {
			t.Fatal(err)
		}
		// containerd's ingest (through containerd its refs begin with the
		// namespace), and one of a client of the socket.
		var theirs []string
		for _, ref := range []string{"default-7-layer-sha256:" + strings.Repeat("a", 64), "pull-1"} {
			w, err := cs.Writer(testCtx, content.WithRef(ref))
			if err != nil {
				t.Fatal(err)
			}
			w.Write([]byte("partial"))
			w.Close()
			theirs = append(theirs, ref)
		}
		before := storeState(t, s, cs)

		// An hour idle, as far as the live ingest's files say.
		if st, err := cs.Status(testCtx, live); err != nil || st.Offset == 0 {
			t.Fatalf("live ingest: %+v, %v", st, err)
		}
		old := time.Now().Add(-time.Hour)
		filepath.Walk(filepath.Join(s.GraphRoot(), "content", "ingest"), func(p string, _ os.FileInfo, err error) error {
			if err == nil {
				os.Chtimes(p, old, old)
			}
			return nil
		})
		if err := s.GarbageCollect(); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.Status(testCtx, dead); !errdefs.IsNotFound(err) {
			t.Errorf("the ingest of a client that is gone survived: %v", err)
		}
		if _, err := cs.Status(testCtx, live); err != nil {
			t.Errorf("the ingest of a live writer was aborted: %v", err)
		}
		for _, ref := range theirs {
			if _, err := cs.Status(testCtx, ref); err != nil {
				t.Errorf("ingest %s, not the store's, was aborted: %v", ref, err)
			}
		}
		if after := storeState(t, s, cs); after != before {
			t.Errorf("GarbageCollect changed the store:\nbefore %s\nafter  %s", before, after)
		}

		// The live writer goes on; the dead ingest's ref works again.
		if _, err := lw.Write([]byte("and the rest")); err != nil {
			t.Fatal(err)
		}
		want := digest.FromBytes(append(half, "and the rest"...))
		if err := lw.Commit(testCtx, 0, want); err != nil {
			t.Fatalf("Commit of the live ingest: %v", err)
		}
		if !blobExists(cs, want) {
			t.Error("the live ingest's blob is missing")
		}
		if err := s.SetLayerBigData(l.ID, "k", strings.NewReader("layer item")); err != nil {
			t.Fatal(err)
		}
		if r, err := s.LayerBigData(l.ID, "k"); err != nil {
			t.Error(err)
		} else {
			r.Close()
		}
		// A second pass finds nothing of the store's to abort.
		if err := s.GarbageCollect(); err != nil {
			t.Fatal(err)
		}
		st, err := scs.ListStatuses(testCtx, contentstore.OwnIngests)
		if err != nil || len(st) != 0 {
			t.Errorf("own ingests after GarbageCollect: %+v, %v", st, err)
		}
		there(t, s, l.ID, img.ID, c.ID)
		wantClean(t, s, CheckEverything(), "after collecting ingests")
	})
}

// racingSnapshots runs after once its first Walk is done: a change made
// between Check's listing of the layers and what it does next.
type racingSnapshots struct {
	snapshots.Snapshotter
	after func()
}

func (r *racingSnapshots) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	err := r.Snapshotter.Walk(ctx, fn, filters...)
	if r.after != nil {
		after := r.after
		r.after = nil
		after()
	}
	return err
}

// racingContent runs after once its first Walk is done: a change made
// between Check's listing of the images and what it does next.
type racingContent struct {
	content.Store
	after func()
}

func (r *racingContent) Walk(ctx context.Context, fn content.WalkFunc, filters ...string) error {
	err := r.Store.Walk(ctx, fn, filters...)
	if r.after != nil {
		after := r.after
		r.after = nil
		after()
	}
	return err
}

// TestCheckRaces: what changes while Check runs (containerd removing its
// images and snapshots, other clients of the daemon creating and deleting)
// is no damage: a layer, image or container that went after Check listed
// it, or that appeared or came into use after, is not reported; damage that
// is still there when Check looks again is.
func TestCheckRaces(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		st := s.(*store)
		// check runs Check on the store with after run once the layers
		// (snapAfter) or the images (contentAfter) are listed.
		check := func(opts *CheckOptions, snapAfter, contentAfter func()) CheckReport {
			t.Helper()
			racing := *st
			racing.sn = &racingSnapshots{Snapshotter: st.sn, after: snapAfter}
			racing.cs = &racingContent{Store: st.cs, after: contentAfter}
			r, err := racing.Check(opts)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			return r
		}
		keep, keepImg := imageOn(t, s, "keep")

		t.Run("containerd's layer removed", func(t *testing.T) {
			key := "default/3/sha256:" + strings.Repeat("3", 64)
			if _, err := sn.Prepare(testCtx, "default/2/extract", ""); err != nil {
				t.Fatal(err)
			}
			// A digest no diff of it has: damage, were it still there.
			if err := sn.Commit(testCtx, key, "default/2/extract", snapshots.WithLabels(map[string]string{
				cslabels.UncompressedDigest: digest.FromString("not it").String(),
			})); err != nil {
				t.Fatal(err)
			}
			r := check(CheckEverything(), func() {
				if err := sn.Remove(testCtx, key); err != nil {
					t.Error(err)
				}
			}, nil)
			if e := reportErrors(r); e != "" {
				t.Errorf("a layer removed after the listing is reported:\n%s", e)
			}
		})

		t.Run("image made after the layers were listed", func(t *testing.T) {
			var late *Image
			r := check(CheckEverything(), func() { _, late = imageOn(t, s, "late") }, nil)
			if e := reportErrors(r); e != "" {
				t.Errorf("an image made meanwhile is reported:\n%s", e)
			}
			there(t, s, late.ID, late.TopLayer)
		})

		t.Run("container and image deleted after the layers were listed", func(t *testing.T) {
			l, img := imageOn(t, s, "leaving")
			c, err := s.CreateContainer("", nil, img.ID, "", "", &ContainerOptions{BigData: []ContainerBigDataOption{{Key: "k", Data: []byte("leaving item")}}})
			if err != nil {
				t.Fatal(err)
			}
			r := check(CheckEverything(), func() {
				if err := s.DeleteContainer(c.ID); err != nil {
					t.Error(err)
				}
				if _, err := s.DeleteImage(img.ID, true); err != nil {
					t.Error(err)
				}
			}, nil)
			if e := reportErrors(r); e != "" {
				t.Errorf("a container, image and layer deleted meanwhile are reported:\n%s", e)
			}
			gone(t, s, c.ID, img.ID, l.ID)
		})

		t.Run("image deleted after the images were listed", func(t *testing.T) {
			l, img := imageOn(t, s, "going")
			r := check(CheckEverything(), nil, func() {
				if _, err := s.DeleteImage(img.ID, true); err != nil {
					t.Error(err)
				}
			})
			if e := reportErrors(r); e != "" {
				t.Errorf("an image deleted meanwhile is reported:\n%s", e)
			}
			gone(t, s, img.ID, l.ID)
		})

		t.Run("old layer used after the images were listed", func(t *testing.T) {
			used, _, err := s.PutLayer("", "", []string{"soon-used"}, "", false, nil, bytes.NewReader(uniqueTar(t, "soon-used")))
			if err != nil {
				t.Fatal(err)
			}
			unused, _, err := s.PutLayer("", "", []string{"unused"}, "", false, nil, bytes.NewReader(uniqueTar(t, "unused")))
			if err != nil {
				t.Fatal(err)
			}
			age := time.Duration(0)
			opts := CheckMost()
			opts.LayerUnreferencedMaximumAge = &age
			var img *Image
			r := check(opts, nil, func() {
				if img, err = s.CreateImage("", nil, used.ID, "", nil); err != nil {
					t.Error(err)
				}
			})
			if _, ok := r.Layers[used.ID]; ok {
				t.Errorf("a layer an image was made on meanwhile is reported: %v", r.Layers[used.ID])
			}
			wantReported(t, r.Layers[unused.ID], ErrLayerUnreferenced, "a layer nothing uses")
			if len(r.Layers) != 1 || len(r.Images) != 0 || len(r.Containers) != 0 {
				t.Errorf("report names more:\n%s", reportErrors(r))
			}
			if errs := s.Repair(r, RepairEverything()); len(errs) != 0 {
				t.Errorf("Repair: %v", errs)
			}
			gone(t, s, unused.ID)
			there(t, s, used.ID, img.ID)
		})

		t.Run("damage still there is reported", func(t *testing.T) {
			l, img := imageOn(t, s, "broken")
			removeBehindBack(t, sn, l.ID)
			// Something else changes meanwhile too.
			r := check(CheckMost(), func() { imageOn(t, s, "bystander") }, nil)
			wantReported(t, r.Images[img.ID], ErrImageLayerMissing, "image")
			if len(r.Images) != 1 || len(r.Layers) != 0 || len(r.Containers) != 0 {
				t.Errorf("report names more:\n%s", reportErrors(r))
			}
			if errs := s.Repair(r, RepairEverything()); len(errs) != 0 {
				t.Errorf("Repair: %v", errs)
			}
			gone(t, s, img.ID)
		})

		there(t, s, keep.ID, keepImg.ID)
		wantClean(t, s, CheckEverything(), "the end")
	})
}

// TestCheckContainerMadeElsewhere: a container a store opened through
// containerd made (its layer marked cslabels.Made, which containerd passes
// on to the daemon; its record and image in a containerd namespace this
// store cannot see) is listed, but not this store's to check: Check does
// not report its image missing, and Repair leaves it.
func TestCheckContainerMadeElsewhere(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		_, img := imageOn(t, s, "mine")
		// What containerd makes of the store's PutLayer and
		// CreateContainer in namespace "other".
		layerID, ctrID, imageID := newID(), newID(), newID()
		if _, err := sn.Prepare(testCtx, "other/10/cs.incomplete/"+layerID, "", snapshots.WithLabels(map[string]string{cslabels.Made: "store"})); err != nil {
			t.Fatal(err)
		}
		layerKey := "other/11/" + layerID
		if err := sn.Commit(testCtx, layerKey, "other/10/cs.incomplete/"+layerID, snapshots.WithLabels(map[string]string{cslabels.Made: "store"})); err != nil {
			t.Fatal(err)
		}
		ctrKey := "other/12/" + rwPrefix + ctrID
		if _, err := sn.Prepare(testCtx, ctrKey, layerKey, snapshots.WithLabels(map[string]string{
			cslabels.Made: "store",
			cslabels.NameKey(cslabels.ContainerIDKind, ctrID):      "0",
			cslabels.NameKey(cslabels.Container, "made-elsewhere"): "0",
			cslabels.ContainerImage:                                imageID,
		})); err != nil {
			t.Fatal(err)
		}
		c, err := s.Container("made-elsewhere")
		if err != nil || c.ID != ctrID || c.ImageID != imageID {
			t.Fatalf("the container is not listed as made: %+v, %v", c, err)
		}
		// A container of this store's own whose image is gone is still
		// reported.
		mine, err := s.CreateContainer("", []string{"orphan"}, img.ID, "", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		var rec digest.Digest
		cs.Walk(testCtx, func(info content.Info) error {
			if info.Labels[cslabels.ImageID] == img.ID {
				rec = info.Digest
			}
			return nil
		})
		deleteBlobBehindBack(t, cs, rec)

		r, err := s.Check(CheckEverything())
		if err != nil {
			t.Fatal(err)
		}
		if errs, ok := r.Containers[ctrID]; ok {
			t.Errorf("the container made through containerd is reported: %v", errs)
		}
		wantReported(t, r.Containers[mine.ID], ErrContainerImageMissing, "the store's own container")
		if errs := s.Repair(r, RepairEverything()); len(errs) != 0 {
			t.Errorf("Repair: %v", errs)
		}
		gone(t, s, mine.ID)
		there(t, s, ctrID)
		if !snapshotExists(sn, ctrKey) || !snapshotExists(sn, layerKey) {
			t.Error("Repair removed the snapshots containerd holds")
		}
		if err := s.DeleteContainer(ctrID); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "--containerd") {
			t.Errorf("DeleteContainer of a container made through containerd: %v, want ErrNotSupported naming --containerd", err)
		}
		there(t, s, ctrID)
		if !snapshotExists(sn, ctrKey) {
			t.Error("a refused DeleteContainer removed the snapshot containerd holds")
		}
		wantClean(t, s, CheckEverything(), "after Repair")
		if err := s.Wipe(); err != nil {
			t.Fatalf("Wipe: %v", err)
		}
		if !snapshotExists(sn, ctrKey) || !snapshotExists(sn, layerKey) {
			t.Error("Wipe removed the snapshots containerd holds")
		}
	})
}
