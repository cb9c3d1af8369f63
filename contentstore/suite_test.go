package contentstore_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/testsuite"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

func newStore(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
	db, err := metadata.Open(ctx, filepath.Join(root, metadata.FileName))
	if err != nil {
		return ctx, nil, nil, err
	}
	cs, err := contentstore.New(filepath.Join(root, "content"), db)
	if err != nil {
		db.Close()
		return ctx, nil, nil, err
	}
	return ctx, cs, db.Close, nil
}

// TestContentSuite runs containerd's own content store suite in-process.
func TestContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "cs", newStore)
}
