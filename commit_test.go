package storage

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// lossyCommitter answers Commit with Unavailable: after committing (the
// reply lost on the way back through the socket) or without.
type lossyCommitter struct {
	snapshots.Snapshotter
	apply bool
}

func (l *lossyCommitter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	if l.apply {
		if err := l.Snapshotter.Commit(ctx, name, key, opts...); err != nil {
			return err
		}
	}
	return errdefs.ErrUnavailable
}

// TestPutLayerLostCommitReply: a PutLayer whose Commit takes effect but
// answers an error succeeds, and its layer keeps its tar-split (Diff
// reproduces the tar, also after GarbageCollect); one whose Commit did not
// take effect fails, leaves no layer, and releases the tar-split it stored.
func TestPutLayerLostCommitReply(t *testing.T) {
	requireRoot(t)
	s, err := GetStore(StoreOptions{GraphRoot: filepath.Join(t.TempDir(), "root"), RunRoot: filepath.Join(t.TempDir(), "run")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	st := s.(*store)
	old := staleAfter
	staleAfter = -time.Hour // GarbageCollect releases every reference no layer holds
	defer func() { staleAfter = old }()
	tarball := layerTar(t, []entry{
		{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "etc/lost-reply", Typeflag: tar.TypeReg, Mode: 0o644}, body: "committed anyway\n"},
	})
	blobsBefore := blobCount(t, st.cs)
	sn := st.sn
	defer func() { st.sn = sn }()

	st.sn = &lossyCommitter{Snapshotter: sn}
	if _, _, err := s.PutLayer("", "", []string{"refused"}, "", false, nil, bytes.NewReader(tarball)); !errdefs.IsUnavailable(err) {
		t.Errorf("PutLayer whose commit did not happen: %v, want Unavailable", err)
	}
	st.sn = sn
	if s.Exists("refused") {
		t.Error("a layer whose commit did not happen exists")
	}
	if err := s.GarbageCollect(); err != nil {
		t.Fatal(err)
	}
	if n := blobCount(t, st.cs); n != blobsBefore {
		t.Errorf("%d blobs after a PutLayer whose commit did not happen, want %d", n, blobsBefore)
	}

	st.sn = &lossyCommitter{Snapshotter: sn, apply: true}
	l, _, err := s.PutLayer("", "", []string{"kept"}, "", false, nil, bytes.NewReader(tarball))
	st.sn = sn
	if err != nil {
		t.Fatalf("PutLayer whose commit took effect: %v", err)
	}
	if err := s.GarbageCollect(); err != nil {
		t.Fatal(err)
	}
	u := Uncompressed
	rc, err := s.Diff("", l.ID, &DiffOptions{Compression: &u})
	if err != nil {
		t.Fatalf("Diff of a layer whose commit reply was lost: %v", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, tarball) {
		t.Error("Diff of a layer whose commit reply was lost does not reproduce its tar (tar-split released?)")
	}
	if n := blobCount(t, st.cs); n != blobsBefore+1 {
		t.Errorf("%d blobs, want %d (the kept layer's tar-split)", n, blobsBefore+1)
	}
}
