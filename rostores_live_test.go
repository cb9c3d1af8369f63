package storage

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestROImageStoreSeesChanges: a read-only image store another process
// writes is seen as it is now on the reader's next call, with no reopening,
// and a layer still being written is not seen until it is complete. The
// writer is an in-process store of another root holder (the reader reads
// the files directly once it lets go) or a daemon serving the root (the
// reader reads through it while it writes).
func TestROImageStoreSeesChanges(t *testing.T) {
	requireRoot(t)
	for _, ro := range []string{"direct", "daemon"} {
		t.Run(ro, func(t *testing.T) {
			f := makeROFixture(t)
			if ro == "daemon" {
				serveRoot(t, f.root)
			}
			dir := t.TempDir()
			s, err := GetStore(StoreOptions{GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run"), ROImageStores: []string{f.root}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Shutdown(true)
			if _, err := s.Image("later:1"); !errors.Is(err, ErrImageUnknown) {
				t.Fatalf("image later:1 before it is made: %v", err)
			}

			w, err := GetStore(StoreOptions{GraphRoot: f.root, RunRoot: filepath.Join(dir, "writer-run")})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.CreateImage("", []string{"later:1"}, f.child.ID, "", nil); err != nil {
				t.Fatal(err)
			}
			if ro == "daemon" {
				// A layer half written: its diff is still arriving.
				body := strings.Repeat("x", 1<<20)
				full := layerTar(t, []entry{{hdr: tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644}, body: body}})
				pr, pw := io.Pipe()
				done := make(chan error, 1)
				go func() {
					_, _, err := w.PutLayer("", f.base.ID, []string{"half"}, "", false, nil, pr)
					done <- err
				}()
				if _, err := pw.Write(full[:len(full)/2]); err != nil {
					t.Fatal(err)
				}
				time.Sleep(200 * time.Millisecond) // the writer is inside PutLayer now
				if _, err := s.Layer("half"); !errors.Is(err, ErrLayerUnknown) {
					t.Errorf("a layer still being written is seen: %v", err)
				}
				layers, err := s.Layers()
				if err != nil {
					t.Fatal(err)
				}
				if slices.ContainsFunc(layers, func(l Layer) bool { return slices.Contains(l.Names, "half") }) {
					t.Errorf("Layers lists a layer still being written")
				}
				pw.Write(full[len(full)/2:])
				pw.Close()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				l, err := s.Layer("half")
				if err != nil || !l.ReadOnly {
					t.Fatalf("the finished layer: %+v, %v", l, err)
				}
				rc, err := s.Diff("", l.ID, nil)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(rc)
				rc.Close()
				if !bytes.Equal(got, full) {
					t.Errorf("the finished layer's diff: %d bytes, want its %d", len(got), len(full))
				}
			}
			if _, err := w.Shutdown(false); err != nil {
				t.Fatal(err)
			}
			img, err := s.Image("later:1")
			if err != nil || !img.ReadOnly || img.TopLayer != f.child.ID {
				t.Fatalf("image later:1 made meanwhile: %+v, %v", img, err)
			}
			if _, err := s.CreateContainer("", []string{"on-later"}, "later:1", "", "", nil); err != nil {
				t.Errorf("container on the image made meanwhile: %v", err)
			}
		})
	}
}
