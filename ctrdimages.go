package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// Images containerd imported or pulled
//
// containerd keeps its image records in its own metadata, which the daemon
// never sees; what reaches the daemon is the blobs (manifests, configs,
// layers) and the snapshots the unpacker committed, keyed
// "<namespace>/<n>/<chain ID>". So such an image is found from the blobs
// themselves: a manifest blob whose config's diff IDs give a top chain ID
// that names a committed snapshot. It is listed read-only:
//
//	ID        the config digest's hex (as containers/storage computes it)
//	TopLayer  the layer of the committed snapshot whose key ends "/<top chain ID>"
//	Digest    the manifest's digest; Digests: it, then the digests of the
//	          indexes that choose it for this platform
//	big data  "manifest" and "manifest-<digest>" (the manifest; each index
//	          adds "manifest-<index digest>"), and the config under its
//	          digest string "sha256:<hex>", the key containers/image's
//	          storage destination gives the config
//	Names     the top snapshot's CRI label containerd.io/snapshot/cri.image-ref,
//	          then the io.containerd.image.name annotations of the indexes
//	          that choose it (ctr images import keeps the archive's index)
//	Created   the config's created
//
// Writes to them answer ErrStoreIsReadOnly, as containers/storage answers
// writes to an image of a read-only image store. A store-made image with
// the same ID (or name) wins.

const (
	// maxSniff: blobs larger than this are never read as manifests,
	// indexes or configs.
	maxSniff = 4 << 20
	// peekSize is how much of an unlabelled blob is read to decide
	// whether it can be JSON.
	peekSize = 64
	// criImageRef is the label CRI gives the snapshots it unpacks.
	criImageRef = "containerd.io/snapshot/cri.image-ref"
)

// ctrdBlob is what a blob turned out to be. Blobs are immutable, so the
// answer is cached by digest for the life of the process.
type ctrdBlob struct {
	manifest bool
	index    bool
	raw      []byte               // a manifest's bytes
	config   ocispec.Descriptor   // a manifest's config
	children []ocispec.Descriptor // an index's manifests for this platform
}

// ctrdConfig is the part of an image config the store uses.
type ctrdConfig struct {
	created time.Time
	chain   []digest.Digest
	size    int64
}

var (
	ctrdBlobCache   sync.Map // digest.Digest -> *ctrdBlob
	ctrdConfigCache sync.Map // digest.Digest -> *ctrdConfig
	notAnImageBlob  = &ctrdBlob{}
)

// storeOwnedBlob reports whether the store made the blob (its labels
// begin "cs."): record, big data and tar-split blobs are never manifests
// of containerd's.
func storeOwnedBlob(l map[string]string) bool {
	for k := range l {
		if strings.HasPrefix(k, "cs.") {
			return true
		}
	}
	return false
}

// gcLabelled reports whether containerd's labels say the blob is a
// manifest or an index (it references a config or manifests).
func gcLabelled(l map[string]string) bool {
	if _, ok := l["containerd.io/gc.ref.content.config"]; ok {
		return true
	}
	_, ok := l["containerd.io/gc.ref.content.m.0"]
	return ok
}

// classify tells what blob info is, reading it only when neither the
// cache nor its size and labels decide.
func (s *store) classify(info content.Info) (*ctrdBlob, error) {
	if v, ok := ctrdBlobCache.Load(info.Digest); ok {
		return v.(*ctrdBlob), nil
	}
	if info.Size <= 0 || info.Size > maxSniff || storeOwnedBlob(info.Labels) {
		return notAnImageBlob, nil
	}
	desc := ocispec.Descriptor{Digest: info.Digest, Size: info.Size}
	ra, err := s.cs.ReaderAt(s.ctx, desc)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	if !gcLabelled(info.Labels) {
		n := min(info.Size, peekSize)
		peek := make([]byte, n)
		if _, err := ra.ReadAt(peek, 0); err != nil {
			return nil, err
		}
		if t := bytes.TrimLeft(peek, " \t\r\n"); len(t) == 0 || t[0] != '{' {
			ctrdBlobCache.Store(info.Digest, notAnImageBlob)
			return notAnImageBlob, nil
		}
	}
	data := make([]byte, info.Size)
	if _, err := ra.ReadAt(data, 0); err != nil {
		return nil, err
	}
	b := parseImageBlob(data)
	ctrdBlobCache.Store(info.Digest, b)
	return b, nil
}

// parseImageBlob recognizes an image manifest (JSON with "config" and
// "layers", the config an image config) or an index (JSON with
// "manifests").
func parseImageBlob(data []byte) *ctrdBlob {
	var doc struct {
		Config    *ocispec.Descriptor  `json:"config"`
		Layers    json.RawMessage      `json:"layers"`
		Manifests []ocispec.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return notAnImageBlob
	}
	if doc.Config != nil && doc.Layers != nil {
		switch doc.Config.MediaType {
		case ocispec.MediaTypeImageConfig, "application/vnd.docker.container.image.v1+json":
		default:
			return notAnImageBlob // an artifact
		}
		if doc.Config.Digest.Validate() != nil {
			return notAnImageBlob
		}
		return &ctrdBlob{manifest: true, raw: data, config: *doc.Config}
	}
	if doc.Config == nil && doc.Manifests != nil {
		b := &ctrdBlob{index: true}
		match := platforms.Default()
		for _, m := range doc.Manifests {
			if m.Digest.Validate() != nil {
				continue
			}
			if m.Platform == nil || match.Match(*m.Platform) {
				b.children = append(b.children, m)
			}
		}
		return b
	}
	return notAnImageBlob
}

// readConfig reads and caches the config a manifest names.
func (s *store) readConfig(desc ocispec.Descriptor) (*ctrdConfig, error) {
	if v, ok := ctrdConfigCache.Load(desc.Digest); ok {
		return v.(*ctrdConfig), nil
	}
	if desc.Size <= 0 || desc.Size > maxSniff {
		return nil, fmt.Errorf("config %s: size %d: %w", desc.Digest, desc.Size, errdefs.ErrNotFound)
	}
	data, err := content.ReadBlob(s.ctx, s.cs, ocispec.Descriptor{Digest: desc.Digest, Size: desc.Size})
	if err != nil {
		return nil, err
	}
	var img ocispec.Image
	c := &ctrdConfig{size: int64(len(data))}
	if err := json.Unmarshal(data, &img); err == nil {
		if img.Created != nil {
			c.created = img.Created.UTC()
		}
		c.chain = identity.ChainIDs(img.RootFS.DiffIDs)
	}
	ctrdConfigCache.Store(desc.Digest, c)
	return c, nil
}

// prefetch calls fetch on every item, a few at a time, for the caches it
// fills; whoever reads the cache afterwards sees the errors.
func prefetch[T any](items []T, fetch func(T)) {
	var wg sync.WaitGroup
	slots := make(chan struct{}, 8)
	for _, it := range items {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			fetch(it)
		}()
	}
	wg.Wait()
}

// ctrdImages finds the images containerd imported among the blobs infos
// (one Walk of the content store).
func (s *store) ctrdImages(infos []content.Info) ([]*imageRecord, error) {
	type found struct {
		dgst digest.Digest
		blob *ctrdBlob
	}
	var manifests, indexes []found
	sizes := map[digest.Digest]int64{}
	created := map[digest.Digest]time.Time{}
	listed := make(map[digest.Digest]bool, len(infos))
	for _, info := range infos {
		listed[info.Digest] = true
	}
	// What earlier listings found out; through a socket each read is a
	// round trip: let the rest overlap.
	s.loadCtrdCache()
	prefetch(infos, func(info content.Info) { s.classify(info) })
	for _, info := range infos {
		b, err := s.classify(info)
		if errdefs.IsNotFound(err) {
			continue // deleted since the walk
		}
		if err != nil {
			return nil, fmt.Errorf("read blob %s: %w", info.Digest, err)
		}
		switch {
		case b.manifest:
			manifests = append(manifests, found{info.Digest, b})
		case b.index:
			sizes[info.Digest] = info.Size
			created[info.Digest] = info.CreatedAt
			indexes = append(indexes, found{info.Digest, b})
		}
	}
	if len(manifests) == 0 {
		s.saveCtrdCache(infos)
		return nil, nil
	}
	// The committed snapshots containerd made, by the last element of
	// their keys (the chain ID); of several namespaces the least key.
	snaps := map[string]snapshots.Info{}
	err := s.sn.Walk(s.ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind != snapshots.KindCommitted || strings.HasPrefix(info.Name, internalPrefix) || info.Labels[cslabels.Owned] != "" {
			return nil
		}
		// Through the daemon keys are "<namespace>/<n>/<chain ID>";
		// through containerd, just the chain ID.
		last := info.Name[strings.LastIndexByte(info.Name, '/')+1:]
		if o, ok := snaps[last]; !ok || info.Name < o.Name {
			snaps[last] = info
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list layers: %w", err)
	}
	sort.Slice(manifests, func(i, j int) bool { return manifests[i].dgst < manifests[j].dgst })
	prefetch(manifests, func(m found) {
		if listed[m.blob.config.Digest] {
			s.readConfig(m.blob.config)
		}
	})
	byID := map[string]*imageRecord{}
	byManifest := map[digest.Digest]*imageRecord{}
	var list []*imageRecord
	for _, m := range manifests {
		// A config the walk did not see is not fetched yet, or already
		// removed (containerd's garbage collector deletes an image's blobs
		// one by one): no image, whether or not its config is cached.
		// So every blob of a listed image was there when it was listed.
		if !listed[m.blob.config.Digest] {
			continue
		}
		cfg, err := s.readConfig(m.blob.config)
		if errdefs.IsNotFound(err) {
			continue // deleted since the walk
		}
		if err != nil {
			return nil, fmt.Errorf("config %s of manifest %s: %w", m.blob.config.Digest, m.dgst, err)
		}
		if len(cfg.chain) == 0 {
			continue
		}
		top, ok := snaps[cfg.chain[len(cfg.chain)-1].String()]
		if !ok {
			continue // not unpacked into this snapshotter
		}
		id := m.blob.config.Digest.Encoded()
		r := byID[id]
		if r == nil {
			sum := sha256.Sum256([]byte(top.Name))
			r = &imageRecord{labels: map[string]string{}}
			r.ID, r.TopLayer, r.Created, r.ReadOnly = id, hex.EncodeToString(sum[:]), cfg.created, true
			r.Digest = m.dgst
			r.BigDataSizes = map[string]int64{}
			r.BigDataDigests = map[string]digest.Digest{}
			if n := top.Labels[criImageRef]; n != "" {
				r.Names = []string{n}
			}
			addCtrdBigData(r, ImageDigestBigDataKey, m.dgst, int64(len(m.blob.raw)))
			addCtrdBigData(r, m.blob.config.Digest.String(), m.blob.config.Digest, cfg.size)
			byID[id] = r
			list = append(list, r)
		}
		r.Digests = append(r.Digests, m.dgst)
		addCtrdBigData(r, ImageDigestManifestBigDataNamePrefix+"-"+m.dgst.String(), m.dgst, int64(len(m.blob.raw)))
		byManifest[m.dgst] = r
	}
	sort.Slice(indexes, func(i, j int) bool { return indexes[i].dgst < indexes[j].dgst })
	for _, x := range indexes {
		for _, c := range x.blob.children {
			if r := byManifest[c.Digest]; r != nil && r.labels[cslabels.ImageBigDataPrefix+ImageDigestManifestBigDataNamePrefix+"-"+x.dgst.String()] == "" {
				r.Digests = append(r.Digests, x.dgst)
				addCtrdBigData(r, ImageDigestManifestBigDataNamePrefix+"-"+x.dgst.String(), x.dgst, sizes[x.dgst])
			}
		}
	}
	// More names: the io.containerd.image.name an index gives a manifest
	// (ctr images import keeps the archive's index, annotated so). A name
	// several indexes give (an image imported again) is the newest one's.
	type claim struct {
		r  *imageRecord
		at time.Time
	}
	claims := map[string]claim{}
	for _, x := range indexes {
		for _, c := range x.blob.children {
			r, n := byManifest[c.Digest], c.Annotations[images.AnnotationImageName]
			if r == nil || n == "" {
				continue
			}
			if cl, ok := claims[n]; !ok || created[x.dgst].After(cl.at) {
				claims[n] = claim{r, created[x.dgst]}
			}
		}
	}
	for _, n := range slices.Sorted(maps.Keys(claims)) {
		if r := claims[n].r; !slices.Contains(r.Names, n) {
			r.Names = append(r.Names, n)
		}
	}
	for _, r := range list {
		sort.Strings(r.BigDataNames)
	}
	s.saveCtrdCache(infos)
	return list, nil
}

// addCtrdBigData lists blob dgst as big data item key of r; the labels
// (never written anywhere) let ImageBigData read it as it reads a store
// image's items.
func addCtrdBigData(r *imageRecord, key string, dgst digest.Digest, size int64) {
	r.labels[cslabels.ImageBigDataPrefix+key] = dgst.String()
	r.BigDataNames = append(r.BigDataNames, key)
	r.BigDataSizes[key] = size
	r.BigDataDigests[key] = dgst
}

// readOnlyImage refuses to change an image containerd imported.
func readOnlyImage(r *imageRecord) error {
	if r.ReadOnly {
		return fmt.Errorf("image %s was imported by containerd and is read-only here: %w", r.ID, ErrStoreIsReadOnly)
	}
	return nil
}
