package contentstore_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
)

func readAll(t *testing.T, cs content.Store, d digest.Digest) []byte {
	t.Helper()
	ra, err := cs.ReaderAt(context.Background(), ocispec.Descriptor{Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	defer ra.Close()
	p, err := io.ReadAll(content.NewReader(ra))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func blobFile(root string, d digest.Digest) string {
	return filepath.Join(root, "content", "blobs", d.Algorithm().String(), d.Encoded())
}

// TestReadersShareDeletedBlob: readers share a blob's file; a reader open
// when the blob is deleted reads on, and no new reader finds it, until it
// is written again.
func TestReadersShareDeletedBlob(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	d := write(t, cs, "shared blob", nil)
	desc := ocispec.Descriptor{Digest: d}

	r1, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Size() != int64(len("shared blob")) {
		t.Fatalf("size %d", r1.Size())
	}
	r1.Close()
	if err := r1.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if _, err := r1.ReadAt(make([]byte, 1), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
	if err := cs.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 6)
	if n, err := r2.ReadAt(p, 0); n != 6 || string(p) != "shared" {
		t.Errorf("open reader after delete: %q %v", p[:n], err)
	}
	if _, err := cs.ReaderAt(ctx, desc); !errdefs.IsNotFound(err) {
		t.Errorf("reader of a deleted blob: %v", err)
	}
	r2.Close()
	write(t, cs, "shared blob", nil)
	if got := readAll(t, cs, d); string(got) != "shared blob" {
		t.Errorf("blob written again reads %q", got)
	}
}

// TestReaderOfBlobRemovedBehindStore: a cached file whose blob was removed
// by other means is not served.
func TestReaderOfBlobRemovedBehindStore(t *testing.T) {
	root := t.TempDir()
	_, cs, closeFn, err := newStore(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	d := write(t, cs, "removed behind", nil)
	readAll(t, cs, d) // cached now
	if err := os.Remove(blobFile(root, d)); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.ReaderAt(context.Background(), ocispec.Descriptor{Digest: d}); !errdefs.IsNotFound(err) {
		t.Errorf("reader of a removed blob: %v", err)
	}
}

// TestReadersWhileDeleted: readers come and go while the blob is deleted
// and written again; once it is deleted for good none finds it.
func TestReadersWhileDeleted(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	const data = "coming and going"
	d := write(t, cs, data, nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, len(data))
			for {
				select {
				case <-stop:
					return
				default:
				}
				ra, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: d})
				if errdefs.IsNotFound(err) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				if n, err := ra.ReadAt(p, 0); n != len(p) || string(p) != data {
					t.Errorf("read %q %v", p[:n], err)
				}
				ra.Close()
			}
		}()
	}
	for range 200 {
		if err := cs.Delete(ctx, d); err != nil {
			t.Fatal(err)
		}
		write(t, cs, data, nil)
	}
	if err := cs.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if _, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: d}); !errdefs.IsNotFound(err) {
		t.Errorf("reader after the last delete: %v", err)
	}
}

// TestWriteSizesMixed: writes of every size, small ones gathered and large
// ones written directly, land in order.
func TestWriteSizesMixed(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 4))
	var all bytes.Buffer
	w, err := cs.Writer(ctx, content.WithRef("mixed"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := 0; i < 300; i++ {
		var n int
		switch i % 4 {
		case 0:
			n = r.IntN(300)
		case 1:
			n = r.IntN(64 << 10)
		case 2:
			n = 128<<10 + r.IntN(3<<20)
		case 3:
			n = (1 << 20) - r.IntN(10)
		}
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		all.Write(p)
		if m, err := w.Write(p); m != n || err != nil {
			t.Fatalf("write %d: %d %v", n, m, err)
		}
		if i%37 == 0 {
			st, _ := w.Status()
			if st.Offset != int64(all.Len()) || w.Digest() != digest.FromBytes(all.Bytes()) {
				t.Fatalf("status after %d bytes: offset %d, digest %s", all.Len(), st.Offset, w.Digest())
			}
		}
	}
	want := digest.FromBytes(all.Bytes())
	if err := w.Commit(ctx, int64(all.Len()), want); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, cs, want); !bytes.Equal(got, all.Bytes()) {
		t.Fatalf("blob differs: %d bytes, want %d", len(got), all.Len())
	}
}

// TestSmallWritesResume: small writes still buffered when the writer closes
// reach the ingest, and a new writer resumes after them.
func TestSmallWritesResume(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	data := []byte(strings.Repeat("0123456789", 20000))
	half := len(data) / 2
	w, err := cs.Writer(ctx, content.WithRef("resume"), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(data))}))
	if err != nil {
		t.Fatal(err)
	}
	for p := data[:half]; len(p) > 0; p = p[min(100, len(p)):] {
		if _, err := w.Write(p[:min(100, len(p))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := cs.Status(ctx, "resume")
	if err != nil || st.Offset != int64(half) || st.Total != int64(len(data)) {
		t.Fatalf("status of the closed ingest: %+v %v", st, err)
	}
	w, err = cs.Writer(ctx, content.WithRef("resume"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if st, _ := w.Status(); st.Offset != int64(half) || w.Digest() != digest.FromBytes(data[:half]) {
		t.Fatalf("resumed at %d, digest %s", st.Offset, w.Digest())
	}
	if _, err := w.Write(data[half:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, int64(len(data)), digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, cs, digest.FromBytes(data)); !bytes.Equal(got, data) {
		t.Fatal("resumed blob differs")
	}
}

// TestBrokenIngest: an ingest whose bookkeeping a crash cut short (the
// writer does not sync it) is skipped by ListStatuses, started afresh by
// the next writer for its ref and removed by AbortOwn.
func TestBrokenIngest(t *testing.T) {
	root := t.TempDir()
	_, cs, closeFn, err := newStore(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	ctx := context.Background()
	ingestDir := func(ref string) string {
		return filepath.Join(root, "content", "ingest", digest.FromString(ref).Encoded())
	}
	breakIngest := func(ref string) {
		t.Helper()
		w, err := cs.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("partial"))
		w.Close()
		if err := os.WriteFile(filepath.Join(ingestDir(ref), "startedat"), nil, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	breakIngest("broken")
	w, err := cs.Writer(ctx, content.WithRef("fine"))
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	st, err := cs.ListStatuses(ctx)
	if err != nil || len(st) != 1 || st[0].Ref != "fine" {
		t.Fatalf("statuses with a broken ingest: %+v %v", st, err)
	}

	w, err = cs.Writer(ctx, content.WithRef("broken"))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := w.Status(); st.Offset != 0 {
		t.Errorf("broken ingest resumed at %d", st.Offset)
	}
	w.Write([]byte("whole"))
	if err := w.Commit(ctx, 5, digest.FromString("whole")); err != nil {
		t.Fatal(err)
	}

	breakIngest("broken again")
	// A directory whose ref file is gone altogether.
	if err := os.MkdirAll(filepath.Join(root, "content", "ingest", "junk"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := cs.(*contentstore.Store).AbortOwn(ctx); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "content", "ingest"))
	if len(entries) != 1 || entries[0].Name() != filepath.Base(ingestDir("fine")) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("ingests after AbortOwn: %v", names)
	}
}

// TestCommitRefusalKeepsWriter: a commit refused for its labels leaves the
// writer usable.
func TestCommitRefusalKeepsWriter(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	w, err := cs.Writer(ctx, content.WithRef("keep"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write([]byte("kept"))
	err = w.Commit(ctx, 4, "", content.WithLabels(map[string]string{"": "x"}))
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("commit with an empty label key: %v", err)
	}
	if err := w.Commit(ctx, 4, digest.FromString("kept")); err != nil {
		t.Fatalf("commit after a refused one: %v", err)
	}
	if got := readAll(t, cs, digest.FromString("kept")); string(got) != "kept" {
		t.Errorf("blob %q", got)
	}
}
