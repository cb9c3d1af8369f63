// Package differ is cs-snapshotter's diff service for containerd (a `diff`
// proxy plugin): Apply unpacks a layer blob from the daemon's own content
// store straight into the daemon's own snapshot directory, recording its
// tar-split so the layer can later be reproduced bit for bit; Diff (Compare)
// answers with the layer's original blob when it has one.
package differ

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/layerdiff"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// Service implements containerd's diff gRPC service.
type Service struct {
	diffapi.UnimplementedDiffServer
	sn *snapshotter.Snapshotter
	cs content.Store
	db *metadata.DB
	// maxLayerSize bounds what one layer may expand to; 0: no bound.
	maxLayerSize int64
	// ahead unpacks blobs as they are written; nil: not done.
	ahead *ahead
}

// Close stops unpacking ahead, if it was started.
func (s *Service) Close(ctx context.Context) {
	if s.ahead != nil {
		s.ahead.Close(ctx)
	}
}

// New returns the diff service over the daemon's snapshotter, content store
// and database; a layer expanding to more than maxLayerSize bytes (0: no
// bound) is refused.
func New(sn *snapshotter.Snapshotter, cs content.Store, db *metadata.DB, maxLayerSize int64) *Service {
	return &Service{sn: sn, cs: cs, db: db, maxLayerSize: maxLayerSize}
}

// BlobRef is the label by which snapshot id keeps its tar-split blob.
func BlobRef(id string) string {
	return cslabels.BlobRefPrefix + "snapshot." + id + ".tar-split"
}

// Apply applies the layer blob req.Diff into the snapshot whose mounts are
// req.Mounts and returns the uncompressed layer's descriptor (its diff ID).
func (s *Service) Apply(ctx context.Context, req *diffapi.ApplyRequest) (*diffapi.ApplyResponse, error) {
	desc, err := s.apply(ctx, req)
	if err != nil {
		log.G(ctx).WithError(err).WithField("digest", req.GetDiff().GetDigest()).Debug("apply failed")
		return nil, errgrpc.ToGRPC(err)
	}
	return &diffapi.ApplyResponse{Applied: &types.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest.String(), Size: desc.Size}}, nil
}

func (s *Service) apply(ctx context.Context, req *diffapi.ApplyRequest) (ocispec.Descriptor, error) {
	d := req.GetDiff()
	if d == nil {
		return ocispec.Descriptor{}, fmt.Errorf("apply: no diff descriptor: %w", errdefs.ErrInvalidArgument)
	}
	if len(req.Payloads) > 0 || strings.Contains(d.MediaType, "encrypted") {
		return ocispec.Descriptor{}, fmt.Errorf("apply %s: stream processors are not supported: %w", d.MediaType, errdefs.ErrNotImplemented)
	}
	if !isLayer(d.MediaType) {
		return ocispec.Descriptor{}, fmt.Errorf("apply: media type %q is not a layer: %w", d.MediaType, errdefs.ErrNotImplemented)
	}
	dgst, err := digest.Parse(d.Digest)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("apply: digest %q: %w", d.Digest, errdefs.ErrInvalidArgument)
	}
	upper, lowers, err := s.target(req.Mounts)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	id, ok := s.sn.SnapshotID(upper)
	if !ok {
		return ocispec.Descriptor{}, fmt.Errorf("apply: %s is not a cs-snapshotter snapshot: %w", upper, errdefs.ErrNotImplemented)
	}

	res, w, err := s.extract(ctx, id, upper, lowers, dgst, d.Size)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer w.Close()
	labels := map[string]string{
		cslabels.CompressedDigest:   res.CompressedDigest.String(),
		cslabels.CompressedSize:     strconv.FormatInt(res.CompressedSize, 10),
		cslabels.UncompressedDigest: res.UncompressedDigest.String(),
		cslabels.UncompressedSize:   strconv.FormatInt(res.UncompressedSize, 10),
		cslabels.Compression:        res.Compression.String(),
	}
	if res.Reproducible {
		// Recorded before the blob takes this snapshot's reference: killed
		// in between, the record still names the blob, and the snapshot's
		// Remove releases it.
		pending := map[string]string{cslabels.TarSplit: w.Digest().String()}
		if err := s.db.Update(ctx, func(_ context.Context, tx *bolt.Tx) error {
			return metadata.AppliedRecords(tx).Put(id, pending)
		}); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("apply %s: %w", dgst, err)
		}
		ts, err := contentstore.CommitReferenced(ctx, s.cs, w, map[string]string{BlobRef(id): "tar-split"})
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("apply %s: store tar-split: %w", dgst, err)
		}
		labels[cslabels.TarSplit] = ts.String()
	} else {
		st, _ := w.Status()
		s.cs.Abort(ctx, st.Ref)
		log.G(ctx).WithField("digest", dgst).WithField("why", res.NotReproducible).Debug("layer not reproducible from its files")
	}
	if err := s.db.Update(ctx, func(_ context.Context, tx *bolt.Tx) error {
		return metadata.AppliedRecords(tx).Put(id, labels)
	}); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("apply %s: %w", dgst, err)
	}
	if req.SyncFs {
		if err := syncFS(upper); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: res.UncompressedDigest, Size: res.UncompressedSize}, nil
}

// extract puts layer blob dgst into upper, over lowers, for snapshot id:
// adopting it from the blobs unpacked ahead when it is there and fits,
// unpacking it otherwise. The tar-split is in w, not yet committed.
func (s *Service) extract(ctx context.Context, id, upper string, lowers []string, dgst digest.Digest, size int64) (layerdiff.ApplyResult, content.Writer, error) {
	if s.ahead != nil {
		if u := s.ahead.take(ctx, dgst); u != nil {
			err := layerdiff.Adopt(u.stage, upper, lowers, &u.unp)
			if err == nil {
				s.ahead.adopted(u)
				log.G(ctx).WithField("digest", dgst).Debug("adopted the layer unpacked ahead")
				return u.res, u.w, nil
			}
			s.ahead.release(ctx, u)
			if !errors.Is(err, layerdiff.ErrNotAdoptable) {
				return layerdiff.ApplyResult{}, nil, fmt.Errorf("apply %s: %w", dgst, err)
			}
			s.ahead.outcomes[outcomeNotFitting].Add(1)
			log.G(ctx).WithError(err).WithField("digest", dgst).Debug("unpacking again onto the parents")
		}
	}

	ra, err := s.cs.ReaderAt(ctx, ocispec.Descriptor{Digest: dgst, Size: size})
	if err != nil {
		return layerdiff.ApplyResult{}, nil, fmt.Errorf("apply %s: %w", dgst, err)
	}
	defer ra.Close()

	ref := "cs.apply." + id
	w, err := content.OpenWriter(ctx, s.cs, content.WithRef(ref))
	if err != nil {
		return layerdiff.ApplyResult{}, nil, fmt.Errorf("apply %s: record tar-split: %w", dgst, err)
	}
	fail := func(err error) (layerdiff.ApplyResult, content.Writer, error) {
		w.Close()
		s.cs.Abort(ctx, ref)
		return layerdiff.ApplyResult{}, nil, err
	}
	if err := w.Truncate(0); err != nil {
		return fail(err)
	}
	res, err := layerdiff.Apply(ctx, upper, io.NewSectionReader(ra, 0, ra.Size()), layerdiff.ApplyOptions{TarSplit: w, Parents: lowers, MaxUncompressed: s.maxLayerSize})
	if err != nil {
		if errors.Is(err, layerdiff.ErrTooLarge) || errors.Is(err, layerdiff.ErrEscape) || errors.Is(err, layerdiff.ErrTruncated) {
			err = fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
		}
		return fail(fmt.Errorf("apply %s: %w", dgst, err))
	}
	if res.CompressedDigest != dgst {
		return fail(fmt.Errorf("apply: blob %s has digest %s: %w", dgst, res.CompressedDigest, errdefs.ErrFailedPrecondition))
	}
	return res, w, nil
}

// ReleaseOrphans lets go of the tar-splits of snapshots that are gone: a
// daemon killed between a snapshot's removal and Released leaves the
// blob's reference behind. For start-up, while nobody else uses the root.
func (s *Service) ReleaseOrphans(ctx context.Context) error {
	ids, err := s.sn.RecordIDs(ctx)
	if err != nil {
		return err
	}
	type orphan struct {
		dgst digest.Digest
		ref  string
	}
	var orphans []orphan
	prefix := cslabels.BlobRefPrefix + "snapshot."
	if err := s.cs.Walk(ctx, func(info content.Info) error {
		for k := range info.Labels {
			rest, ok := strings.CutPrefix(k, prefix)
			if !ok {
				continue
			}
			if id, _, _ := strings.Cut(rest, "."); !ids[id] {
				orphans = append(orphans, orphan{info.Digest, k})
			}
		}
		return nil
	}); err != nil {
		return err
	}
	var errs []error
	for _, o := range orphans {
		log.G(ctx).WithField("digest", o.dgst).WithField("ref", o.ref).Info("releasing the reference of a snapshot that is gone")
		if err := contentstore.Release(ctx, s.cs, o.dgst, o.ref); err != nil {
			errs = append(errs, fmt.Errorf("release %s of blob %s: %w", o.ref, o.dgst, err))
		}
	}
	return errors.Join(errs...)
}

// Released lets go of what a removed snapshot referenced: its tar-split
// blob, once no other snapshot or layer uses it.
func (s *Service) Released(ctx context.Context, id string, labels map[string]string) {
	ts := labels[cslabels.TarSplit]
	if ts == "" {
		return
	}
	if err := contentstore.Release(ctx, s.cs, digest.Digest(ts), BlobRef(id)); err != nil {
		log.G(ctx).WithError(err).WithField("digest", ts).Warn("releasing tar-split blob")
	}
}

// target returns the directory a layer is applied into and those beneath
// it, from mounts the daemon's snapshotter gave for an active snapshot.
func (s *Service) target(mounts []*types.Mount) (string, []string, error) {
	if len(mounts) != 1 {
		return "", nil, fmt.Errorf("apply: %d mounts, want one of cs-snapshotter's: %w", len(mounts), errdefs.ErrNotImplemented)
	}
	m := mounts[0]
	switch m.Type {
	case "bind":
		for _, o := range m.Options {
			if o == "ro" {
				return "", nil, fmt.Errorf("apply: read-only mount of %s: %w", m.Source, errdefs.ErrInvalidArgument)
			}
		}
		return m.Source, nil, nil
	case "overlay":
		var upper string
		var lowers []string
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = v
			} else if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				lowers = strings.Split(v, ":")
			}
		}
		if upper == "" {
			return "", nil, fmt.Errorf("apply: overlay mount without upperdir: %w", errdefs.ErrInvalidArgument)
		}
		return upper, lowers, nil
	}
	return "", nil, fmt.Errorf("apply: mount type %q: %w", m.Type, errdefs.ErrNotImplemented)
}

// Diff answers Compare with the original blob of the layer on the right,
// when the left is its parent and the daemon applied it from a blob it
// still has; anything else is left to containerd's own differ.
func (s *Service) Diff(ctx context.Context, req *diffapi.DiffRequest) (*diffapi.DiffResponse, error) {
	desc, err := s.original(ctx, req)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &diffapi.DiffResponse{Diff: &types.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest.String(), Size: desc.Size}}, nil
}

func (s *Service) original(ctx context.Context, req *diffapi.DiffRequest) (ocispec.Descriptor, error) {
	notHere := func(why string) (ocispec.Descriptor, error) {
		return ocispec.Descriptor{}, fmt.Errorf("diff: %s: %w", why, errdefs.ErrNotImplemented)
	}
	upperDirs, err := layerDirs(req.Right)
	if err != nil || len(upperDirs) == 0 {
		return notHere("right side is not a view of a layer")
	}
	lowerDirs, err := layerDirs(req.Left)
	if err != nil || !equal(lowerDirs, upperDirs[1:]) {
		return notHere("left side is not the parent of the right")
	}
	id, ok := s.sn.SnapshotID(upperDirs[0])
	if !ok {
		return notHere("not a cs-snapshotter snapshot")
	}
	labels, err := s.sn.LabelsOf(ctx, id)
	if err != nil {
		return notHere(err.Error())
	}
	blob := digest.Digest(labels[cslabels.CompressedDigest])
	if blob == "" {
		return notHere("no original blob recorded")
	}
	info, err := s.cs.Info(ctx, blob)
	if err != nil {
		return notHere("original blob gone")
	}
	mediaType := mediaTypeFor(labels[cslabels.Compression])
	if req.MediaType != "" && req.MediaType != mediaType {
		return notHere(fmt.Sprintf("asked for %s, have %s", req.MediaType, mediaType))
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: blob, Size: info.Size}, nil
}

// layerDirs lists the directories of a read-only view: the layer first.
func layerDirs(mounts []*types.Mount) ([]string, error) {
	if len(mounts) == 0 {
		return nil, nil
	}
	if len(mounts) != 1 {
		return nil, fmt.Errorf("%d mounts", len(mounts))
	}
	m := mounts[0]
	switch m.Type {
	case "bind":
		return []string{m.Source}, nil
	case "overlay":
		var dirs []string
		for _, o := range m.Options {
			if strings.HasPrefix(o, "upperdir=") {
				return nil, fmt.Errorf("not read-only")
			}
			if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				dirs = strings.Split(v, ":")
			}
		}
		return dirs, nil
	}
	return nil, fmt.Errorf("mount type %q", m.Type)
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func isLayer(mt string) bool {
	return images.IsLayerType(mt) || mt == "" || strings.HasPrefix(mt, ocispec.MediaTypeImageLayer)
}

func mediaTypeFor(compression string) string {
	switch compression {
	case "gzip":
		return ocispec.MediaTypeImageLayerGzip
	case "zstd":
		return ocispec.MediaTypeImageLayerZstd
	}
	return ocispec.MediaTypeImageLayer
}

func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
