package contentstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// NewReadOnly returns a content store that only reads the blobs under root,
// their labels from db (opened with metadata.OpenReadOnly). Unlike New, it
// creates nothing under root (containerd's local store probes fs-verity by
// making a directory there), lists no ingests, and answers every write
// (Writer, Update, Delete, Abort) with an error wrapping
// metadata.ErrReadOnly and errdefs.ErrFailedPrecondition.
func NewReadOnly(root string, db *metadata.DB) (*Store, error) {
	if fi, err := os.Stat(root); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", root)
	}
	ls := db.ContentLabels()
	s := &Store{root: root, labels: ls, readOnly: true}
	s.Store = readOnlyBlobs{s: s}
	return s, nil
}

func (s *Store) refuseWrite(what string) error {
	if !s.readOnly {
		return nil
	}
	return fmt.Errorf("%s: content store %s is read-only: %w: %w", what, s.root, metadata.ErrReadOnly, errdefs.ErrFailedPrecondition)
}

// readOnlyBlobs is what the read-only Store embeds in place of containerd's
// local store: Info from the blob file and the labels; nothing else.
type readOnlyBlobs struct{ s *Store }

func (b readOnlyBlobs) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	p, err := b.s.blobPath(dgst)
	if err != nil {
		return content.Info{}, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return content.Info{}, fmt.Errorf("content %v: %w", dgst, errdefs.ErrNotFound)
	}
	if err != nil {
		return content.Info{}, err
	}
	labels, err := b.s.labels.Get(dgst)
	if err != nil {
		return content.Info{}, err
	}
	info := content.Info{Digest: dgst, Size: fi.Size(), CreatedAt: fi.ModTime(), UpdatedAt: fi.ModTime(), Labels: labels}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.UpdatedAt = time.Unix(st.Atim.Unix())
	}
	return info, nil
}

func (b readOnlyBlobs) Update(context.Context, content.Info, ...string) (content.Info, error) {
	return content.Info{}, b.s.refuseWrite("update content")
}

func (b readOnlyBlobs) Walk(ctx context.Context, fn content.WalkFunc, fs ...string) error {
	return b.s.Walk(ctx, fn, fs...)
}

func (b readOnlyBlobs) Delete(context.Context, digest.Digest) error {
	return b.s.refuseWrite("delete content")
}

func (b readOnlyBlobs) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	return b.s.ReaderAt(ctx, desc)
}

func (b readOnlyBlobs) Status(_ context.Context, ref string) (content.Status, error) {
	return content.Status{}, fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
}

func (b readOnlyBlobs) ListStatuses(context.Context, ...string) ([]content.Status, error) {
	return nil, nil
}

func (b readOnlyBlobs) Abort(_ context.Context, ref string) error {
	return b.s.refuseWrite("abort ingest " + ref)
}

func (b readOnlyBlobs) Writer(context.Context, ...content.WriterOpt) (content.Writer, error) {
	return nil, b.s.refuseWrite("write content")
}
