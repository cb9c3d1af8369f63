// Package publish makes an image of a cs-snapshotter store (its writable
// store or one of its additional read-only image stores) an image of
// containerd, ready to run with the cs snapshotter, without copying its
// layers: the manifest and config go to containerd's content store, the
// layer blobs the daemon has are recorded in containerd's namespace by
// digest (containerd shares content across namespaces, so no bytes move),
// and the image is unpacked, which for layers a read-only image store
// holds takes their snapshots as they are.
package publish

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// DefaultSnapshotter is the name of cs-snapshotter's proxy plugin in the
// containerd configurations this project ships.
const DefaultSnapshotter = "cs"

// Options tune Image.
type Options struct {
	// Names are the containerd image names to give it; empty means the
	// store image's own names.
	Names []string
	// Snapshotter is cs-snapshotter's proxy plugin name in containerd;
	// empty means DefaultSnapshotter.
	Snapshotter string
}

// Result says what Image did.
type Result struct {
	ID       string             `json:"id"`
	Names    []string           `json:"names"`
	Manifest ocispec.Descriptor `json:"manifest"`
	// Layers is the number of layers; Shared of them had their snapshot
	// taken from a read-only image store, BlobsRecorded had their blob
	// recorded in containerd's namespace (a layer whose blob no store has
	// can still run, but containerd cannot export or push it).
	Layers        int `json:"layers"`
	Shared        int `json:"shared"`
	BlobsRecorded int `json:"blobs_recorded"`
}

// Image publishes image ref of s to containerd through c, in c's default
// namespace (or ctx's).
func Image(ctx context.Context, s storage.Store, c *client.Client, ref string, o Options) (_ *Result, err error) {
	if o.Snapshotter == "" {
		o.Snapshotter = DefaultSnapshotter
	}
	img, err := s.Image(ref)
	if err != nil {
		return nil, err
	}
	names := o.Names
	if len(names) == 0 {
		names = img.Names
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("image %s has no name to give it in containerd: name one: %w", img.ID, errdefs.ErrInvalidArgument)
	}
	manifest, mdesc, mbytes, err := readManifest(s, img)
	if err != nil {
		return nil, err
	}
	config, err := s.ImageBigData(img.ID, manifest.Config.Digest.String())
	if err != nil {
		return nil, fmt.Errorf("config %s of image %s: %w", manifest.Config.Digest, img.ID, err)
	}
	if digest.FromBytes(config) != manifest.Config.Digest {
		return nil, fmt.Errorf("config of image %s does not match its digest %s: %w", img.ID, manifest.Config.Digest, errdefs.ErrDataLoss)
	}

	// A lease keeps what is written from containerd's GC until the image
	// record refers to it.
	ctx, done, err := c.WithLease(ctx)
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	defer done(context.WithoutCancel(ctx))

	res := &Result{ID: img.ID, Names: names, Manifest: mdesc, Layers: len(manifest.Layers)}
	cs := c.ContentStore()
	mlabels := map[string]string{"containerd.io/gc.ref.content.config": manifest.Config.Digest.String()}
	for i, l := range manifest.Layers {
		mlabels["containerd.io/gc.ref.content.l."+strconv.Itoa(i)] = l.Digest.String()
		if err := recordBlob(ctx, cs, l); err != nil {
			log.G(ctx).WithError(err).WithField("blob", l.Digest).Debug("layer blob not recorded")
			continue
		}
		res.BlobsRecorded++
	}
	if err := content.WriteBlob(ctx, cs, "publish-"+manifest.Config.Digest.String(), bytes.NewReader(config), manifest.Config); err != nil {
		return nil, fmt.Errorf("write config %s: %w", manifest.Config.Digest, err)
	}
	if err := content.WriteBlob(ctx, cs, "publish-"+mdesc.Digest.String(), bytes.NewReader(mbytes), mdesc, content.WithLabels(mlabels)); err != nil {
		return nil, fmt.Errorf("write manifest %s: %w", mdesc.Digest, err)
	}

	var cfg ocispec.Image
	if err := json.Unmarshal(config, &cfg); err != nil {
		return nil, fmt.Errorf("config %s of image %s: %w: %w", manifest.Config.Digest, img.ID, err, errdefs.ErrInvalidArgument)
	}
	// The layers first: a snapshotter containerd does not have fails
	// before any image record is made.
	chain := identity.ChainIDs(cfg.RootFS.DiffIDs)
	sn := c.SnapshotService(o.Snapshotter)
	if err := takeLayers(ctx, sn, chain); err != nil {
		return nil, fmt.Errorf("snapshotter %q: %w", o.Snapshotter, err)
	}

	// If what follows fails, the image records made are removed and those
	// updated get their target back.
	is := c.ImageService()
	var undo []func(context.Context) error
	defer func() {
		if err == nil {
			return
		}
		uctx := context.WithoutCancel(ctx)
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](uctx); uerr != nil {
				log.G(ctx).WithError(uerr).Warn("undoing an image record of a failed publish failed")
			}
		}
	}()
	var record images.Image
	for _, name := range names {
		record = images.Image{Name: name, Target: mdesc}
		if _, err := is.Create(ctx, record); err != nil {
			if !errdefs.IsAlreadyExists(err) {
				return nil, fmt.Errorf("create image %q in containerd: %w", name, err)
			}
			prev, err := is.Get(ctx, name)
			if err != nil {
				return nil, fmt.Errorf("image %q in containerd: %w", name, err)
			}
			if _, err := is.Update(ctx, record, "target"); err != nil {
				return nil, fmt.Errorf("update image %q in containerd: %w", name, err)
			}
			undo = append(undo, func(ctx context.Context) error { _, err := is.Update(ctx, prev, "target"); return err })
			continue
		}
		undo = append(undo, func(ctx context.Context) error { return is.Delete(ctx, name) })
	}
	// What no read-only store had is unpacked as usual; Unpack also
	// labels the config with the top snapshot, for containerd's GC.
	if err := client.NewImage(c, record).Unpack(ctx, o.Snapshotter); err != nil {
		return nil, fmt.Errorf("unpack %s into snapshotter %q: %w", names[0], o.Snapshotter, err)
	}
	for _, chainID := range chain {
		if info, err := sn.Stat(ctx, chainID.String()); err == nil && info.Labels[cslabels.ReadOnlyStore] != "" {
			res.Shared++
		}
	}
	return res, nil
}

// takeLayers asks the snapshotter for each layer of chain as containerd's
// unpacker does, labelled with its chain ID, so that cs-snapshotter answers
// AlreadyExists for a layer a read-only image store holds and containerd
// records that layer's snapshot as it is. It stops at the first layer no
// store has: that one and those above it are for Unpack.
func takeLayers(ctx context.Context, sn snapshots.Snapshotter, chain []digest.Digest) error {
	parent := ""
	for _, chainID := range chain {
		if _, err := sn.Stat(ctx, chainID.String()); err == nil {
			parent = chainID.String()
			continue
		}
		var b [8]byte
		rand.Read(b[:])
		key := fmt.Sprintf(snapshots.UnpackKeyFormat, hex.EncodeToString(b[:]), chainID)
		_, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(map[string]string{"containerd.io/snapshot.ref": chainID.String()}))
		switch {
		case err == nil:
			if err := sn.Remove(ctx, key); err != nil {
				log.G(ctx).WithError(err).WithField("key", key).Warn("removing an unused snapshot failed")
			}
			return nil
		case !errdefs.IsAlreadyExists(err):
			return fmt.Errorf("layer %s: %w", chainID, err)
		}
		parent = chainID.String()
	}
	return nil
}

// manifestKey is the big data key of img's manifest: the one its digest
// names, or "manifest".
func manifestKey(s storage.Store, img *storage.Image) string {
	if img.Digest != "" {
		key := "manifest-" + img.Digest.String()
		if _, err := s.ImageBigDataSize(img.ID, key); err == nil {
			return key
		}
	}
	return "manifest"
}

// manifest is an OCI or Docker schema 2 image manifest.
type manifest struct {
	MediaType string               `json:"mediaType"`
	Config    ocispec.Descriptor   `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
	Manifests []ocispec.Descriptor `json:"manifests"`
}

func readManifest(s storage.Store, img *storage.Image) (*manifest, ocispec.Descriptor, []byte, error) {
	key := manifestKey(s, img)
	b, err := s.ImageBigData(img.ID, key)
	if err != nil {
		if errors.Is(err, storage.ErrImageUnknown) {
			return nil, ocispec.Descriptor{}, nil, err
		}
		return nil, ocispec.Descriptor{}, nil, fmt.Errorf("image %s has no manifest (big data %q), which containerd needs: %w", img.ID, key, errdefs.ErrFailedPrecondition)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, ocispec.Descriptor{}, nil, fmt.Errorf("manifest of image %s: %w: %w", img.ID, err, errdefs.ErrInvalidArgument)
	}
	if m.MediaType == "" {
		m.MediaType = ocispec.MediaTypeImageManifest
	}
	switch {
	case len(m.Manifests) > 0 || images.IsIndexType(m.MediaType):
		return nil, ocispec.Descriptor{}, nil, fmt.Errorf("manifest of image %s is an index: %w", img.ID, errdefs.ErrInvalidArgument)
	case !images.IsManifestType(m.MediaType):
		return nil, ocispec.Descriptor{}, nil, fmt.Errorf("manifest of image %s has media type %q, not an image manifest: %w", img.ID, m.MediaType, errdefs.ErrInvalidArgument)
	case m.Config.Digest == "":
		return nil, ocispec.Descriptor{}, nil, fmt.Errorf("manifest of image %s names no config: %w", img.ID, errdefs.ErrInvalidArgument)
	}
	return &m, ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}, b, nil
}

// recordBlob records blob desc in containerd's namespace if the daemon
// has it: containerd then takes it without reading it. Otherwise it
// would read it, and is refused.
func recordBlob(ctx context.Context, cs content.Store, desc ocispec.Descriptor) error {
	ref := "publish-" + desc.Digest.String()
	err := content.WriteBlob(ctx, cs, ref, &notHere{d: desc.Digest, size: desc.Size}, desc)
	if err != nil {
		if aerr := cs.Abort(ctx, ref); aerr != nil && !errdefs.IsNotFound(aerr) {
			log.G(ctx).WithError(aerr).WithField("ref", ref).Warn("aborting an ingest failed")
		}
	}
	return err
}

// notHere stands for the bytes of a blob publish does not read: when
// the daemon has it, containerd's writer starts at its end (seeking there)
// and reads nothing; otherwise reading it fails.
type notHere struct {
	d         digest.Digest
	size, pos int64
}

func (n *notHere) Read([]byte) (int, error) {
	if n.pos >= n.size {
		return 0, io.EOF
	}
	return 0, fmt.Errorf("blob %s is in no store: %w", n.d, io.ErrUnexpectedEOF)
}

func (n *notHere) Seek(offset int64, whence int) (int64, error) {
	if whence != io.SeekStart || offset < 0 {
		return n.pos, fmt.Errorf("seek blob %s: unsupported", n.d)
	}
	n.pos = offset
	return offset, nil
}
