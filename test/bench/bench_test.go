package main

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3}
	if got := median(v); got != 3 {
		t.Errorf("median = %v, want 3", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median of even count = %v, want 2.5", got)
	}
	if got := percentileF(v, 90); got != 5 {
		t.Errorf("p90 = %v, want 5", got)
	}
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if got := percentile(d, 99); got != 10 {
		t.Errorf("p99 = %v, want 10", got)
	}
}

// TestBuildLayer: the layer holds the directory under its own path, with
// its parents, within the budget, and the digests match the bytes.
func TestBuildLayer(t *testing.T) {
	src := t.TempDir()
	for _, f := range []struct {
		name string
		size int
	}{{"a/one", 100}, {"a/two", 5000}, {"b/three", 300}} {
		p := filepath.Join(src, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, f.size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("one", filepath.Join(src, "a/link")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "l.tar.gz")
	l, err := buildLayer(src, out, 1000) // a/two does not fit
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, d, err := hashCopy(f)
	if err != nil || n != l.Size || d != string(l.Digest) {
		t.Fatalf("blob: %d bytes %s (%v), layer says %d %s", n, d, err, l.Size, l.Digest)
	}
	_, _ = f.Seek(0, io.SeekStart)
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	names := map[string]bool{}
	go func() {
		tr := tar.NewReader(io.TeeReader(gz, pw))
		for {
			h, err := tr.Next()
			if err != nil {
				_, _ = io.Copy(pw, gz)
				pw.CloseWithError(err)
				return
			}
			names[h.Name] = true
		}
	}()
	tn, diffID, err := hashCopy(pr)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if tn != l.TarSize || diffID != string(l.DiffID) {
		t.Errorf("tar: %d bytes %s, layer says %d %s", tn, diffID, l.TarSize, l.DiffID)
	}
	rel := src[1:]
	for _, want := range []string{rel + "/", rel + "/a/one", rel + "/a/link", rel + "/b/three"} {
		if !names[want] {
			t.Errorf("layer lacks %s; has %v", want, names)
		}
	}
	if names[rel+"/a/two"] {
		t.Errorf("a/two is over the budget but in the layer")
	}
	if l.FileBytes != 400 {
		t.Errorf("file bytes %d, want 400", l.FileBytes)
	}
}
