package storage

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type grpcFailingStore struct{ content.Store }

func (grpcFailingStore) ReaderAt(context.Context, ocispec.Descriptor) (content.ReaderAt, error) {
	return grpcFailingReader{}, nil
}

type grpcFailingReader struct{ io.Closer }

func (grpcFailingReader) ReadAt([]byte, int64) (int, error) {
	return 0, status.Error(codes.NotFound, "content digest sha256:x: not found")
}
func (grpcFailingReader) Size() int64  { return 1 }
func (grpcFailingReader) Close() error { return nil }

// TestNativeReads: a blob deleted while it is read through the proxy is
// NotFound to the store, as every other answer of the proxy is.
func TestNativeReads(t *testing.T) {
	cs := nativeReads{grpcFailingStore{}}
	_, err := content.ReadBlob(context.Background(), cs, ocispec.Descriptor{Size: 1})
	if !errdefs.IsNotFound(err) {
		t.Errorf("ReadAt's gRPC NotFound reads as %v", err)
	}
}

type nativeMissingStore struct{ content.Store }

func (nativeMissingStore) ReaderAt(context.Context, ocispec.Descriptor) (content.ReaderAt, error) {
	return nil, fmt.Errorf("content sha256:x: %w", errdefs.ErrNotFound)
}

// TestNativeReadsConvertOnce: an error the proxy converted already (its
// ReaderAt asks Info first, and answers Info's error converted) stays what
// it is: NotFound, not the Unknown a second conversion makes of it, so a
// blob deleted since the walk is skipped by the listings.
func TestNativeReadsConvertOnce(t *testing.T) {
	cs := nativeReads{nativeMissingStore{}}
	_, err := cs.ReaderAt(context.Background(), ocispec.Descriptor{Size: 1})
	if !errdefs.IsNotFound(err) {
		t.Errorf("ReaderAt's NotFound reads as %v", err)
	}
	if err := toNative(nil); err != nil {
		t.Errorf("toNative(nil) = %v", err)
	}
}
