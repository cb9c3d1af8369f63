package storage

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs/pkg/errgrpc"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/status"
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
		return nil, toNative(err)
	}
	return nativeReaderAt{ra}, nil
}

type nativeReaderAt struct {
	content.ReaderAt
}

func (r nativeReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.ReaderAt.ReadAt(p, off)
	return n, toNative(err)
}

// toNative converts a gRPC status error into its errdefs error, and leaves
// any other alone: converting one the proxy converted already (ReaderAt's,
// from its Info call) would make it Unknown, a NotFound among them.
func toNative(err error) error {
	if _, isGRPC := status.FromError(err); !isGRPC {
		return err
	}
	return errgrpc.ToNative(err)
}
