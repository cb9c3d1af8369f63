package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// lossySnapshotter answers Update with an error: after applying it (the
// reply lost on the way back through the socket) or without.
type lossySnapshotter struct {
	snapshots.Snapshotter
	apply bool
}

var errLostReply = errors.New("connection reset: reply lost")

func (l *lossySnapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	if l.apply {
		if _, err := l.Snapshotter.Update(ctx, info, fieldpaths...); err != nil {
			return snapshots.Info{}, err
		}
	}
	return snapshots.Info{}, errdefs.ErrUnavailable
}

// TestSetBigDataLostReply: SetLayerBigData and SetContainerBigData whose
// label update takes effect but answers an error keep the new blob (the
// layer names it) and succeed; one whose update did not take effect fails
// and leaves the old value and its blob.
func TestSetBigDataLostReply(t *testing.T) {
	requireRoot(t)
	s, err := GetStore(StoreOptions{GraphRoot: filepath.Join(t.TempDir(), "root"), RunRoot: filepath.Join(t.TempDir(), "run")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	st := s.(*store)
	l, err := s.CreateLayer("", "", []string{"lossy"}, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.CreateContainer("", []string{"lossy-ctr"}, "", "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	read := func(get func() (io.ReadCloser, error)) string {
		t.Helper()
		rc, err := get()
		if err != nil {
			t.Fatalf("big data lost: %v", err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	layerData := func() (io.ReadCloser, error) { return s.LayerBigData(l.ID, "k") }
	ctrData := func() (io.ReadCloser, error) {
		b, err := s.ContainerBigData(c.ID, "k")
		return io.NopCloser(bytes.NewReader(b)), err
	}
	if err := s.SetLayerBigData(l.ID, "k", bytes.NewBufferString("old")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetContainerBigData(c.ID, "k", []byte("old")); err != nil {
		t.Fatal(err)
	}
	sn := st.sn
	defer func() { st.sn = sn }()

	st.sn = &lossySnapshotter{Snapshotter: sn}
	if err := s.SetLayerBigData(l.ID, "k", bytes.NewBufferString("refused")); !errdefs.IsUnavailable(err) {
		t.Errorf("layer big data update refused: %v", err)
	}
	if err := s.SetContainerBigData(c.ID, "k", []byte("refused")); !errdefs.IsUnavailable(err) {
		t.Errorf("container big data update refused: %v", err)
	}
	if _, err := st.cs.Info(st.ctx, digest.FromString("refused")); !errdefs.IsNotFound(err) {
		t.Errorf("blob of a refused update kept: %v", err)
	}
	st.sn = sn
	if got := read(layerData); got != "old" {
		t.Errorf("layer big data after a refused update: %q", got)
	}
	if got := read(ctrData); got != "old" {
		t.Errorf("container big data after a refused update: %q", got)
	}

	st.sn = &lossySnapshotter{Snapshotter: sn, apply: true}
	if err := s.SetLayerBigData(l.ID, "k", bytes.NewBufferString("new")); err != nil {
		t.Errorf("layer big data update that took effect: %v", err)
	}
	if err := s.SetContainerBigData(c.ID, "k", []byte("new")); err != nil {
		t.Errorf("container big data update that took effect: %v", err)
	}
	st.sn = sn
	if err := s.GarbageCollect(); err != nil {
		t.Fatal(err)
	}
	if got := read(layerData); got != "new" {
		t.Errorf("layer big data after a lost reply: %q", got)
	}
	if got := read(ctrData); got != "new" {
		t.Errorf("container big data after a lost reply: %q", got)
	}
	if _, err := st.cs.Info(st.ctx, digest.FromString("old")); !errdefs.IsNotFound(err) {
		t.Errorf("the replaced blob is kept: %v", err)
	}
}
