package imagebuild

import (
	"context"
	"io"

	"github.com/containerd/containerd/v2/pkg/archive"
)

func applyLayer(ctx context.Context, root string, r io.Reader) (int64, error) {
	return archive.Apply(ctx, root, r)
}
