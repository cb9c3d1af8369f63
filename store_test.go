package storage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
	"github.com/cs-snapshotter/cs-snapshotter/layerdiff"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the store mounts overlayfs and must run as root")
	}
}

// mode opens a store on a fresh root, embedded or through a daemon serving
// it; it also returns the daemon's raw interfaces for checks behind the
// store's back.
type mode struct {
	name string
	open func(t *testing.T) (Store, snapshots.Snapshotter, content.Store)
}

var modes = []mode{
	{"embedded", func(t *testing.T) (Store, snapshots.Snapshotter, content.Store) {
		opts := StoreOptions{GraphRoot: filepath.Join(t.TempDir(), "root"), RunRoot: filepath.Join(t.TempDir(), "run")}
		s, err := GetStore(opts)
		if err != nil {
			t.Fatal(err)
		}
		if s.(*store).Remote() {
			t.Fatal("embedded store talks to a daemon")
		}
		t.Cleanup(func() { s.Shutdown(true) })
		return s, s.(*store).sn, s.(*store).cs
	}},
	{"daemon", func(t *testing.T) (Store, snapshots.Snapshotter, content.Store) {
		root, run := filepath.Join(t.TempDir(), "root"), filepath.Join(t.TempDir(), "run")
		cfg := config.Default()
		cfg.Root, cfg.RunRoot = root, filepath.Join(t.TempDir(), "daemon-run")
		addr := cfg.Address()
		ctx := context.Background()
		d, err := daemon.Open(ctx, cfg, daemon.Holder{What: "test daemon", Address: addr})
		if err != nil {
			t.Fatal(err)
		}
		l, err := daemon.Listen(addr, cfg.GRPC)
		if err != nil {
			t.Fatal(err)
		}
		srv := d.NewServer()
		go srv.Serve(l)
		s, err := GetStore(StoreOptions{GraphRoot: root, RunRoot: run})
		if err != nil {
			t.Fatal(err)
		}
		if !s.(*store).Remote() {
			t.Fatal("store did not find the daemon")
		}
		t.Cleanup(func() {
			s.Shutdown(true)
			srv.Stop()
			d.Close()
		})
		return s, d.Snapshotter(), d.Content()
	}},
}

func forModes(t *testing.T, fn func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store)) {
	requireRoot(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s, sn, cs := m.open(t)
			fn(t, s, sn, cs)
		})
	}
}

type entry struct {
	hdr  tar.Header
	body string
}

// layerTar builds a tar with entries that test fidelity.
func layerTar(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func gz(data []byte) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

var baseEntries = []entry{
	{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 100}, body: "hello\n"},
	{hdr: tar.Header{Name: "etc/gone", Typeflag: tar.TypeReg, Mode: 0o600}, body: "to be deleted"},
	{hdr: tar.Header{Name: "etc/link", Typeflag: tar.TypeLink, Linkname: "etc/hello"}},
	{hdr: tar.Header{Name: "etc/sym", Typeflag: tar.TypeSymlink, Linkname: "/etc/hello"}},
	{hdr: tar.Header{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "opt/" + strings.Repeat("long-name-", 20), Typeflag: tar.TypeReg, Mode: 0o644,
		PAXRecords: map[string]string{"SCHILY.xattr.user.test": "value"}}, body: "long"},
	{hdr: tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}},
}

var childEntries = []entry{
	{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "etc/.wh.gone", Typeflag: tar.TypeReg}},
	{hdr: tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644}, body: "changed\n"},
	{hdr: tar.Header{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o755}},
	{hdr: tar.Header{Name: "opt/.wh..wh..opq", Typeflag: tar.TypeReg}},
	{hdr: tar.Header{Name: "new", Typeflag: tar.TypeReg, Mode: 0o4755}, body: "setuid"},
}

func TestLayers(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		baseTar := layerTar(t, baseEntries)
		base, size, err := s.PutLayer("", "", []string{"base", "base:v1"}, "", false, nil, bytes.NewReader(gz(baseTar)))
		if err != nil {
			t.Fatal(err)
		}
		if size != int64(len(baseTar)) || base.UncompressedSize != size || base.UncompressedDigest.String() != sha(baseTar) {
			t.Errorf("recorded %d %s, applied %d %s", base.UncompressedSize, base.UncompressedDigest, len(baseTar), sha(baseTar))
		}
		if base.CompressionType != Gzip || base.CompressedDigest == "" || len(base.ID) != 64 {
			t.Errorf("layer record %+v", base)
		}
		if !reflect.DeepEqual(base.UIDs, []uint32{0, 1000}) || !reflect.DeepEqual(base.GIDs, []uint32{0, 100}) {
			t.Errorf("uid/gid sets %v %v", base.UIDs, base.GIDs)
		}
		if !reflect.DeepEqual(base.Names, []string{"base", "base:v1"}) {
			t.Errorf("names %v", base.Names)
		}

		childTar := layerTar(t, childEntries)
		child, _, err := s.PutLayer("", "base", []string{"child"}, "", false, nil, bytes.NewReader(childTar))
		if err != nil {
			t.Fatal(err)
		}
		if child.Parent != base.ID || child.CompressionType != Uncompressed {
			t.Errorf("child %+v", child)
		}

		t.Run("diff is bit-exact", func(t *testing.T) {
			for _, c := range []struct {
				id   string
				want []byte
			}{{base.ID, baseTar}, {child.ID, childTar}} {
				u := Uncompressed
				rc, err := s.Diff("", c.id, &DiffOptions{Compression: &u})
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					t.Fatal(err)
				}
				if sha(got) != sha(c.want) {
					t.Errorf("diff of %s: %d bytes %s, applied %d bytes %s", c.id, len(got), sha(got), len(c.want), sha(c.want))
				}
			}
			// By default the layer's own compression.
			rc, err := s.Diff("", base.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			zr, err := gzip.NewReader(rc)
			if err != nil {
				t.Fatalf("default diff of a gzip layer is not gzip: %v", err)
			}
			got, _ := io.ReadAll(zr)
			rc.Close()
			if sha(got) != sha(baseTar) {
				t.Error("gzip diff does not decompress to the applied tar")
			}
			// As containers/storage's overlay driver: the bytes of the
			// layer's files, a hard-linked one once (6+13+10+4).
			if n, err := s.DiffSize("", base.ID); err != nil || n != 33 {
				t.Errorf("diffsize %d %v", n, err)
			}
		})

		t.Run("changes", func(t *testing.T) {
			changes, err := s.Changes("", child.ID)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]ChangeKind{}
			for _, c := range changes {
				got[c.Path] = c.Kind
			}
			for p, k := range map[string]ChangeKind{"/etc/gone": ChangeDelete, "/etc/hello": ChangeModify, "/new": ChangeAdd} {
				if got[p] != k {
					t.Errorf("change of %s: %v, want %v (all: %v)", p, got[p], k, changes)
				}
			}
		})

		t.Run("lookup", func(t *testing.T) {
			for _, name := range []string{base.ID, "base", "base:v1", base.ID[:12]} {
				if id, err := s.Lookup(name); err != nil || id != base.ID {
					t.Errorf("lookup %q: %q %v", name, id, err)
				}
			}
			if _, err := s.Lookup("nothing"); !errors.Is(err, ErrLayerUnknown) {
				t.Errorf("lookup of unknown: %v", err)
			}
			if !s.Exists("child") || s.Exists("nothing") {
				t.Error("exists")
			}
			if ls, err := s.LayersByUncompressedDigest(digest.Digest(sha(childTar))); err != nil || len(ls) != 1 || ls[0].ID != child.ID {
				t.Errorf("by uncompressed digest: %v %v", ls, err)
			}
			if ls, err := s.LayersByCompressedDigest(base.CompressedDigest); err != nil || len(ls) != 1 || ls[0].ID != base.ID {
				t.Errorf("by compressed digest: %v %v", ls, err)
			}
		})

		t.Run("bad input leaves the store intact", func(t *testing.T) {
			before, _ := s.Layers()
			for name, call := range map[string]func() error{
				"duplicate name": func() error { _, err := s.CreateLayer("", "", []string{"base"}, "", false, nil); return err },
				"duplicate id":   func() error { _, err := s.CreateLayer(base.ID, "", nil, "", false, nil); return err },
				"unknown parent": func() error { _, err := s.CreateLayer("", "nothing", nil, "", false, nil); return err },
				"truncated gzip": func() error {
					b := gz(baseTar)
					_, _, err := s.PutLayer("", "", []string{"broken"}, "", false, nil, bytes.NewReader(b[:len(b)/2]))
					return err
				},
				"delete parent": func() error { return s.DeleteLayer(base.ID) },
				"escaping entry": func() error {
					_, _, err := s.PutLayer("", base.ID, []string{"evil"}, "", false, nil, bytes.NewReader(layerTar(t, []entry{
						{hdr: tar.Header{Name: "etc/sym-out", Typeflag: tar.TypeSymlink, Linkname: "/"}},
						{hdr: tar.Header{Name: "etc/sym-out/tmp/owned", Typeflag: tar.TypeReg, Mode: 0o644}, body: "x"},
					})))
					return err
				},
				"hard link escape": func() error {
					_, _, err := s.PutLayer("", "", nil, "", false, nil, bytes.NewReader(layerTar(t, []entry{
						{hdr: tar.Header{Name: "passwd", Typeflag: tar.TypeLink, Linkname: "../../../../etc/passwd"}},
					})))
					return err
				},
				"bad id":         func() error { _, err := s.CreateLayer("cs.x", "", nil, "", false, nil); return err },
				"empty name":     func() error { _, err := s.CreateLayer("", "", []string{"ok", ""}, "", false, nil); return err },
				"add empty name": func() error { return s.AddNames(base.ID, []string{""}) },
			} {
				want := map[string]error{"duplicate name": ErrDuplicateName, "duplicate id": ErrDuplicateID,
					"unknown parent": ErrLayerUnknown, "delete parent": ErrLayerHasChildren, "bad id": ErrNotSupported,
					"empty name": ErrInvalidName, "add empty name": ErrInvalidName,
					"escaping entry": layerdiff.ErrEscape, "hard link escape": layerdiff.ErrEscape}[name]
				err := call()
				if err == nil || (want != nil && !errors.Is(err, want)) {
					t.Errorf("%s: %v, want %v", name, err, want)
				}
				after, _ := s.Layers()
				if !reflect.DeepEqual(before, after) {
					t.Errorf("%s changed the store:\n%v\n%v", name, before, after)
				}
			}
			// Nothing half-made is left in the daemon either.
			sn.Walk(testCtx, func(_ context.Context, info snapshots.Info) error {
				if strings.HasPrefix(info.Name, "cs.") {
					t.Errorf("leftover snapshot %s", info.Name)
				}
				return nil
			})
		})

		t.Run("names", func(t *testing.T) {
			if err := s.AddNames(child.ID, []string{"c2", "base:v1"}); err != nil {
				t.Fatal(err)
			}
			// A name another layer had moves, as in containers/storage.
			if names, _ := s.Names(base.ID); !reflect.DeepEqual(names, []string{"base"}) {
				t.Errorf("base names %v", names)
			}
			// Added names come first, as in containers/storage.
			if names, _ := s.Names(child.ID); !reflect.DeepEqual(names, []string{"c2", "base:v1", "child"}) {
				t.Errorf("child names %v", names)
			}
			if err := s.RemoveNames(child.ID, []string{"c2"}); err != nil {
				t.Fatal(err)
			}
			if err := s.SetNames(child.ID, []string{"only"}); err != nil {
				t.Fatal(err)
			}
			if names, _ := s.Names(child.ID); !reflect.DeepEqual(names, []string{"only"}) {
				t.Errorf("set names: %v", names)
			}
			if _, err := s.Lookup("child"); err == nil {
				t.Error("old name still resolves")
			}
		})

		t.Run("metadata and big data", func(t *testing.T) {
			if err := s.SetMetadata(base.ID, `{"a":1}`); err != nil {
				t.Fatal(err)
			}
			if md, _ := s.Metadata("base"); md != `{"a":1}` {
				t.Errorf("metadata %q", md)
			}
			err := s.SetMetadata(base.ID, strings.Repeat("m", 5000))
			if err == nil {
				t.Error("oversized metadata accepted")
			}
			if md, _ := s.Metadata("base"); md != `{"a":1}` {
				t.Errorf("metadata after refused set: %q", md)
			}
			big := bytes.Repeat([]byte("0123456789"), 1<<20)
			for _, v := range [][]byte{[]byte("first"), big} {
				if err := s.SetLayerBigData(base.ID, "blob-key", bytes.NewReader(v)); err != nil {
					t.Fatal(err)
				}
				rc, err := s.LayerBigData(base.ID, "blob-key")
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(rc)
				rc.Close()
				if !bytes.Equal(got, v) {
					t.Errorf("big data: %d bytes back, %d stored", len(got), len(v))
				}
			}
			if keys, _ := s.ListLayerBigData(base.ID); !reflect.DeepEqual(keys, []string{"blob-key"}) {
				t.Errorf("keys %v", keys)
			}
			if err := s.SetLayerBigData(base.ID, "", strings.NewReader("x")); !errors.Is(err, ErrInvalidBigDataName) {
				t.Errorf("empty key: %v", err)
			}
			// The first value's blob is gone; the second is kept against
			// containerd's GC.
			if _, err := cs.Info(context.Background(), digest.FromBytes([]byte("first"))); err == nil {
				t.Error("replaced big data blob left behind")
			}
			if err := cs.Delete(context.Background(), digest.FromBytes(big)); err != nil {
				t.Fatal(err)
			}
			if _, err := cs.Info(context.Background(), digest.FromBytes(big)); err != nil {
				t.Errorf("GC took the store's big data: %v", err)
			}
		})

		t.Run("mount", func(t *testing.T) {
			p1, err := s.Mount(child.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			p2, err := s.Mount(child.ID, "")
			if err != nil || p1 != p2 {
				t.Fatalf("second mount %q %v", p2, err)
			}
			if n, _ := s.Mounted(child.ID); n != 2 {
				t.Errorf("mount count %d", n)
			}
			if l, _ := s.Layer(child.ID); l.MountPoint != p1 || l.MountCount != 2 {
				t.Errorf("layer mount fields %q %d", l.MountPoint, l.MountCount)
			}
			got, err := os.ReadFile(filepath.Join(p1, "etc/hello"))
			if err != nil || string(got) != "changed\n" {
				t.Errorf("file in mount: %q %v", got, err)
			}
			if _, err := os.Stat(filepath.Join(p1, "etc/gone")); !os.IsNotExist(err) {
				t.Errorf("deleted file visible: %v", err)
			}
			if still, err := s.Unmount(child.ID, false); err != nil || !still {
				t.Errorf("first unmount: %v %v", still, err)
			}
			if still, err := s.Unmount(child.ID, false); err != nil || still {
				t.Errorf("last unmount: %v %v", still, err)
			}
			if ok, _ := mountedAt(p1); ok {
				t.Error("still mounted")
			}
			if n, _ := s.Mounted(child.ID); n != 0 {
				t.Errorf("count after unmount %d", n)
			}
		})

		t.Run("apply to a created layer", func(t *testing.T) {
			l, err := s.CreateLayer("", child.ID, []string{"empty"}, "", false, nil)
			if err != nil {
				t.Fatal(err)
			}
			tarball := layerTar(t, []entry{{hdr: tar.Header{Name: "added", Typeflag: tar.TypeReg, Mode: 0o644}, body: "x"}})
			if n, err := s.ApplyDiff(l.ID, bytes.NewReader(tarball)); err != nil || n != int64(len(tarball)) {
				t.Fatalf("applydiff %d %v", n, err)
			}
			rc, err := s.Diff("", l.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(rc)
			rc.Close()
			if sha(got) != sha(tarball) {
				t.Error("diff after applydiff differs")
			}
			if err := s.DeleteLayer(l.ID); err != nil {
				t.Fatal(err)
			}
		})

		t.Run("writeable layers", func(t *testing.T) {
			// containers-storage's scripts: create-layer (writeable), write
			// through a mount, then a child on top of it.
			rw, err := s.CreateLayer("", base.ID, []string{"rw"}, "", true, nil)
			if err != nil {
				t.Fatal(err)
			}
			p, err := s.Mount(rw.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(p, "written"), []byte("rw"), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Unmount(rw.ID, false); err != nil {
				t.Fatal(err)
			}
			top, err := s.CreateLayer("", "rw", nil, "", true, nil)
			if err != nil {
				t.Fatalf("child of a writeable layer: %v", err)
			}
			if top.Parent != rw.ID {
				t.Errorf("parent %q, want %q", top.Parent, rw.ID)
			}
			if names, _ := s.Names(rw.ID); !reflect.DeepEqual(names, []string{"rw"}) {
				t.Errorf("names of the frozen layer: %v", names)
			}
			p, err = s.Mount(top.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(p, "written"))
			if err != nil || string(got) != "rw" {
				t.Errorf("file written to the parent: %q %v", got, err)
			}
			s.Unmount(top.ID, true)
			if err := s.DeleteLayer(top.ID); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteLayer(rw.ID); err != nil {
				t.Fatal(err)
			}
		})

		t.Run("containerd snapshots are layers", func(t *testing.T) {
			ctx := namespaces.WithNamespace(context.Background(), "x")
			key := "default/7/sha256:" + strings.Repeat("a", 64)
			m, err := sn.Prepare(ctx, "tmp", "")
			if err != nil {
				t.Fatal(err)
			}
			// Written as containerd's own differ would: no tar-split.
			if err := os.WriteFile(filepath.Join(m[0].Source, "from-containerd"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := sn.Commit(ctx, key, "tmp"); err != nil {
				t.Fatal(err)
			}
			id, err := s.Lookup(key)
			if err != nil {
				t.Fatal(err)
			}
			l, _ := s.Layer(id)
			if len(l.ID) != 64 || l.Names[0] != key {
				t.Errorf("containerd layer %+v", l)
			}
			// Its diff is computed from its files.
			rc, err := s.Diff("", id, nil)
			if err != nil {
				t.Fatal(err)
			}
			tr := tar.NewReader(rc)
			found := false
			for {
				h, err := tr.Next()
				if err != nil {
					break
				}
				found = found || strings.TrimPrefix(h.Name, "/") == "from-containerd"
			}
			rc.Close()
			if !found {
				t.Error("computed diff lacks the snapshot's file")
			}
		})

		t.Run("delete", func(t *testing.T) {
			ts := ""
			sn.Walk(testCtx, func(_ context.Context, info snapshots.Info) error {
				if info.Name == child.ID {
					ts = info.Labels["containerd.io/snapshot/cs.tar-split"]
				}
				return nil
			})
			if ts == "" {
				t.Fatal("child has no tar-split")
			}
			if err := s.DeleteLayer(child.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := cs.Info(context.Background(), digest.Digest(ts)); err == nil {
				t.Error("tar-split blob of a deleted layer left behind")
			}
			if err := s.DeleteLayer(child.ID); !errors.Is(err, ErrNotALayer) {
				t.Errorf("second delete: %v", err)
			}
			if err := s.Wipe(); err != nil {
				t.Fatal(err)
			}
			var left []string
			all, _ := s.Layers()
			for _, l := range all {
				left = append(left, l.Names...)
			}
			sort.Strings(left)
			if len(left) != 1 || !strings.HasPrefix(left[0], "default/7/") {
				t.Errorf("after wipe: %v", left)
			}
		})
	})
}

// TestDiffOfUnreproducibleLayers: layers whose files cannot reproduce
// their tar (a sparse file, a whiteout with content) keep the original, so
// Diff is still bit-exact; deleting the layer releases it.
func TestDiffOfUnreproducibleLayers(t *testing.T) {
	sparse, err := os.ReadFile("layerdiff/testdata/sparse-pax.tar")
	if err != nil {
		t.Fatal(err)
	}
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		// A file is read again; anything else is spooled while applied.
		for _, input := range []func(*bytes.Reader) io.Reader{
			func(r *bytes.Reader) io.Reader { return r },
			func(r *bytes.Reader) io.Reader { return struct{ io.Reader }{r} },
		} {
			for name, diff := range map[string][]byte{
				"sparse":             sparse,
				"whiteout with body": layerTar(t, []entry{{hdr: tar.Header{Name: ".wh.x", Typeflag: tar.TypeReg, Mode: 0o644}, body: "body"}}),
			} {
				l, _, err := s.PutLayer("", "", nil, "", false, nil, input(bytes.NewReader(gz(diff))))
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				u := Uncompressed
				rc, err := s.Diff("", l.ID, &DiffOptions{Compression: &u})
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got, _ := io.ReadAll(rc)
				rc.Close()
				if sha(got) != sha(diff) || l.UncompressedDigest.String() != sha(diff) {
					t.Errorf("%s: diff %s, recorded %s, applied %s", name, sha(got), l.UncompressedDigest, sha(diff))
				}
				if err := s.DeleteLayer(l.ID); err != nil {
					t.Fatal(err)
				}
				if _, err := cs.Info(context.Background(), digest.FromBytes(gz(diff))); err == nil {
					t.Errorf("%s: kept diff blob outlived its layer", name)
				}
			}
		}
	})
}

// TestIncompleteRemovedAtOpen: a layer a crash left incomplete is gone the
// next time the root is opened, and its parent is intact.
func TestIncompleteRemovedAtOpen(t *testing.T) {
	requireRoot(t)
	opts := StoreOptions{GraphRoot: filepath.Join(t.TempDir(), "root"), RunRoot: filepath.Join(t.TempDir(), "run")}
	s, err := GetStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	base, err := s.CreateLayer("", "", []string{"base"}, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	// What fillAndCommit leaves if the process dies mid-apply.
	ctx := s.(*store).ctx
	if _, err := s.(*store).sn.Prepare(ctx, incompletePrefix+"dead", base.ID, snapshots.WithLabels(map[string]string{
		"containerd.io/snapshot/cs.owned": "store", "containerd.io/snapshot/cs.incomplete": "applying"})); err != nil {
		t.Fatal(err)
	}
	s.Free()
	s, err = GetStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	if _, err := s.(*store).sn.Stat(ctx, incompletePrefix+"dead"); err == nil {
		t.Error("incomplete layer survived a reopen")
	}
	if !s.Exists("base") {
		t.Error("parent of the incomplete layer lost")
	}
}

// TestEmbeddedExclusive: a second in-process store on the same root is
// refused, naming the holder.
func TestEmbeddedExclusive(t *testing.T) {
	requireRoot(t)
	opts := StoreOptions{GraphRoot: filepath.Join(t.TempDir(), "root"), RunRoot: filepath.Join(t.TempDir(), "run")}
	s, err := GetStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	defer func(w time.Duration) { lockWait = w }(lockWait)
	lockWait = 200 * time.Millisecond
	_, err = GetStore(opts)
	if err == nil || !strings.Contains(err.Error(), "is in use by pid") || !strings.Contains(err.Error(), "cs-snapshotter store") {
		t.Fatalf("second store: %v", err)
	}
}

func mountedAt(p string) (bool, error) {
	return isMountPoint(p), nil
}

// TestNameRaceThroughStores: clients racing to create layers with one name:
// exactly one wins, the rest get ErrDuplicateName, nothing half-made stays.
func TestNameRaceThroughStores(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		const clients = 16
		errs := make(chan error, clients)
		for i := 0; i < clients; i++ {
			go func() {
				_, err := s.CreateLayer("", "", []string{"contested"}, "", false, nil)
				errs <- err
			}()
		}
		wins := 0
		for i := 0; i < clients; i++ {
			switch err := <-errs; {
			case err == nil:
				wins++
			case !errors.Is(err, ErrDuplicateName):
				t.Errorf("unexpected error: %v", err)
			}
		}
		layers, _ := s.Layers()
		if wins != 1 || len(layers) != 1 {
			t.Errorf("%d winners, %d layers", wins, len(layers))
		}
		sn.Walk(testCtx, func(_ context.Context, info snapshots.Info) error {
			if strings.HasPrefix(info.Name, "cs.") {
				t.Errorf("leftover snapshot %s", info.Name)
			}
			return nil
		})
	})
}

// TestChangesAcrossWhiteouts: a path a middle layer deleted and the top one
// makes again is an addition, as overlay shows it.
func TestChangesAcrossWhiteouts(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		put := func(parent string, entries []entry) string {
			l, _, err := s.PutLayer("", parent, nil, "", false, nil, bytes.NewReader(layerTar(t, entries)))
			if err != nil {
				t.Fatal(err)
			}
			return l.ID
		}
		base := put("", []entry{
			{hdr: tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755}},
			{hdr: tar.Header{Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o644}, body: "f"},
			{hdr: tar.Header{Name: "o/", Typeflag: tar.TypeDir, Mode: 0o755}},
			{hdr: tar.Header{Name: "o/old", Typeflag: tar.TypeReg, Mode: 0o644}, body: "old"},
			{hdr: tar.Header{Name: "keep", Typeflag: tar.TypeReg, Mode: 0o644}, body: "k"},
		})
		mid := put(base, []entry{
			{hdr: tar.Header{Name: ".wh.d", Typeflag: tar.TypeReg}},
			{hdr: tar.Header{Name: "o/", Typeflag: tar.TypeDir, Mode: 0o755}},
			{hdr: tar.Header{Name: "o/.wh..wh..opq", Typeflag: tar.TypeReg}},
		})
		top := put(mid, []entry{
			{hdr: tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755}},
			{hdr: tar.Header{Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o644}, body: "again"},
			{hdr: tar.Header{Name: "o/old", Typeflag: tar.TypeReg, Mode: 0o644}, body: "again"},
			{hdr: tar.Header{Name: "keep", Typeflag: tar.TypeReg, Mode: 0o644}, body: "changed"},
		})
		changes, err := s.Changes("", top)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]ChangeKind{}
		for _, c := range changes {
			got[c.Path] = c.Kind
		}
		want := map[string]ChangeKind{"/d": ChangeAdd, "/d/f": ChangeAdd, "/o/old": ChangeAdd, "/keep": ChangeModify}
		for p, k := range want {
			if got[p] != k {
				t.Errorf("%s: %v, want %v (all %v)", p, got[p], k, changes)
			}
		}
	})
}

// TestFailedApplyKeepsLayer: a failed ApplyDiff to an existing layer leaves
// the layer (as containers/storage does); it is not taken for a crash's
// remains at the next open.
func TestFailedApplyKeepsLayer(t *testing.T) {
	requireRoot(t)
	opts := StoreOptions{GraphRoot: filepath.Join(t.TempDir(), "root"), RunRoot: filepath.Join(t.TempDir(), "run")}
	s, err := GetStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.CreateLayer("layer-gzip", "", nil, "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	junk := gz(bytes.Repeat([]byte("junk"), 1000))
	for i := 0; i < 2; i++ {
		if _, err := s.ApplyDiff(l.ID, bytes.NewReader(junk[:len(junk)/2])); err == nil || errors.Is(err, ErrLayerUnknown) {
			t.Fatalf("apply %d of junk: %v", i, err)
		}
	}
	s.Free()
	if s, err = GetStore(opts); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	if !s.Exists("layer-gzip") {
		t.Error("layer gone after a failed apply and a reopen")
	}
}

// TestMaxLayerSize: a layer expanding past StoreOptions.MaxLayerSize is
// refused naming the limit, and nothing of it remains.
func TestMaxLayerSize(t *testing.T) {
	requireRoot(t)
	s, err := GetStore(StoreOptions{GraphRoot: filepath.Join(t.TempDir(), "root"), RunRoot: filepath.Join(t.TempDir(), "run"), MaxLayerSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	big := layerTar(t, []entry{{hdr: tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644}, body: strings.Repeat("0", 1<<20)}})
	unchanged(t, s, s.(*store).cs, "layer over the limit", layerdiff.ErrTooLarge, func() error {
		_, _, err := s.PutLayer("", "", []string{"big"}, "", false, nil, bytes.NewReader(gz(big)))
		return err
	})
	small := layerTar(t, []entry{{hdr: tar.Header{Name: "small", Typeflag: tar.TypeReg, Mode: 0o644}, body: "x"}})
	if _, _, err := s.PutLayer("", "", nil, "", false, nil, bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
}
