package daemon

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// failingContent is a read-only store whose reads fail as a store whose
// daemon has gone does.
type failingContent struct{ content.Store }

func (failingContent) Info(context.Context, digest.Digest) (content.Info, error) {
	return content.Info{}, fmt.Errorf("connection refused: %w", errdefs.ErrUnavailable)
}

// TestFallThroughPassesOverFailingStore: a read-only store that fails
// (not NotFound) does not hide a later store's blob, and when no store has
// the blob containerd is told NotFound, so it fetches the blob itself.
func TestFallThroughPassesOverFailingStore(t *testing.T) {
	ctx := context.Background()
	open := func() content.Store {
		cs, err := local.NewStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	root, shared := open(), open()
	blob := []byte("a layer only the second store has")
	d := digest.FromBytes(blob)
	desc := ocispec.Descriptor{Digest: d, Size: int64(len(blob))}
	if err := content.WriteBlob(ctx, shared, "blob", bytes.NewReader(blob), desc); err != nil {
		t.Fatal(err)
	}
	c := imageStoreContent{Store: root, stores: []*ImageStore{
		{Path: "/failing", Content: failingContent{}},
		{Path: "/shared", Content: shared},
	}}
	if info, err := c.Info(ctx, d); err != nil || info.Size != int64(len(blob)) {
		t.Errorf("Info of the second store's blob past a failing one: %+v %v", info, err)
	}
	missing := digest.FromString("nobody has this")
	if _, err := c.Info(ctx, missing); !errdefs.IsNotFound(err) {
		t.Errorf("Info of a blob no store has, one failing: %v, want NotFound", err)
	}
	// The root's and the shared store's blobs are as they were.
	if _, err := root.Info(ctx, d); !errdefs.IsNotFound(err) {
		t.Errorf("the root got the shared blob: %v", err)
	}
	if b, err := content.ReadBlob(ctx, shared, desc); err != nil || string(b) != string(blob) {
		t.Errorf("the shared blob afterwards: %q %v", b, err)
	}
}
