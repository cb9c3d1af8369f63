package storage

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
)

// Layer is containers/storage's layer record.
type Layer struct {
	// ID is 64 hex digits: the snapshot key of a layer the store made, the
	// sha256 of the key of a snapshot containerd made.
	ID string `json:"id"`
	// Names are the layer's names, unique among layers. A snapshot
	// containerd made has its key as its first name.
	Names    []string `json:"names,omitempty"`
	Parent   string   `json:"parent,omitempty"`
	Metadata string   `json:"metadata,omitempty"`
	// MountLabel is the SELinux label for mounts of the layer.
	MountLabel string `json:"mountlabel,omitempty"`
	// MountPoint and MountCount describe the store's mount of the layer.
	MountPoint string    `json:"-"`
	MountCount int       `json:"-"`
	Created    time.Time `json:"created,omitempty"`

	CompressedDigest   digest.Digest `json:"compressed-diff-digest,omitempty"`
	CompressedSize     int64         `json:"compressed-size,omitempty"`
	UncompressedDigest digest.Digest `json:"diff-digest,omitempty"`
	UncompressedSize   int64         `json:"diff-size,omitempty"`
	CompressionType    Compression   `json:"compression,omitempty"`

	UIDs []uint32 `json:"uidset,omitempty"`
	GIDs []uint32 `json:"gidset,omitempty"`

	Flags        map[string]interface{} `json:"flags,omitempty"`
	ReadOnly     bool                   `json:"-"`
	BigDataNames []string               `json:"big-data-names,omitempty"`
}

// LayerOptions are the options of CreateLayer and PutLayer.
type LayerOptions struct {
	// OriginalDigest is the digest of the diff as the caller has it
	// (usually compressed); recorded as CompressedDigest when no diff is
	// applied.
	OriginalDigest digest.Digest
	// UncompressedDigest is the digest of the uncompressed diff, recorded
	// when no diff is applied.
	UncompressedDigest digest.Digest
	BigData            []LayerBigDataOption
	Flags              map[string]interface{}
}

// LayerBigDataOption is a big data item to store with a new layer.
type LayerBigDataOption struct {
	Key  string
	Data io.Reader
}

// layerRecord is a Layer with the snapshot it lives in.
type layerRecord struct {
	Layer
	key       string
	kind      snapshots.Kind
	writeable bool
	owned     bool
	labels    map[string]string
}

// layerIndex is every layer of the store, as one Walk saw them.
type layerIndex struct {
	list   []*layerRecord
	byID   map[string]*layerRecord
	byName map[string]*layerRecord
	byKey  map[string]*layerRecord

	// The containers, which live on layers.
	containers []*containerRecord
	ctrByID    map[string]*containerRecord
	ctrByName  map[string]*containerRecord
}

// Keys of the store's internal snapshots begin with this; they are not
// layers.
const (
	internalPrefix   = "cs."
	incompletePrefix = internalPrefix + "incomplete/"
	// rwPrefix + ID is the active snapshot of a writeable layer; it is a
	// layer. When it becomes a parent it is committed under its ID.
	rwPrefix    = internalPrefix + "rw/"
	viewPrefix  = internalPrefix + "view/"
	mountPrefix = internalPrefix + "mount/"
	// roPrefix keys the mirrors of read-only image stores' layers:
	// cs.ro/<store>/<layer ID> (rostores.go).
	roPrefix = internalPrefix + "ro/"
)

func (s *store) load() (*layerIndex, error) {
	idx := &layerIndex{
		byID: map[string]*layerRecord{}, byName: map[string]*layerRecord{}, byKey: map[string]*layerRecord{},
		ctrByID: map[string]*containerRecord{}, ctrByName: map[string]*containerRecord{},
	}
	parents := map[*layerRecord]string{}
	err := s.sn.Walk(s.ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, internalPrefix) && !strings.HasPrefix(info.Name, rwPrefix) {
			return nil
		}
		r := recordFromInfo(info)
		idx.list = append(idx.list, r)
		idx.byKey[r.key] = r
		idx.byID[r.ID] = r
		parents[r] = info.Parent
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list layers: %w", err)
	}
	for r, parentKey := range parents {
		if p, ok := idx.byKey[parentKey]; ok {
			r.Parent = p.ID
		} else if strings.HasPrefix(parentKey, roPrefix) {
			r.Parent = path.Base(parentKey) // a read-only store's layer
		}
		for _, n := range r.Names {
			idx.byName[n] = r
		}
	}
	sort.Slice(idx.list, func(i, j int) bool {
		if !idx.list[i].Created.Equal(idx.list[j].Created) {
			return idx.list[i].Created.Before(idx.list[j].Created)
		}
		return idx.list[i].ID < idx.list[j].ID
	})
	for _, r := range idx.list {
		if c := containerFromLayer(r); c != nil {
			idx.containers = append(idx.containers, c)
			idx.ctrByID[c.ID] = c
			for _, n := range c.Names {
				idx.ctrByName[n] = c
			}
		}
	}
	mounts, err := s.readMounts()
	if err != nil {
		return nil, err
	}
	for id, m := range mounts {
		if r, ok := idx.byID[id]; ok {
			r.MountPoint, r.MountCount = m.Path, m.Count
		}
	}
	return idx, nil
}

// lookup finds a layer by ID, name or unique ID prefix, as
// containers/storage does.
func (idx *layerIndex) lookup(name string) (*layerRecord, bool) {
	if r, ok := idx.byID[name]; ok {
		return r, true
	}
	if r, ok := idx.byName[name]; ok {
		return r, true
	}
	if name == "" {
		return nil, false
	}
	var found *layerRecord
	for id, r := range idx.byID {
		if strings.HasPrefix(id, name) {
			if found != nil {
				return nil, false // ambiguous
			}
			found = r
		}
	}
	return found, found != nil
}

// layer loads the store and returns the layer id names.
func (s *store) layer(id string) (*layerRecord, error) {
	idx, err := s.load()
	if err != nil {
		return nil, err
	}
	return idx.get(id)
}

func (idx *layerIndex) get(id string) (*layerRecord, error) {
	r, ok := idx.lookup(id)
	if !ok {
		return nil, fmt.Errorf("layer %q: %w", id, ErrLayerUnknown)
	}
	return r, nil
}

func recordFromInfo(info snapshots.Info) *layerRecord {
	l := info.Labels
	r := &layerRecord{key: info.Name, labels: l, kind: info.Kind, writeable: info.Kind != snapshots.KindCommitted}
	r.owned = l[cslabels.Owned] != ""
	if r.owned {
		r.ID = strings.TrimPrefix(info.Name, rwPrefix)
		if strings.HasPrefix(info.Name, roPrefix) {
			r.ID = path.Base(info.Name) // the read-only store's layer
		}
	} else {
		sum := sha256.Sum256([]byte(info.Name))
		r.ID = hex.EncodeToString(sum[:])
		r.Names = []string{info.Name}
	}
	r.Names = append(r.Names, orderedNames(l, cslabels.Layer)...)
	r.Created = info.Created
	r.Metadata = l[cslabels.Metadata]
	r.MountLabel = l[cslabels.MountLabel]
	r.CompressedDigest = digest.Digest(l[cslabels.CompressedDigest])
	r.CompressedSize, _ = strconv.ParseInt(l[cslabels.CompressedSize], 10, 64)
	r.UncompressedDigest = digest.Digest(l[cslabels.UncompressedDigest])
	r.UncompressedSize, _ = strconv.ParseInt(l[cslabels.UncompressedSize], 10, 64)
	r.CompressionType = parseCompression(l[cslabels.Compression])
	r.UIDs = parseIDSet(l[cslabels.UIDs])
	r.GIDs = parseIDSet(l[cslabels.GIDs])
	if f := l[cslabels.Flags]; f != "" {
		json.Unmarshal([]byte(f), &r.Flags)
	}
	for k := range l {
		if key, ok := strings.CutPrefix(k, cslabels.BigDataPrefix); ok {
			r.BigDataNames = append(r.BigDataNames, key)
		}
	}
	sort.Strings(r.BigDataNames)
	return r
}

// orderedNames returns the names of kind in labels in the order they were
// given.
func orderedNames(labels map[string]string, kind cslabels.Kind) []string {
	names := cslabels.Names(labels)[kind]
	pos := func(n string) int {
		p, _ := strconv.Atoi(labels[cslabels.NameKey(kind, n)])
		return p
	}
	sort.SliceStable(names, func(i, j int) bool {
		if pi, pj := pos(names[i]), pos(names[j]); pi != pj {
			return pi < pj
		}
		return names[i] < names[j]
	})
	return names
}

func nameLabels(kind cslabels.Kind, names []string, into map[string]string) {
	for i, n := range names {
		into[cslabels.NameKey(kind, n)] = strconv.Itoa(i)
	}
}

func formatIDSet(ids []uint32) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(s, ",")
}

func parseIDSet(v string) []uint32 {
	if v == "" {
		return nil
	}
	var ids []uint32
	for _, f := range strings.Split(v, ",") {
		if n, err := strconv.ParseUint(f, 10, 32); err == nil {
			ids = append(ids, uint32(n))
		}
	}
	return ids
}

func newID() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validNames refuses empty names.
func validNames(names []string) error {
	for _, n := range names {
		if n == "" {
			return fmt.Errorf("a layer name may not be empty: %w", ErrInvalidName)
		}
	}
	return nil
}

// dedupe keeps the first of each name, dropping empty ones.
func dedupe(names []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		if n != "" && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// mapErr turns the daemon's errdefs answers into the store's errors.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errdefs.IsAlreadyExists(err) && strings.Contains(err.Error(), string(cslabels.ContainerIDKind)+" name"):
		return fmt.Errorf("%w: %w", ErrDuplicateID, err)
	case errdefs.IsAlreadyExists(err) && strings.Contains(err.Error(), "name"):
		return fmt.Errorf("%w: %w", ErrDuplicateName, err)
	case errdefs.IsAlreadyExists(err):
		return fmt.Errorf("%w: %w", ErrDuplicateID, err)
	case errdefs.IsNotFound(err):
		return fmt.Errorf("%w: %w", ErrLayerUnknown, err)
	}
	return err
}

// Layers lists every layer.
func (s *store) Layers() ([]Layer, error) {
	idx, err := s.load()
	if err != nil {
		return nil, err
	}
	out := make([]Layer, 0, len(idx.list))
	for _, r := range idx.list {
		out = append(out, r.Layer)
	}
	return out, nil
}

// Layer returns the layer id names (ID, name or unique ID prefix).
func (s *store) Layer(id string) (*Layer, error) {
	r, err := s.layer(id)
	if err != nil {
		return nil, err
	}
	l := r.Layer
	return &l, nil
}

// LayerSize returns the uncompressed size of the layer's diff, -1 if unknown.
func (s *store) LayerSize(id string) (int64, error) {
	l, err := s.Layer(id)
	if err != nil {
		return -1, err
	}
	if l.UncompressedDigest != "" {
		return l.UncompressedSize, nil
	}
	return -1, nil
}

func (s *store) layersBy(match func(*Layer) bool) ([]Layer, error) {
	all, err := s.Layers()
	if err != nil {
		return nil, err
	}
	var out []Layer
	for _, l := range all {
		if match(&l) {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return nil, ErrLayerUnknown
	}
	return out, nil
}

// LayersByCompressedDigest returns the layers whose compressed diff has
// digest d.
func (s *store) LayersByCompressedDigest(d digest.Digest) ([]Layer, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("looking for compressed layers matching digest %q: %w", d, err)
	}
	return s.layersBy(func(l *Layer) bool { return l.CompressedDigest == d })
}

// LayersByUncompressedDigest returns the layers whose diff has digest d.
func (s *store) LayersByUncompressedDigest(d digest.Digest) ([]Layer, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("looking for layers matching digest %q: %w", d, err)
	}
	return s.layersBy(func(l *Layer) bool { return l.UncompressedDigest == d })
}

// found is what an ID or name stands for, looked for as containers/storage
// does: a layer first, then an image, then a container.
type found struct {
	idx       *layerIndex
	layer     *layerRecord
	image     *imageRecord
	images    *imageIndex
	container *containerRecord
}

func (s *store) find(id string) (found, error) {
	idx, err := s.load()
	if err != nil {
		return found{}, err
	}
	f := found{idx: idx}
	if r, ok := idx.lookup(id); ok {
		f.layer = r
		return f, nil
	}
	if f.image, f.images, err = s.lookupImage(id); err != nil || f.image != nil {
		return f, err
	}
	f.container, _ = idx.lookupContainer(id)
	return f, nil
}

func (f found) none() bool { return f.layer == nil && f.image == nil && f.container == nil }

// Exists reports whether id names a layer, an image or a container.
func (s *store) Exists(id string) bool {
	f, err := s.findQuick(id)
	return err == nil && !f.none()
}

// Lookup returns the ID of the layer, image or container name names.
func (s *store) Lookup(name string) (string, error) {
	f, err := s.findQuick(name)
	switch {
	case err != nil:
		return "", err
	case f.layer != nil:
		return f.layer.ID, nil
	case f.image != nil:
		return f.image.ID, nil
	case f.container != nil:
		return f.container.ID, nil
	}
	return "", ErrLayerUnknown
}

// CreateLayer makes an empty layer.
func (s *store) CreateLayer(id, parent string, names []string, mountLabel string, writeable bool, options *LayerOptions) (*Layer, error) {
	l, _, err := s.PutLayer(id, parent, names, mountLabel, writeable, options, nil)
	return l, err
}

// PutLayer makes a layer on top of parent and, if diff is not nil, applies
// it, returning the number of uncompressed bytes applied. A read-only layer
// is filled in an active snapshot marked incomplete and committed only when
// complete; on failure nothing of it remains.
func (s *store) PutLayer(id, parent string, names []string, mountLabel string, writeable bool, options *LayerOptions, diff io.Reader) (*Layer, int64, error) {
	if options == nil {
		options = &LayerOptions{}
	}
	if id == "" {
		id = newID()
	} else if err := validID(id); err != nil {
		return nil, -1, err
	}
	if taken, err := s.layerKeyTaken(id); err != nil || taken {
		if err == nil {
			err = fmt.Errorf("layer %q: %w", id, ErrDuplicateID)
		}
		return nil, -1, err
	}
	if err := validNames(names); err != nil {
		return nil, -1, err
	}
	names = dedupe(names)
	// The daemon refuses a name another layer holds, atomically; the key
	// of a snapshot containerd made is a name it does not index.
	for _, n := range names {
		if other, err := s.statLayer(n); err != nil || (other != nil && !other.owned) {
			if err == nil {
				err = fmt.Errorf("layer name %q is the key of snapshot %s: %w", n, other.ID, ErrDuplicateName)
			}
			return nil, -1, err
		}
	}
	parentKey := ""
	if parent != "" {
		p, err := s.findLayer(parent)
		if errors.Is(err, ErrLayerUnknown) && s.roLayer != nil {
			parentKey, err = s.roLayer(parent)
		}
		if errors.Is(err, ErrLayerUnknown) {
			return nil, -1, fmt.Errorf("parent layer %q: %w", parent, ErrLayerUnknown)
		}
		if err != nil {
			return nil, -1, err
		}
		if p != nil && p.writeable {
			if err := s.freeze(p); err != nil {
				return nil, -1, err
			}
		}
		if p != nil {
			parentKey = p.key
		}
	}

	labels := map[string]string{cslabels.Owned: "store"}
	nameLabels(cslabels.Layer, names, labels)
	if mountLabel != "" {
		labels[cslabels.MountLabel] = mountLabel
	}
	if len(options.Flags) > 0 {
		f, err := json.Marshal(options.Flags)
		if err != nil {
			return nil, -1, fmt.Errorf("layer flags: %w", err)
		}
		labels[cslabels.Flags] = string(f)
	}
	if options.OriginalDigest != "" {
		labels[cslabels.CompressedDigest] = options.OriginalDigest.String()
	}
	if options.UncompressedDigest != "" {
		labels[cslabels.UncompressedDigest] = options.UncompressedDigest.String()
	}

	size := int64(-1)
	var err error
	if writeable {
		if _, err := s.sn.Prepare(s.ctx, rwPrefix+id, parentKey, snapshots.WithLabels(labels)); err != nil {
			return nil, -1, mapErr(fmt.Errorf("create layer %s: %w", id, err))
		}
		if diff != nil {
			if size, err = s.ApplyDiff(id, diff); err != nil {
				s.deleteSnapshot(rwPrefix + id)
				return nil, -1, err
			}
		}
	} else {
		if size, err = s.fillAndCommit(id, parentKey, labels, diff); err != nil {
			return nil, -1, err
		}
	}
	for _, bd := range options.BigData {
		if err := s.SetLayerBigData(id, bd.Key, bd.Data); err != nil {
			s.DeleteLayer(id)
			return nil, -1, err
		}
	}
	key := id
	if writeable {
		key = rwPrefix + id
	}
	r, err := s.statLayer(key)
	if err != nil || r == nil {
		return nil, -1, fmt.Errorf("layer %s after creating it: %w", id, errors.Join(err, ErrLayerUnknown))
	}
	l := r.Layer
	return &l, size, nil
}

// freeze commits writeable layer p under its ID so it can be a parent, as
// containers/storage lets any layer be one. Its files stay where they are;
// later mounts of it are read-only.
func (s *store) freeze(p *layerRecord) error {
	if !p.owned {
		return fmt.Errorf("parent layer %s is an active snapshot containerd made: %w", p.ID, ErrParentIsContainer)
	}
	if id := cslabels.ContainerID(p.labels); id != "" {
		return fmt.Errorf("parent layer %s is the layer of container %s: %w", p.ID, id, ErrParentIsContainer)
	}
	if err := s.sn.Commit(s.ctx, p.ID, p.key, snapshots.WithLabels(p.labels)); err != nil {
		return mapErr(fmt.Errorf("commit writeable layer %s to be a parent: %w", p.ID, err))
	}
	old := p.key
	p.key, p.writeable = p.ID, false
	return s.retargetImages(old, p.key)
}

// retargetImages points the images whose top layer lived in snapshot from
// at snapshot to.
func (s *store) retargetImages(from, to string) error {
	idx, err := s.loadImages()
	if err != nil {
		return err
	}
	for _, r := range idx.list {
		if r.labels[cslabels.GCRefSnapshot] == from {
			if err := s.updateImageLabels(r.dgst, map[string]string{cslabels.GCRefSnapshot: to}); err != nil {
				return fmt.Errorf("image %s: %w", r.ID, err)
			}
		}
	}
	return nil
}

// validID refuses IDs that cannot be snapshot keys of the store.
func validID(id string) error {
	if strings.HasPrefix(id, internalPrefix) || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("layer ID %q: IDs may not contain '/' or begin with %q: %w", id, internalPrefix, ErrNotSupported)
	}
	return nil
}

// fillAndCommit makes read-only layer id: an incomplete active snapshot,
// the diff applied into it, committed under id with labels and the diff's
// records.
func (s *store) fillAndCommit(id, parentKey string, labels map[string]string, diff io.Reader) (int64, error) {
	tmp := incompletePrefix + id
	mounts, err := s.sn.Prepare(s.ctx, tmp, parentKey, snapshots.WithLabels(map[string]string{
		cslabels.Owned:      "store",
		cslabels.Incomplete: "applying",
	}))
	if err != nil {
		return -1, mapErr(fmt.Errorf("create layer %s: %w", id, err))
	}
	committed := false
	defer func() {
		if !committed {
			s.deleteSnapshot(tmp)
		}
	}()
	size := int64(-1)
	if diff != nil {
		upper, lowers, err := overlayutils.Dirs(mounts, false)
		if err != nil {
			return -1, err
		}
		rec, err := s.applyInto(id, upper, lowers, diff)
		if err != nil {
			return -1, err
		}
		for k, v := range rec {
			labels[k] = v
		}
		size, _ = strconv.ParseInt(rec[cslabels.UncompressedSize], 10, 64)
	}
	if err := s.sn.Commit(s.ctx, id, tmp, snapshots.WithLabels(labels)); err != nil {
		if s.committedAnyway(id, labels, err) {
			committed = true
			return size, nil
		}
		return -1, mapErr(fmt.Errorf("commit layer %s: %w", id, err))
	}
	committed = true
	return size, nil
}

// committedAnyway tells, after a failed Commit of layer id, whether the
// commit went through all the same (its reply was lost: the daemon killed
// or the connection cut after the transaction). Only when layer id is
// surely not there are the blobs it was to hold released; when that cannot
// be known, GarbageCollect releases them later if no layer holds them.
func (s *store) committedAnyway(id string, labels map[string]string, commitErr error) bool {
	if errdefs.IsAlreadyExists(commitErr) || errdefs.IsNotFound(commitErr) || errdefs.IsInvalidArgument(commitErr) || errdefs.IsFailedPrecondition(commitErr) {
		// The daemon answered: the commit did not happen.
		s.releaseBlob(labels[cslabels.TarSplit], id, "tar-split")
		s.releaseBlob(labels[cslabels.DiffBlob], id, "diff")
		return false
	}
	info, err := s.sn.Stat(s.ctx, id)
	switch {
	case err == nil && info.Kind == snapshots.KindCommitted && info.Labels[cslabels.TarSplit] == labels[cslabels.TarSplit] && info.Labels[cslabels.DiffBlob] == labels[cslabels.DiffBlob]:
		return true
	case err == nil || errdefs.IsNotFound(err):
		s.releaseBlob(labels[cslabels.TarSplit], id, "tar-split")
		s.releaseBlob(labels[cslabels.DiffBlob], id, "diff")
	}
	return false
}

// deleteSnapshot removes a snapshot the store owns. Its ownership label
// stays on to the end: the store's calls may remove what it holds (see
// snapshotter.WithStoreCaller), and containerd's garbage collector never
// sees it, so the two never race for it.
func (s *store) deleteSnapshot(key string) error {
	if err := s.sn.Remove(s.ctx, key); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// SetNames replaces the names of layer id. A name another layer has moves
// to this one, as in containers/storage.
func (s *store) SetNames(id string, names []string) error {
	if err := validNames(names); err != nil {
		return err
	}
	return s.updateNames(id, func([]string) []string { return dedupe(names) })
}

// AddNames adds names to layer id.
func (s *store) AddNames(id string, names []string) error {
	if err := validNames(names); err != nil {
		return err
	}
	return s.updateNames(id, func(old []string) []string { return dedupe(append(append([]string(nil), names...), old...)) })
}

// RemoveNames removes names from layer id.
func (s *store) RemoveNames(id string, names []string) error {
	return s.updateNames(id, func(old []string) []string {
		drop := map[string]bool{}
		for _, n := range names {
			drop[n] = true
		}
		var keep []string
		for _, n := range old {
			if !drop[n] {
				keep = append(keep, n)
			}
		}
		return keep
	})
}

// Names returns the names of the layer, image or container id.
func (s *store) Names(id string) ([]string, error) {
	f, err := s.findQuick(id)
	switch {
	case err != nil:
		return nil, err
	case f.layer != nil:
		return append([]string(nil), f.layer.Names...), nil
	case f.image != nil:
		return append([]string(nil), f.image.Names...), nil
	case f.container != nil:
		return append([]string(nil), f.container.Names...), nil
	}
	return nil, ErrLayerUnknown
}

func (s *store) updateNames(id string, change func(old []string) []string) error {
	f, err := s.find(id)
	switch {
	case err != nil:
		return err
	case f.image != nil:
		return s.imageUpdateNames(f.image, f.images, change)
	case f.container != nil:
		return s.containerUpdateNames(f.container, f.idx, change)
	case f.layer == nil:
		return fmt.Errorf("%q: %w", id, ErrLayerUnknown)
	}
	return s.layerUpdateNames(f.layer, f.idx, change)
}

// Metadata returns the metadata of the layer, image or container id.
func (s *store) Metadata(id string) (string, error) {
	f, err := s.findQuick(id)
	switch {
	case err != nil:
		return "", err
	case f.layer != nil:
		return f.layer.Metadata, nil
	case f.image != nil:
		return f.image.Metadata, nil
	case f.container != nil:
		return f.container.Metadata, nil
	}
	return "", ErrNotAnID
}

// SetMetadata replaces the metadata of the layer, image or container id.
func (s *store) SetMetadata(id, metadata string) error {
	f, err := s.find(id)
	switch {
	case err != nil:
		return err
	case f.layer != nil:
		return s.setLabel(f.layer, cslabels.Metadata, metadata)
	case f.image != nil:
		return s.imageSetMetadata(f.image, metadata)
	case f.container != nil:
		return s.containerSetMetadata(f.container, metadata)
	}
	return ErrNotAnID
}

func (s *store) setLabel(r *layerRecord, key, value string) error {
	_, err := s.sn.Update(s.ctx, snapshots.Info{Name: r.key, Labels: map[string]string{key: value}}, "labels."+key)
	if errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("%s of layer %s does not fit in a label (%d bytes): %w", strings.TrimPrefix(key, cslabels.Prefix), r.ID, len(value), err)
	}
	return mapErr(err)
}

// DeleteLayer removes a layer without children, unmounting it first, and
// the blobs only it used.
func (s *store) DeleteLayer(id string) error {
	idx, err := s.load()
	if err != nil {
		return err
	}
	r, ok := idx.lookup(id)
	if !ok {
		return ErrNotALayer
	}
	for _, other := range idx.list {
		if other.Parent == r.ID {
			return fmt.Errorf("used by layer %v: %w", other.ID, ErrLayerHasChildren)
		}
	}
	if id := cslabels.ContainerID(r.labels); id != "" {
		return fmt.Errorf("layer %v is the layer of container %s: %w", r.ID, id, ErrLayerUsedByContainer)
	}
	img, err := s.imageUsing(r.ID)
	if err != nil {
		return err
	}
	if img != nil {
		return fmt.Errorf("used by image %v: %w", img.ID, ErrLayerUsedByImage)
	}
	if r.MountCount > 0 {
		if _, err := s.Unmount(r.ID, true); err != nil {
			return err
		}
	} else if err := s.deleteSnapshot(mountPrefix + r.ID); err != nil {
		// The view of a mount the run root forgot (a reboot) is no child.
		return fmt.Errorf("delete layer %v: release its stale mount view: %w", r.ID, err)
	}
	if err := s.deleteSnapshot(r.key); err != nil {
		if errdefs.IsFailedPrecondition(err) {
			return fmt.Errorf("delete layer %v: %w: %w", r.ID, ErrLayerHasChildren, err)
		}
		return fmt.Errorf("delete layer %v: %w", r.ID, err)
	}
	s.releaseLayerBlobs(r)
	return nil
}

// releaseLayerBlobs drops the references of deleted layer r to its blobs.
func (s *store) releaseLayerBlobs(r *layerRecord) {
	s.releaseBlob(r.labels[cslabels.TarSplit], r.ID, "tar-split")
	s.releaseBlob(r.labels[cslabels.DiffBlob], r.ID, "diff")
	for _, key := range r.BigDataNames {
		s.releaseBlob(r.labels[cslabels.BigDataPrefix+key], r.ID, "bigdata/"+key)
	}
}

// Delete removes the layer, image (only its record, as containers/storage
// does) or container id.
func (s *store) Delete(id string) error {
	f, err := s.find(id)
	switch {
	case err != nil:
		return err
	case f.layer != nil:
		if c := f.idx.containerOn(f.layer); c != nil {
			return s.deleteContainer(c)
		}
		return s.DeleteLayer(f.layer.ID)
	case f.image != nil:
		return s.deleteImage(f.image)
	case f.container != nil:
		return s.deleteContainer(f.container)
	}
	return ErrNotAnID
}

// Wipe deletes every container, then every image, then every layer the
// store made, children first. Snapshots containerd made are containerd's
// to remove and are left alone.
func (s *store) Wipe() error {
	if err := s.wipeContainers(); err != nil {
		return err
	}
	if err := s.wipeImages(); err != nil {
		return err
	}
	for {
		idx, err := s.load()
		if err != nil {
			return err
		}
		hasChild := map[string]bool{}
		for _, r := range idx.list {
			hasChild[r.Parent] = true
		}
		progress := false
		for _, r := range idx.list {
			if r.owned && !hasChild[r.ID] {
				if err := s.DeleteLayer(r.ID); err != nil {
					return err
				}
				progress = true
			}
		}
		if !progress {
			return nil
		}
	}
}
