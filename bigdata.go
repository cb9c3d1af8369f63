package storage

import (
	"fmt"
	"io"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// blobReader opens blob dgst for reading.
func (s *store) blobReader(dgst digest.Digest) (content.ReaderAt, error) {
	info, err := s.cs.Info(s.ctx, dgst)
	if err != nil {
		return nil, err
	}
	return s.cs.ReaderAt(s.ctx, ocispec.Descriptor{Digest: dgst, Size: info.Size})
}

// writeBlob stores data as a blob referenced by ref (a cslabels.BlobRefPrefix
// label) and returns its digest.
func (s *store) writeBlob(ingest string, data io.Reader, ref string) (digest.Digest, error) {
	w, err := content.OpenWriter(s.ctx, s.cs, content.WithRef(ingest))
	if err != nil {
		return "", err
	}
	defer w.Close()
	if err := w.Truncate(0); err != nil {
		return "", err
	}
	if _, err := io.Copy(w, data); err != nil {
		s.cs.Abort(s.ctx, ingest)
		return "", err
	}
	// The same bytes may be another item's already: the blob gets this
	// reference too, in the same step.
	return contentstore.CommitReferenced(s.ctx, s.cs, w, map[string]string{ref: "bigdata"})
}

func bigDataRef(id, key string) string { return "bigdata/" + key }

// ListLayerBigData lists the big data keys of layer id.
func (s *store) ListLayerBigData(id string) ([]string, error) {
	l, err := s.Layer(id)
	if err != nil {
		return nil, err
	}
	return l.BigDataNames, nil
}

// LayerBigData returns big data item key of layer id.
func (s *store) LayerBigData(id, key string) (io.ReadCloser, error) {
	if key == "" {
		return nil, fmt.Errorf("can't retrieve layer big data value for empty name: %w", ErrInvalidBigDataName)
	}
	r, err := s.layer(id)
	if err != nil {
		return nil, err
	}
	dgst := r.labels[cslabels.BigDataPrefix+key]
	if dgst == "" {
		return nil, fmt.Errorf("layer %s has no big data item %q: %w", r.ID, key, errdefs.ErrNotFound)
	}
	ra, err := s.blobReader(digest.Digest(dgst))
	if err != nil {
		return nil, fmt.Errorf("big data %q of layer %s: %w", key, r.ID, err)
	}
	return &closers{ReadCloser: io.NopCloser(content.NewReader(ra)), after: func() { ra.Close() }}, nil
}

// SetLayerBigData stores data as big data item key of layer id, replacing
// any previous value.
func (s *store) SetLayerBigData(id, key string, data io.Reader) error {
	if key == "" || strings.ContainsRune(key, 0) {
		return fmt.Errorf("can't set empty name for layer big data item: %w", ErrInvalidBigDataName)
	}
	r, err := s.layer(id)
	if err != nil {
		return err
	}
	ref := cslabels.BlobRefPrefix + r.ID + "." + bigDataRef(r.ID, key)
	dgst, err := s.writeBlob("cs.bigdata."+r.ID+"."+digest.FromString(key).Encoded(), data, ref)
	if err != nil {
		return fmt.Errorf("store big data %q of layer %s: %w", key, r.ID, err)
	}
	label := cslabels.BigDataPrefix + key
	old := r.labels[label]
	if _, err := s.sn.Update(s.ctx, snapshots.Info{Name: r.key, Labels: map[string]string{label: dgst.String()}}, "labels."+label); err != nil {
		// Through the daemon's socket the answer can be lost after the
		// update took effect: the layer may name the new blob already.
		// Released then, it would be deleted under the layer.
		landed, known := s.snapshotLabel(r.key, label, dgst.String())
		if !landed {
			if known && old != dgst.String() {
				s.releaseBlob(dgst.String(), r.ID, bigDataRef(r.ID, key))
			}
			// Not known: the blob keeps its reference until gc finds no
			// layer naming it.
			if errdefs.IsInvalidArgument(err) {
				return fmt.Errorf("big data key %q of layer %s is too long: %w: %w", key, r.ID, ErrInvalidBigDataName, err)
			}
			return mapErr(err)
		}
	}
	if old != "" && old != dgst.String() {
		s.releaseBlob(old, r.ID, bigDataRef(r.ID, key))
	}
	return nil
}

// snapshotLabel tells whether snapshot key has label = value (landed), as
// far as it can be read (known).
func (s *store) snapshotLabel(key, label, value string) (landed, known bool) {
	info, err := s.sn.Stat(s.ctx, key)
	if err != nil {
		return false, errdefs.IsNotFound(err) // a layer gone names nothing
	}
	return info.Labels[label] == value, true
}
