package daemon

// The daemon's separate image store (config.toml's image_store, issue 8;
// containers/storage's imagestore): a second root, held by the daemon too,
// where the layers containerd unpacks go (each a snapshot its unpacker
// prepares with containerd.io/snapshot.ref) with the blobs, while
// containers' snapshots stay in the root. A snapshot made in the root on
// a layer of the image store stacks on a mirror of that layer's chain,
// made as a read-only image store's are (a committed snapshot whose files
// directory links to the layer's), but owned by the daemon and hidden
// from containerd: containerd sees one snapshotter, the union of both.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/differ"
	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

const (
	// imageMirrorPrefix keys the root's mirrors of the image store's
	// layers.
	imageMirrorPrefix = "cs.img/"
	// imageKeyLabel is the image store key a mirror stands for.
	imageKeyLabel = cslabels.Prefix + "img-key"
)

// splitRoot is the snapshotter containerd sees with an image store: root
// for everything but unpacked layers, img for those.
type splitRoot struct {
	root, img snapshots.Snapshotter
}

// holder returns which root has snapshot key.
func (s splitRoot) holder(ctx context.Context, key string) (snapshots.Snapshotter, error) {
	sctx := snapshotter.WithStoreCaller(ctx)
	for _, sn := range []snapshots.Snapshotter{s.root, s.img} {
		_, err := sn.Stat(sctx, key)
		if err == nil {
			return sn, nil
		}
		if !errdefs.IsNotFound(err) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("snapshot %q: %w", key, errdefs.ErrNotFound)
}

// outside shows info as containerd must see it: a snapshot of the root on
// a mirror has for parent the image store's layer the mirror stands for
// (containerd's GC removes children before parents by these parents; the
// mirrors themselves are hidden from it). parents caches, within one call,
// what each mirror stands for.
func (s splitRoot) outside(ctx context.Context, info snapshots.Info, parents map[string]string) snapshots.Info {
	if !strings.HasPrefix(info.Parent, imageMirrorPrefix) {
		return info
	}
	p, ok := parents[info.Parent]
	if !ok {
		if m, err := s.root.Stat(snapshotter.WithStoreCaller(ctx), info.Parent); err == nil {
			p = m.Labels[imageKeyLabel]
		}
		if parents != nil {
			parents[info.Parent] = p
		}
	}
	if p != "" {
		info.Parent = p
	}
	return info
}

func (s splitRoot) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	sn, err := s.holder(ctx, key)
	if err != nil {
		return snapshots.Info{}, err
	}
	info, err := sn.Stat(ctx, key)
	return s.outside(ctx, info, nil), err
}

func (s splitRoot) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	sn, err := s.holder(ctx, info.Name)
	if err != nil {
		return snapshots.Info{}, err
	}
	info, err = sn.Update(ctx, info, fieldpaths...)
	return s.outside(ctx, info, nil), err
}

func (s splitRoot) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	sn, err := s.holder(ctx, key)
	if err != nil {
		return snapshots.Usage{}, err
	}
	return sn.Usage(ctx, key)
}

func (s splitRoot) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	sn, err := s.holder(ctx, key)
	if err != nil {
		return nil, err
	}
	return sn.Mounts(ctx, key)
}

func (s splitRoot) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, key, parent, opts, false)
}

func (s splitRoot) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, key, parent, opts, true)
}

// create makes an unpacked layer (the unpacker's snapshot.ref label) in
// the image store when its parent is there or it has none; anything else
// in the root, on the mirror of a parent of the image store.
func (s splitRoot) create(ctx context.Context, key, parent string, opts []snapshots.Opt, view bool) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	layer := base.Labels[labelSnapshotRef] != "" && !view
	sn, p := s.root, parent
	if parent != "" {
		h, err := s.holder(ctx, parent)
		if err != nil {
			return nil, fmt.Errorf("parent %q: %w", parent, err)
		}
		if h == s.img {
			if layer {
				sn = s.img
			} else if p, err = s.mirror(ctx, parent); err != nil {
				return nil, fmt.Errorf("parent %q in the image store: %w", parent, err)
			}
		}
	} else if layer {
		sn = s.img
	}
	m, err := prepare(ctx, sn, key, p, opts, view)
	if errdefs.IsNotFound(err) && p != parent {
		// The mirror went between its making and this Prepare: the
		// last snapshot on it was removed meanwhile. Mirror again, once.
		if p, err = s.mirror(ctx, parent); err != nil {
			return nil, fmt.Errorf("parent %q in the image store: %w", parent, err)
		}
		m, err = prepare(ctx, sn, key, p, opts, view)
	}
	return m, err
}

func prepare(ctx context.Context, sn snapshots.Snapshotter, key, parent string, opts []snapshots.Opt, view bool) ([]mount.Mount, error) {
	if view {
		return sn.View(ctx, key, parent, opts...)
	}
	return sn.Prepare(ctx, key, parent, opts...)
}

// mirrorKey is the key of the root's mirror of image store snapshot key.
func mirrorKeyOf(key string) string {
	sum := sha256.Sum256([]byte(key))
	return imageMirrorPrefix + hex.EncodeToString(sum[:16])
}

// mirror makes sure committed snapshot key of the image store and its
// parents have mirrors in the root, and returns the key of key's.
func (s splitRoot) mirror(ctx context.Context, key string) (string, error) {
	sctx := snapshotter.WithStoreCaller(ctx)
	var chain []snapshots.Info
	for k := key; k != ""; {
		info, err := s.img.Stat(sctx, k)
		if err != nil {
			return "", err
		}
		if info.Kind != snapshots.KindCommitted {
			return "", fmt.Errorf("snapshot %q is %v, not committed: %w", k, info.Kind, errdefs.ErrFailedPrecondition)
		}
		chain = append(chain, info)
		k = info.Parent
	}
	parent := ""
	for i := len(chain) - 1; i >= 0; i-- {
		k := mirrorKeyOf(chain[i].Name)
		if _, err := s.root.Stat(sctx, k); err == nil {
			parent = k
			continue
		} else if !errdefs.IsNotFound(err) {
			return "", err
		}
		mounts, err := s.img.Mounts(sctx, chain[i].Name)
		if err != nil {
			return "", err
		}
		dir, _, err := overlayutils.Dirs(mounts, true)
		if err != nil {
			return "", err
		}
		labels := map[string]string{cslabels.Owned: "daemon", cslabels.ReadOnlyDir: dir, imageKeyLabel: chain[i].Name}
		if err := snapshotter.CommitMirror(sctx, s.root, k, "cs.img-prep/"+randomHex(), parent, labels); err != nil {
			return "", err
		}
		parent = k
	}
	return parent, nil
}

func (s splitRoot) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	sn, err := s.holder(ctx, key)
	if err != nil {
		return err
	}
	return sn.Commit(ctx, name, key, opts...)
}

// Remove removes key from its root. A layer of the image store the root's
// snapshots stack on is refused; a snapshot of the root takes the mirrors
// nothing else stacks on along.
func (s splitRoot) Remove(ctx context.Context, key string) error {
	sn, err := s.holder(ctx, key)
	if err != nil {
		return err
	}
	sctx := snapshotter.WithStoreCaller(ctx)
	if sn == s.img {
		mk := mirrorKeyOf(key)
		if _, err := s.root.Stat(sctx, mk); err == nil {
			if err := s.root.Remove(sctx, mk); err != nil {
				return fmt.Errorf("remove %q: snapshots of the root stack on it (%v): %w", key, err, errdefs.ErrFailedPrecondition)
			}
		}
		return s.img.Remove(ctx, key)
	}
	info, err := s.root.Stat(sctx, key)
	if err != nil {
		return err
	}
	if err := s.root.Remove(ctx, key); err != nil {
		return err
	}
	for p := info.Parent; strings.HasPrefix(p, imageMirrorPrefix); {
		pinfo, err := s.root.Stat(sctx, p)
		if err != nil || s.root.Remove(sctx, p) != nil {
			break // another snapshot stacks on it
		}
		p = pinfo.Parent
	}
	return nil
}

// Walk lists both roots.
func (s splitRoot) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	parents := map[string]string{}
	if err := s.root.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		return fn(ctx, s.outside(ctx, info, parents))
	}, filters...); err != nil {
		return err
	}
	return s.img.Walk(ctx, fn, filters...)
}

// Cleanup cleans both roots.
func (s splitRoot) Cleanup(ctx context.Context) error {
	for _, sn := range []snapshots.Snapshotter{s.root, s.img} {
		if c, ok := sn.(snapshots.Cleaner); ok {
			if err := c.Cleanup(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close leaves both roots to the daemon.
func (s splitRoot) Close() error { return nil }

// splitContent is two content stores as one: blobs are written to Store,
// and found in either. containerd sees the image store's over the root's;
// the root's diff service, the other way round.
type splitContent struct {
	content.Store
	other content.Store
}

// either calls call on Store, then on other while the answer is NotFound.
func either[T any](c splitContent, call func(content.Store) (T, error)) (T, error) {
	v, err := call(c.Store)
	if errdefs.IsNotFound(err) {
		return call(c.other)
	}
	return v, err
}

func (c splitContent) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	return either(c, func(s content.Store) (content.Info, error) { return s.Info(ctx, d) })
}

func (c splitContent) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	return either(c, func(s content.Store) (content.ReaderAt, error) { return s.ReaderAt(ctx, desc) })
}

func (c splitContent) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	return either(c, func(s content.Store) (content.Info, error) { return s.Update(ctx, info, fieldpaths...) })
}

func (c splitContent) Delete(ctx context.Context, d digest.Digest) error {
	_, err := either(c, func(s content.Store) (struct{}, error) { return struct{}{}, s.Delete(ctx, d) })
	return err
}

func (c splitContent) Walk(ctx context.Context, fn content.WalkFunc, filters ...string) error {
	if err := c.Store.Walk(ctx, fn, filters...); err != nil {
		return err
	}
	return c.other.Walk(ctx, fn, filters...)
}

func (c splitContent) Status(ctx context.Context, ref string) (content.Status, error) {
	return either(c, func(s content.Store) (content.Status, error) { return s.Status(ctx, ref) })
}

func (c splitContent) ListStatuses(ctx context.Context, filters ...string) ([]content.Status, error) {
	a, err := c.Store.ListStatuses(ctx, filters...)
	if err != nil {
		return nil, err
	}
	b, err := c.other.ListStatuses(ctx, filters...)
	return append(a, b...), err
}

func (c splitContent) Abort(ctx context.Context, ref string) error {
	_, err := either(c, func(s content.Store) (struct{}, error) { return struct{}{}, s.Abort(ctx, ref) })
	return err
}

// splitDiffer is the diff service with an image store: each request goes
// to the root whose snapshot it is about.
type splitDiffer struct {
	diffapi.UnimplementedDiffServer
	root, img *differ.Service
	imgSn     *snapshotter.Snapshotter
}

// of picks the service whose root holds the snapshot mounts are of: the
// directory a layer is applied into, or a view's top layer.
func (d splitDiffer) of(mounts []*types.Mount) *differ.Service {
	if _, ok := d.imgSn.SnapshotID(mountedDir(mounts)); ok {
		return d.img
	}
	return d.root
}

// mountedDir is the upper directory of mounts, or their top lower one, or
// a bind mount's source.
func mountedDir(mounts []*types.Mount) string {
	if len(mounts) != 1 {
		return ""
	}
	m := mounts[0]
	if m.Type == "bind" {
		return m.Source
	}
	lower := ""
	for _, o := range m.Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			return v
		}
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lower, _, _ = strings.Cut(v, ":")
		}
	}
	return lower
}

func (d splitDiffer) Apply(ctx context.Context, req *diffapi.ApplyRequest) (*diffapi.ApplyResponse, error) {
	return d.of(req.Mounts).Apply(ctx, req)
}

func (d splitDiffer) Diff(ctx context.Context, req *diffapi.DiffRequest) (*diffapi.DiffResponse, error) {
	if len(req.Right) == 0 {
		return nil, errgrpc.ToGRPC(fmt.Errorf("diff: no right side: %w", errdefs.ErrInvalidArgument))
	}
	return d.of(req.Right).Diff(ctx, req)
}

// logSplit says where the daemon puts what.
func logSplit(ctx context.Context, root, img string) {
	log.G(ctx).WithFields(log.Fields{"root": root, "image_store": img}).Info("unpacked layers and blobs go to the image store, containers' snapshots to the root")
}

// randomHex names a mirror's snapshot while it is prepared, unique to the
// call.
func randomHex() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
