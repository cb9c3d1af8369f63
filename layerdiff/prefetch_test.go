package layerdiff

import (
	"bytes"
	"crypto/sha256"
	"io"
	"testing"
	"time"
)

// TestPrefetcherStopsWhenFull: a reader that stopped reading while the
// prefetcher filled every buffer does not keep it from stopping.
func TestPrefetcherStopsWhenFull(t *testing.T) {
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		for {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
	}()
	p := newPrefetcher(pr, sha256.New())
	if _, err := p.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(p.free) > 0 || len(p.full) < prefetchBuffers-1 {
		if time.Now().After(deadline) {
			t.Fatalf("prefetcher did not fill: %d free, %d full", len(p.free), len(p.full))
		}
		time.Sleep(time.Millisecond)
	}
	pr.Close()
	stopped := make(chan struct{})
	go func() { p.stopAndWait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("stopAndWait hangs")
	}
}

// TestPrefetcherPassesEverything: bytes and the final error come through in
// order, and the hash covers them all.
func TestPrefetcherPassesEverything(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 100000)
	h := sha256.New()
	p := newPrefetcher(io.MultiReader(bytes.NewReader(data[:1000]), bytes.NewReader(data[1000:])), h)
	got, err := io.ReadAll(p)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if _, err := p.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after EOF: %v", err)
	}
	p.stopAndWait()
	want := sha256.Sum256(data)
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Error("hash differs")
	}
}
