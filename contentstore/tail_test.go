package contentstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
)

// tails collects what an ingest hook is given, reading each tail to its
// end on a goroutine.
type tails struct {
	got chan tailRead
}

type tailRead struct {
	ref  string
	data []byte
	err  error
	dgst digest.Digest
}

func followed(t *testing.T, cs *contentstore.Store) *tails {
	tl := &tails{got: make(chan tailRead, 8)}
	cs.SetIngestHook(func(ref string, tail *contentstore.Tail) {
		go func() {
			defer tail.Close()
			data, err := io.ReadAll(tail)
			tl.got <- tailRead{ref, data, err, tail.Digest()}
		}()
	})
	t.Cleanup(func() { cs.SetIngestHook(nil) })
	return tl
}

func (tl *tails) next(t *testing.T) tailRead {
	t.Helper()
	select {
	case r := <-tl.got:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no tail read to its end")
		return tailRead{}
	}
}

// TestTailFollowsIngest: a tail reads an ingest's bytes as they are
// written, small and large writes alike, and ends with io.EOF and the
// blob's digest at its commit.
func TestTailFollowsIngest(t *testing.T) {
	cs := newOwnStore(t)
	tl := followed(t, cs)
	ctx := context.Background()
	w, err := cs.Writer(ctx, content.WithRef("followed"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var all bytes.Buffer
	for i, n := range []int{100, 3 << 20, 7, 200 << 10} {
		p := bytes.Repeat([]byte{byte('a' + i)}, n)
		all.Write(p)
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(ctx, int64(all.Len()), ""); err != nil {
		t.Fatal(err)
	}
	r := tl.next(t)
	if r.err != nil || r.ref != "followed" || !bytes.Equal(r.data, all.Bytes()) || r.dgst != digest.FromBytes(all.Bytes()) {
		t.Errorf("tail read %d bytes, %v, ref %q, digest %s; want %d bytes of %s", len(r.data), r.err, r.ref, r.dgst, all.Len(), digest.FromBytes(all.Bytes()))
	}
}

// TestTailAbandoned: a tail of an ingest that is closed, truncated or
// fails its commit ends with ErrIngestAbandoned, and the store is as
// without it: the ingest resumes, and commits.
func TestTailAbandoned(t *testing.T) {
	cs := newOwnStore(t)
	tl := followed(t, cs)
	ctx := context.Background()
	for name, end := range map[string]func(w content.Writer) error{
		"close":    func(w content.Writer) error { return w.Close() },
		"truncate": func(w content.Writer) error { return w.Truncate(0) },
		"bad commit": func(w content.Writer) error {
			if err := w.Commit(ctx, 0, digest.FromString("other")); err == nil {
				return errors.New("commit of the wrong digest succeeded")
			}
			return nil
		},
	} {
		ref := "abandoned-" + strings.ReplaceAll(name, " ", "-")
		w, err := cs.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("partial"))
		if err := end(w); err != nil {
			t.Fatal(err)
		}
		w.Close()
		if r := tl.next(t); !errors.Is(r.err, contentstore.ErrIngestAbandoned) || r.dgst != "" {
			t.Errorf("%s: tail ended with %v, digest %q", name, r.err, r.dgst)
		}
		// Intact: the ingest goes on and commits (a resumed one is not
		// followed).
		if err := content.WriteBlob(ctx, cs, ref, strings.NewReader("partial and more"), ocispecDesc("partial and more")); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := readAll(t, cs, digest.FromString("partial and more")); string(got) != "partial and more" {
			t.Errorf("%s: blob %q", name, got)
		}
		select {
		case r := <-tl.got:
			t.Errorf("%s: the resumed ingest was followed: %+v", name, r)
		case <-time.After(100 * time.Millisecond):
		}
		cs.Delete(ctx, digest.FromString("partial and more"))
	}
}

func newOwnStore(t *testing.T) *contentstore.Store {
	t.Helper()
	return newTestStore(t).(*contentstore.Store)
}

func ocispecDesc(data string) ocispec.Descriptor {
	return ocispec.Descriptor{Digest: digest.FromString(data), Size: int64(len(data))}
}

// TestTailKeepsBlobTimes: a tail read after the commit leaves the blob's
// times as the commit set them. The blob's access time is its UpdatedAt,
// and a read would otherwise move it to the kernel's coarse clock, which
// can be before the commit (containerd's content suite caught that).
func TestTailKeepsBlobTimes(t *testing.T) {
	cs := newOwnStore(t)
	start := make(chan struct{})
	read := make(chan error, 1)
	cs.SetIngestHook(func(_ string, tail *contentstore.Tail) {
		go func() {
			defer tail.Close()
			<-start
			_, err := io.ReadAll(tail)
			read <- err
		}()
	})
	t.Cleanup(func() { cs.SetIngestHook(nil) })
	ctx := context.Background()
	data := bytes.Repeat([]byte("x"), 1<<20)
	if err := content.WriteBlob(ctx, cs, "late-tail", bytes.NewReader(data), ocispec.Descriptor{Size: int64(len(data)), Digest: digest.FromBytes(data)}); err != nil {
		t.Fatal(err)
	}
	before, err := cs.Info(ctx, digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // past a clock tick
	close(start)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	after, err := cs.Info(ctx, digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	if !after.UpdatedAt.Equal(before.UpdatedAt) || !after.CreatedAt.Equal(before.CreatedAt) {
		t.Errorf("after the tail's read: created %s updated %s, want %s and %s", after.CreatedAt, after.UpdatedAt, before.CreatedAt, before.UpdatedAt)
	}
}
