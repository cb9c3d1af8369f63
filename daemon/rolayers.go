package daemon

// containerd and the layers of additional read-only image stores (issue 8)
//
// containerd's unpacker prepares each layer of an image with the label
// containerd.io/snapshot.ref set to the layer's chain ID. A snapshotter
// that has that layer already answers AlreadyExists, and containerd then
// records the committed snapshot whose snapshot.ref label and parent match
// instead of unpacking the layer (the remote snapshotter protocol). The
// daemon answers so for a layer one of its read-only image stores holds:
// it mirrors the layer into its own root, on the mirror of the layer's
// parent, as a committed snapshot keyed cs.ro-ctrd/<store>/<chain ID>
// whose files directory is a symbolic link to the layer's directory in
// the read-only root. containerd's containers stack on it in this root,
// and nothing is copied. These mirrors are containerd's (not cs.owned):
// its Walk sees them and its garbage collector removes them (the link
// only) once no image uses them.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

const (
	// labelSnapshotRef is the chain ID containerd's unpacker asks for.
	labelSnapshotRef = "containerd.io/snapshot.ref"
	// MirrorPrefix keys the mirrors of read-only image stores' layers made
	// for containerd.
	MirrorPrefix = "cs.ro-ctrd/"
)

// imageStoreLayers is the daemon's snapshotter as containerd sees it when
// read-only image stores are configured: Prepare and View of a layer one
// of them holds answer AlreadyExists, with its mirror made.
type imageStoreLayers struct {
	// Snapshotter serves the rest: the root's, or the root and the
	// separate image store's (splitRoot).
	snapshots.Snapshotter
	// root is where the mirrors are made.
	root   *snapshotter.Snapshotter
	stores []*ImageStore
}

func (l imageStoreLayers) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	if err := l.fromImageStores(ctx, parent, opts); err != nil {
		return nil, err
	}
	return l.Snapshotter.Prepare(ctx, key, parent, opts...)
}

func (l imageStoreLayers) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	if err := l.fromImageStores(ctx, parent, opts); err != nil {
		return nil, err
	}
	return l.Snapshotter.View(ctx, key, parent, opts...)
}

// Cleanup cleans what Snapshotter serves.
func (l imageStoreLayers) Cleanup(ctx context.Context) error {
	if c, ok := l.Snapshotter.(snapshots.Cleaner); ok {
		return c.Cleanup(ctx)
	}
	return nil
}

// fromImageStores returns an AlreadyExists error when the snapshot
// described by opts is the layer, with chain ID its snapshot.ref label,
// that a read-only image store holds on parent, once its mirror exists;
// nil when no store has it, and the snapshot is made as usual. A layer
// is taken from a store only on the mirror of its parent in that same
// store (or on no parent): a chain unpacked here continues here.
func (l imageStoreLayers) fromImageStores(ctx context.Context, parent string, opts []snapshots.Opt) error {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil // Prepare itself reports it
		}
	}
	chainID, err := digest.Parse(base.Labels[labelSnapshotRef])
	if err != nil {
		return nil
	}
	var parentStore string
	var parentChain digest.Digest
	if parent != "" {
		if !strings.HasPrefix(parent, MirrorPrefix) {
			return nil
		}
		info, err := l.root.Stat(ctx, parent)
		if err != nil {
			return nil
		}
		parentStore, parentChain = info.Labels[cslabels.ReadOnlyStore], digest.Digest(info.Labels[labelSnapshotRef])
	}
	for _, is := range l.stores {
		if parentStore != "" && parentStore != is.Path {
			continue
		}
		layer, err := is.layerByChainID(ctx, chainID)
		if err != nil {
			log.G(ctx).WithError(err).WithField("store", is.Path).Warn("looking up a layer in a read-only image store failed")
			continue
		}
		if layer == nil || layer.parentChain != parentChain {
			continue
		}
		if err := l.mirror(ctx, is, layer, parent); err != nil {
			return fmt.Errorf("layer %s of read-only image store %s: %w", chainID, is.Path, err)
		}
		return fmt.Errorf("layer %s is in read-only image store %s: %w", chainID, is.Path, errdefs.ErrAlreadyExists)
	}
	return nil
}

// mirrorKey is the key of the mirror of the layer with chainID of is.
func (is *ImageStore) mirrorKey(chainID digest.Digest) string {
	sum := sha256.Sum256([]byte(is.Path))
	return MirrorPrefix + hex.EncodeToString(sum[:6]) + "/" + chainID.String()
}

// mirror makes the mirror of layer of is on parent, unless it exists.
func (l imageStoreLayers) mirror(ctx context.Context, is *ImageStore, layer *roLayer, parent string) error {
	key := is.mirrorKey(layer.chainID)
	sctx := snapshotter.WithStoreCaller(ctx)
	if info, err := l.root.Stat(sctx, key); err == nil {
		if info.Parent != parent {
			return fmt.Errorf("its mirror %s has parent %q, not %q: %w", key, info.Parent, parent, errdefs.ErrFailedPrecondition)
		}
		return nil
	} else if !errdefs.IsNotFound(err) {
		return err
	}
	dir, err := is.layerDir(ctx, layer.key)
	if err != nil {
		return err
	}
	labels := map[string]string{
		labelSnapshotRef:            layer.chainID.String(),
		cslabels.ReadOnlyStore:      is.Path,
		cslabels.ReadOnlyDir:        dir,
		cslabels.UncompressedDigest: layer.diffID.String(),
	}
	if err := snapshotter.CommitMirror(sctx, l.root, key, "cs.ro-ctrd-prep/"+randomHex(), parent, labels); err != nil {
		return err
	}
	log.G(ctx).WithFields(log.Fields{"key": key, "store": is.Path, "layer": layer.key}).Debug("mirrored a read-only image store's layer")
	return nil
}

// roLayer is a committed layer of a read-only image store.
type roLayer struct {
	key         string
	diffID      digest.Digest
	chainID     digest.Digest
	parentChain digest.Digest
}

// layerByChainID finds the committed layer of is whose chain ID is
// chainID, nil if none: the chain IDs come from the diff IDs each layer
// records (cs.uncompressed-digest), which both the store and the diff
// service's unpacking set. Layers still being made, and the store's own
// mirrors of yet other stores, are not taken. It reads the store afresh
// each time, so a layer another host added is there on the next call.
func (is *ImageStore) layerByChainID(ctx context.Context, chainID digest.Digest) (*roLayer, error) {
	type rec struct {
		parent string
		diffID digest.Digest
	}
	all := map[string]rec{}
	err := is.Snapshotter.Walk(snapshotter.WithStoreCaller(ctx), func(_ context.Context, info snapshots.Info) error {
		d, err := digest.Parse(info.Labels[cslabels.UncompressedDigest])
		if err != nil || info.Kind != snapshots.KindCommitted ||
			info.Labels[cslabels.Incomplete] != "" || info.Labels[cslabels.ReadOnlyDir] != "" {
			return nil
		}
		all[info.Name] = rec{parent: info.Parent, diffID: d}
		return nil
	})
	if err != nil {
		return nil, err
	}
	chains := map[string]digest.Digest{}
	var chainOf func(key string, depth int) digest.Digest
	chainOf = func(key string, depth int) digest.Digest {
		if c, ok := chains[key]; ok {
			return c
		}
		r, ok := all[key]
		if !ok || depth > overlayutils.MaxLowerDirs {
			return ""
		}
		c := r.diffID
		if r.parent != "" {
			pc := chainOf(r.parent, depth+1)
			if pc == "" {
				return ""
			}
			c = identity.ChainID([]digest.Digest{pc, r.diffID})
		}
		chains[key] = c
		return c
	}
	for key, r := range all {
		if chainOf(key, 0) != chainID {
			continue
		}
		l := &roLayer{key: key, diffID: r.diffID, chainID: chainID}
		if r.parent != "" {
			l.parentChain = chainOf(r.parent, 0)
		}
		return l, nil
	}
	return nil, nil
}

// layerDir is the directory holding the files of committed layer key of
// is: the first lower directory of its read-only mounts (which the
// snapshotter answers the store for a committed key).
func (is *ImageStore) layerDir(ctx context.Context, key string) (string, error) {
	mounts, err := is.Snapshotter.Mounts(snapshotter.WithStoreCaller(ctx), key)
	if err != nil {
		return "", err
	}
	dir, _, err := overlayutils.Dirs(mounts, true)
	return dir, err
}
