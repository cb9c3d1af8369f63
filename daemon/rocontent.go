package daemon

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// imageStoreContent is the daemon's content store as containerd sees it
// when read-only image stores are configured: a blob the root does not
// have is read from the first store that has it (Info and ReaderAt only).
// containerd's metadata, sharing content across namespaces, then records
// such a blob (a manifest, a config, a layer) in a namespace without its
// bytes being copied. Walk lists the root's own blobs only, so
// containerd's garbage collector never tries to delete a store's. The
// cs store's own calls are not redirected: it reads the stores itself.
type imageStoreContent struct {
	content.Store
	stores []*ImageStore
}

func (c imageStoreContent) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	info, err := c.Store.Info(ctx, d)
	if !errdefs.IsNotFound(err) || snapshotter.IsStoreCaller(ctx) {
		return info, err
	}
	for _, is := range c.stores {
		if ri, rerr := is.Content.Info(ctx, d); rerr == nil {
			// Its labels are the other root's business.
			return content.Info{Digest: ri.Digest, Size: ri.Size, CreatedAt: ri.CreatedAt, UpdatedAt: ri.UpdatedAt}, nil
		}
	}
	return info, err
}

func (c imageStoreContent) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ra, err := c.Store.ReaderAt(ctx, desc)
	if !errdefs.IsNotFound(err) || snapshotter.IsStoreCaller(ctx) {
		return ra, err
	}
	for _, is := range c.stores {
		if rra, rerr := is.Content.ReaderAt(ctx, desc); rerr == nil {
			return rra, nil
		}
	}
	return ra, err
}
