package daemon

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
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
	return fallThrough(ctx, c, func(s content.Store) (content.Info, error) {
		info, err := s.Info(ctx, d)
		if err == nil && s != c.Store {
			// Its labels are the other root's business.
			info = content.Info{Digest: info.Digest, Size: info.Size, CreatedAt: info.CreatedAt, UpdatedAt: info.UpdatedAt}
		}
		return info, err
	})
}

func (c imageStoreContent) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	return fallThrough(ctx, c, func(s content.Store) (content.ReaderAt, error) { return s.ReaderAt(ctx, desc) })
}

// fallThrough calls call on the root's content store, then, for containerd
// and while the answer is NotFound, on each read-only store's. A store that
// fails otherwise (its daemon gone, its disk unreadable) is logged and
// passed over: the answer is then NotFound, and containerd fetches the
// blob itself as it would without the store.
func fallThrough[T any](ctx context.Context, c imageStoreContent, call func(content.Store) (T, error)) (T, error) {
	v, err := call(c.Store)
	if !errdefs.IsNotFound(err) || snapshotter.IsStoreCaller(ctx) {
		return v, err
	}
	for _, is := range c.stores {
		rv, rerr := call(is.Content)
		switch {
		case rerr == nil:
			return rv, nil
		case !errdefs.IsNotFound(rerr):
			log.G(ctx).WithError(rerr).WithField("store", is.Path).Warn("reading content from a read-only image store failed")
		}
	}
	return v, err
}
