package storage

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs/pkg/errgrpc"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// nativeReads gives reads of a remote content store errdefs errors:
// containerd's content proxy converts the errors of every call but ReadAt,
// whose gRPC status (NotFound for a blob deleted while it was listed) the
// store must recognize like any other answer.
type nativeReads struct {
	content.Store
}

func (n nativeReads) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ra, err := n.Store.ReaderAt(ctx, desc)
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return nativeReaderAt{ra}, nil
}

type nativeReaderAt struct {
	content.ReaderAt
}

func (r nativeReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.ReaderAt.ReadAt(p, off)
	if err != nil {
		err = errgrpc.ToNative(err)
	}
	return n, err
}
