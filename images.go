package storage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// Images
//
// An image the store makes is a small immutable record blob in the content
// store, the JSON document imageDoc, whose content labels hold everything
// that can change (cslabels: ImageMarker, ImageID, ImageNamePrefix,
// ImageMetadata, ImageDigest, ImageDigests, ImageBigDataPrefix...,
// ImageNamesHistory, ImageFlags, GCRefSnapshot). The blob carries
// cslabels.ImageRef(id, "record"), so containerd's garbage collector cannot
// take it, and each big data item is a blob of its own carrying
// cslabels.ImageRef(id, "bigdata/<key>"). The daemon claims image names and
// IDs in the transaction that writes the labels (metadata.ContentLabels),
// so they are unique among images even with racing clients.

// ImageDigestManifestBigDataNamePrefix begins the keys of big data items
// that are manifests: their digests are among the image's Digests.
const (
	ImageDigestManifestBigDataNamePrefix = "manifest"
	ImageDigestBigDataKey                = "manifest"
)

// The image errors of containers/storage (kept here with the image code).
var (
	ErrNotAnImage           = errors.New("identifier is not an image")
	ErrImageUsedByContainer = errors.New("image is in use by a container")
)

// Image is containers/storage's image record.
type Image struct {
	// ID is 64 hex digits, random unless the caller gave one.
	ID string `json:"id"`
	// Digest is a digest by which the image can be found; the first
	// manifest's unless the caller gave one.
	Digest digest.Digest `json:"digest,omitempty"`
	// Digests are Digest and the digests of the manifest big data items.
	Digests []digest.Digest `json:"-"`
	// Names are unique among images.
	Names        []string `json:"names,omitempty"`
	NamesHistory []string `json:"names-history,omitempty"`
	TopLayer     string   `json:"layer,omitempty"`
	// MappedTopLayers is always empty: the store has no ID mappings.
	MappedTopLayers []string                 `json:"mapped-layers,omitempty"`
	Metadata        string                   `json:"metadata,omitempty"`
	BigDataNames    []string                 `json:"big-data-names,omitempty"`
	BigDataSizes    map[string]int64         `json:"big-data-sizes,omitempty"`
	BigDataDigests  map[string]digest.Digest `json:"big-data-digests,omitempty"`
	Created         time.Time                `json:"created,omitempty"`
	ReadOnly        bool                     `json:"-"`
	Flags           map[string]interface{}   `json:"flags,omitempty"`
}

// ImageOptions are the options of CreateImage.
type ImageOptions struct {
	// CreationDate, if not zero, is recorded instead of the current time.
	CreationDate time.Time
	// Digest is a digest by which the image can be found.
	Digest digest.Digest
	// Digests is accepted as containers/storage v1.50 accepts it: the
	// image's Digests are computed from Digest and its manifests.
	Digests      []digest.Digest
	Metadata     string
	BigData      []ImageBigDataOption
	NamesHistory []string
	Flags        map[string]interface{}
}

// ImageBigDataOption is a big data item to store with a new image. Digest,
// if empty, is the sha256 of Data.
type ImageBigDataOption struct {
	Key    string
	Data   []byte
	Digest digest.Digest
}

// imageDoc is the content of an image's record blob: what never changes.
// Its format is versioned by the value of the cslabels.ImageMarker label
// ("1"): {"id":"<64 hex>","created":"<RFC 3339, nanoseconds>","top-layer":"<layer ID>"}
// (top-layer left out when the image has none).
type imageDoc struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	TopLayer string    `json:"top-layer,omitempty"`
}

// imageFormat is the value of cslabels.ImageMarker.
const imageFormat = "1"

// imageRecord is an Image with the blob it lives in.
type imageRecord struct {
	Image
	dgst   digest.Digest
	labels map[string]string
}

// imageIndex is every image of the store, as one Walk saw them.
type imageIndex struct {
	list   []*imageRecord
	byID   map[string]*imageRecord
	byName map[string]*imageRecord
}

// docCache keeps the decoded record blobs: they are immutable and
// content-addressed, so a digest always stands for the same document.
var docCache sync.Map // digest.Digest -> imageDoc

func (s *store) readImageDoc(info content.Info) (imageDoc, error) {
	if v, ok := docCache.Load(info.Digest); ok {
		return v.(imageDoc), nil
	}
	// The record's copy in its labels spares a read per image per listing.
	if v := info.Labels[cslabels.ImageDoc]; v != "" {
		var doc imageDoc
		if err := json.Unmarshal([]byte(v), &doc); err == nil {
			return doc, nil
		}
	}
	data, err := content.ReadBlob(s.ctx, s.cs, ocispec.Descriptor{Digest: info.Digest, Size: info.Size})
	if err != nil {
		return imageDoc{}, err
	}
	var doc imageDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return imageDoc{}, fmt.Errorf("image record %s: %w: %w", info.Digest, ErrLoadError, err)
	}
	docCache.Store(info.Digest, doc)
	return doc, nil
}

// loadImages lists the store's images: the record blobs marked
// cslabels.ImageMarker, then the images containerd imported (ctrdimages.go:
// a manifest in the content store, ID = config digest, top layer = the
// snapshot of its last chain ID), built from the blobs themselves since
// containerd tells the daemon nothing else. One Walk of the content store
// serves both. A store-made image wins an ID or a name.
func (s *store) loadImages() (*imageIndex, error) {
	idx := &imageIndex{byID: map[string]*imageRecord{}, byName: map[string]*imageRecord{}}
	var infos []content.Info
	err := s.cs.Walk(s.ctx, func(info content.Info) error {
		infos = append(infos, info)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	for _, info := range infos {
		if info.Labels[cslabels.ImageMarker] == "" {
			continue
		}
		doc, err := s.readImageDoc(info)
		if errdefs.IsNotFound(err) {
			continue // deleted since the walk
		}
		if err != nil {
			return nil, err
		}
		r := imageFromLabels(doc, info.Digest, info.Labels)
		idx.list = append(idx.list, r)
		idx.byID[r.ID] = r
		for _, n := range r.Names {
			idx.byName[n] = r
		}
	}
	ctrd, err := s.ctrdImages(infos)
	if err != nil {
		return nil, fmt.Errorf("list containerd's images: %w", err)
	}
	for _, r := range ctrd {
		if _, ok := idx.byID[r.ID]; ok {
			continue
		}
		var names []string
		for _, n := range r.Names {
			if _, ok := idx.byName[n]; !ok {
				names = append(names, n)
				idx.byName[n] = r
			}
		}
		r.Names = names
		idx.list = append(idx.list, r)
		idx.byID[r.ID] = r
	}
	sort.Slice(idx.list, func(i, j int) bool {
		if !idx.list[i].Created.Equal(idx.list[j].Created) {
			return idx.list[i].Created.Before(idx.list[j].Created)
		}
		return idx.list[i].ID < idx.list[j].ID
	})
	return idx, nil
}

func imageFromLabels(doc imageDoc, dgst digest.Digest, l map[string]string) *imageRecord {
	r := &imageRecord{dgst: dgst, labels: l}
	r.ID, r.Created, r.TopLayer = doc.ID, doc.Created, doc.TopLayer
	r.Names = positioned(l, cslabels.ImageNamePrefix)
	r.Metadata = l[cslabels.ImageMetadata]
	r.Digest = digest.Digest(l[cslabels.ImageDigest])
	if v := l[cslabels.ImageDigests]; v != "" {
		json.Unmarshal([]byte(v), &r.Digests)
	}
	if v := l[cslabels.ImageNamesHistory]; v != "" {
		json.Unmarshal([]byte(v), &r.NamesHistory)
	}
	if v := l[cslabels.ImageFlags]; v != "" {
		json.Unmarshal([]byte(v), &r.Flags)
	}
	r.BigDataNames = []string{}
	r.BigDataSizes = map[string]int64{}
	r.BigDataDigests = map[string]digest.Digest{}
	for k, v := range l {
		key, ok := strings.CutPrefix(k, cslabels.ImageBigDataPrefix)
		if !ok {
			continue
		}
		r.BigDataNames = append(r.BigDataNames, key)
		if n, err := strconv.ParseInt(l[cslabels.ImageBigDataSizePrefix+key], 10, 64); err == nil {
			r.BigDataSizes[key] = n
		}
		d := digest.Digest(v)
		if o := l[cslabels.ImageBigDataDigestPrefix+key]; o != "" {
			d = digest.Digest(o)
		}
		r.BigDataDigests[key] = d
	}
	sort.Strings(r.BigDataNames)
	return r
}

// positioned returns the names recorded as prefix+name = position, in
// position order.
func positioned(l map[string]string, prefix string) []string {
	var names []string
	for k := range l {
		if n, ok := strings.CutPrefix(k, prefix); ok && n != "" {
			names = append(names, n)
		}
	}
	pos := func(n string) int {
		p, _ := strconv.Atoi(l[prefix+n])
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

// lookup finds an image by ID, name or unique ID prefix, as
// containers/storage does.
func (idx *imageIndex) lookup(name string) (*imageRecord, bool) {
	if r, ok := idx.byID[name]; ok {
		return r, true
	}
	if r, ok := idx.byName[name]; ok {
		return r, true
	}
	if name == "" {
		return nil, false
	}
	var found *imageRecord
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

func (s *store) image(id string) (*imageRecord, *imageIndex, error) {
	idx, err := s.loadImages()
	if err != nil {
		return nil, nil, err
	}
	r, ok := idx.lookup(id)
	if !ok {
		return nil, nil, fmt.Errorf("locating image with ID %q: %w", id, ErrImageUnknown)
	}
	return r, idx, nil
}

func copyImage(r *imageRecord) *Image {
	i := r.Image
	i.Names = append([]string(nil), r.Names...)
	i.Digests = append([]digest.Digest(nil), r.Digests...)
	i.NamesHistory = append([]string(nil), r.NamesHistory...)
	i.BigDataNames = append([]string{}, r.BigDataNames...)
	return &i
}

// mapImageErr turns the daemon's answers to image label changes into the
// store's errors.
func mapImageErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errdefs.IsAlreadyExists(err) && strings.Contains(err.Error(), "image ID"):
		return fmt.Errorf("%w: %w", ErrDuplicateID, err)
	case errdefs.IsAlreadyExists(err):
		return fmt.Errorf("%w: %w", ErrDuplicateName, err)
	case errdefs.IsNotFound(err):
		return fmt.Errorf("%w: %w", ErrImageUnknown, err)
	}
	return err
}

// writeImageBlob stores data as a blob carrying label ref = use and
// returns its digest. exclusive refuses a blob that exists already.
func (s *store) writeImageBlob(ingest string, data io.Reader, ref, use string, exclusive bool) (digest.Digest, error) {
	ingest += "." + newID()[:12]
	w, err := content.OpenWriter(s.ctx, s.cs, content.WithRef(ingest))
	if err != nil {
		return "", err
	}
	defer w.Close()
	if _, err := io.Copy(w, data); err != nil {
		s.cs.Abort(s.ctx, ingest)
		return "", err
	}
	labels := map[string]string{ref: use}
	if !exclusive {
		// The same bytes may be another's already: the blob gets this
		// reference too, in the same step.
		return contentstore.CommitReferenced(s.ctx, s.cs, w, labels)
	}
	// An existing blob is AlreadyExists, and keeps its labels.
	err = w.Commit(s.ctx, 0, "", content.WithLabels(labels))
	return w.Digest(), err
}

// updateImageLabels sets labels of record blob dgst in one Update (an
// empty value removes a label); the daemon claims and releases the names
// and ID among them in the same transaction.
func (s *store) updateImageLabels(dgst digest.Digest, labels map[string]string) error {
	if len(labels) == 0 {
		return nil
	}
	paths := make([]string, 0, len(labels))
	for k := range labels {
		paths = append(paths, "labels."+k)
	}
	_, err := s.cs.Update(s.ctx, content.Info{Digest: dgst, Labels: labels}, paths...)
	return err
}

// bigDataLabels records big data item key: the blob, its size and, when it
// differs from the blob's, the item's digest.
func bigDataLabels(into map[string]string, key string, blob digest.Digest, size int, itemDigest digest.Digest) {
	into[cslabels.ImageBigDataPrefix+key] = blob.String()
	into[cslabels.ImageBigDataSizePrefix+key] = strconv.Itoa(size)
	into[cslabels.ImageBigDataDigestPrefix+key] = ""
	if itemDigest != blob {
		into[cslabels.ImageBigDataDigestPrefix+key] = itemDigest.String()
	}
}

// digestLabels computes the image's Digest and Digests from the labels it
// will have, as containers/storage's recomputeDigests does: Digest (kept
// once set), then each manifest item's digest.
func digestLabels(l map[string]string, into map[string]string) error {
	d := digest.Digest(l[cslabels.ImageDigest])
	var list []digest.Digest
	seen := map[digest.Digest]bool{}
	if d != "" {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("validating image digest %q: %w", d, err)
		}
		seen[d] = true
		list = append(list, d)
	}
	var keys []string
	for k := range l {
		if key, ok := strings.CutPrefix(k, cslabels.ImageBigDataPrefix); ok && l[k] != "" && strings.HasPrefix(key, ImageDigestManifestBigDataNamePrefix) {
			keys = append(keys, key)
		}
	}
	sort.Strings(keys)
	for _, key := range keys {
		md := digest.Digest(l[cslabels.ImageBigDataPrefix+key])
		if o := l[cslabels.ImageBigDataDigestPrefix+key]; o != "" {
			md = digest.Digest(o)
		}
		if err := md.Validate(); err != nil {
			return fmt.Errorf("validating digest %q for big data item %q: %w", md, key, err)
		}
		if !seen[md] {
			seen[md] = true
			list = append(list, md)
		}
	}
	if d == "" && len(list) > 0 {
		d = list[0]
	}
	into[cslabels.ImageDigest] = d.String()
	into[cslabels.ImageDigests] = ""
	if len(list) > 0 {
		j, _ := json.Marshal(list)
		into[cslabels.ImageDigests] = string(j)
	}
	return nil
}

// merged returns base with changes applied (empty values remove).
func merged(base, changes map[string]string) map[string]string {
	out := make(map[string]string, len(base)+len(changes))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range changes {
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func bigDataIngest(id, key string) string {
	return "cs.bigdata.image." + id + "." + digest.FromString(key).Encoded()
}

func bigDataUse(key string) string { return "bigdata/" + key }

// maxLabel is containerd's limit on a label's key and value together.
const maxLabel = 4096

// validBigDataKey refuses an empty key, or one whose labels (the blob's
// reference, the record's digest label) would pass containerd's limit.
func validBigDataKey(id, key string) error {
	if key == "" {
		return fmt.Errorf("can't set empty name for image big data item: %w", ErrInvalidBigDataName)
	}
	const digestValue = 7 + 128 // "sha512:" and its hex
	if len(cslabels.ImageRef(id, bigDataUse(key)))+len("bigdata") > maxLabel || len(cslabels.ImageBigDataDigestPrefix+key)+digestValue > maxLabel {
		return fmt.Errorf("big data key %s of image %s (%d bytes) does not fit in a label: %w", shortKey(key), id, len(key), ErrInvalidBigDataName)
	}
	return nil
}

// shortKey quotes key for a message, cut short if long.
func shortKey(key string) string {
	if len(key) > 64 {
		return strconv.Quote(key[:64]) + "..."
	}
	return strconv.Quote(key)
}

// releaseImageBlob drops image id's reference to a blob, deleting the blob
// when nothing else references it.
func (s *store) releaseImageBlob(dgst, id, use string) {
	s.releaseBlob(dgst, "image."+id, use)
}

// CreateImage records an image with top layer layer (which may be "").
func (s *store) CreateImage(id string, names []string, layer, metadata string, options *ImageOptions) (*Image, error) {
	if options == nil {
		options = &ImageOptions{}
	}
	var top *layerRecord
	if layer != "" {
		r, err := s.findLayer(layer)
		if errors.Is(err, ErrLayerUnknown) && s.roLayer != nil {
			// Another image store's layer: the image stacks on its
			// mirror here, as a layer or container would.
			var key string
			if key, err = s.roLayer(layer); err == nil {
				r = &layerRecord{key: key}
				r.ID = path.Base(key)
			}
		}
		if err != nil {
			return nil, err
		}
		top = r
	}
	unlock, err := s.lockImages()
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Through the daemon, it claims IDs and names atomically; through
	// containerd, the check below (under the lock) is what enforces them.
	idx := &imageIndex{}
	if s.containerd != nil {
		if idx, err = s.loadImages(); err != nil {
			return nil, err
		}
	}
	if id == "" {
		id = newID()
	} else if strings.ContainsAny(id, "/\x00") {
		return nil, fmt.Errorf("image ID %q: IDs may not contain '/': %w", id, ErrNotSupported)
	}
	if o, ok := idx.byID[id]; ok && !o.ReadOnly { // containerd's images are another (read-only) store's
		return nil, fmt.Errorf("an image with ID %q already exists: %w", id, ErrDuplicateID)
	}
	if err := validNames(names); err != nil {
		return nil, err
	}
	names = dedupe(names)
	for _, n := range names {
		if other, ok := idx.byName[n]; ok && !other.ReadOnly {
			return nil, fmt.Errorf("image name %q is already associated with image %q: %w", n, other.ID, ErrDuplicateName)
		}
	}
	created := options.CreationDate
	if created.IsZero() {
		created = time.Now().UTC()
	}
	labels := map[string]string{cslabels.ImageMarker: imageFormat, cslabels.ImageID: id}
	for i, n := range names {
		labels[cslabels.ImageNamePrefix+n] = strconv.Itoa(i)
	}
	if metadata == "" {
		metadata = options.Metadata
	}
	labels[cslabels.ImageMetadata] = metadata
	if len(options.Flags) > 0 {
		f, err := json.Marshal(options.Flags)
		if err != nil {
			return nil, fmt.Errorf("image flags: %w", err)
		}
		labels[cslabels.ImageFlags] = string(f)
	}
	if len(options.NamesHistory) > 0 {
		h, _ := json.Marshal(options.NamesHistory)
		labels[cslabels.ImageNamesHistory] = string(h)
	}
	if top != nil {
		labels[cslabels.GCRefSnapshot] = top.key
	}
	labels[cslabels.ImageDigest] = options.Digest.String()

	blobs := map[string]string{} // key -> blob digest, released on failure
	release := func() {
		for key, d := range blobs {
			s.releaseImageBlob(d, id, bigDataUse(key))
		}
	}
	for _, item := range options.BigData {
		if err := validBigDataKey(id, item.Key); err != nil {
			release()
			return nil, err
		}
		d := item.Digest
		if d == "" {
			d = digest.Canonical.FromBytes(item.Data)
		}
		blob, err := s.writeImageBlob(bigDataIngest(id, item.Key), bytes.NewReader(item.Data), cslabels.ImageRef(id, bigDataUse(item.Key)), "bigdata", false)
		if err != nil {
			release()
			return nil, fmt.Errorf("store big data %s of image %s: %w", shortKey(item.Key), id, err)
		}
		if old, ok := blobs[item.Key]; ok && old != blob.String() {
			s.releaseImageBlob(old, id, bigDataUse(item.Key))
		}
		blobs[item.Key] = blob.String()
		bigDataLabels(labels, item.Key, blob, len(item.Data), d)
	}
	if err := digestLabels(merged(nil, labels), labels); err != nil {
		release()
		return nil, fmt.Errorf("validating digests for new image: %w", err)
	}
	for k, v := range labels {
		if v == "" {
			delete(labels, k)
		}
	}

	d := imageDoc{ID: id, Created: created}
	if top != nil {
		d.TopLayer = top.ID
	}
	doc, _ := json.Marshal(d)
	labels[cslabels.ImageDoc] = string(doc)
	rec, err := s.writeImageBlob("cs.image."+id, bytes.NewReader(doc), cslabels.ImageRef(id, "record"), "record", true)
	if err != nil {
		release()
		if errdefs.IsAlreadyExists(err) {
			return nil, fmt.Errorf("an image with ID %q already exists: %w", id, ErrDuplicateID)
		}
		return nil, fmt.Errorf("store the record of image %s: %w", id, err)
	}
	// One Update gives the record all its labels: the daemon claims the
	// ID and the names in its transaction, and the image appears whole.
	if err := s.updateImageLabels(rec, labels); err != nil {
		s.deleteRecordBlob(rec, id)
		release()
		if errdefs.IsInvalidArgument(err) {
			return nil, fmt.Errorf("image %s: a label is over containerd's size limit (metadata %d bytes): %w", id, len(metadata), err)
		}
		return nil, mapImageErr(fmt.Errorf("create image %s: %w", id, err))
	}
	// The document as it reads back (times survive JSON to the nanosecond).
	json.Unmarshal(doc, &d)
	return copyImage(imageFromLabels(d, rec, labels)), nil
}

// deleteRecordBlob drops the record's reference and deletes it; the daemon
// releases its names and ID with its labels.
func (s *store) deleteRecordBlob(dgst digest.Digest, id string) error {
	if err := s.updateImageLabels(dgst, map[string]string{cslabels.ImageRef(id, "record"): ""}); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	if err := s.cs.Delete(s.ctx, dgst); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// deleteImage removes the image's record and releases its big data.
func (s *store) deleteImage(r *imageRecord) error {
	if err := readOnlyImage(r); err != nil {
		return err
	}
	if err := s.deleteRecordBlob(r.dgst, r.ID); err != nil {
		return fmt.Errorf("delete image %s: %w", r.ID, err)
	}
	for _, key := range r.BigDataNames {
		s.releaseImageBlob(r.labels[cslabels.ImageBigDataPrefix+key], r.ID, bigDataUse(key))
	}
	return nil
}

// Image returns the image id names (ID, name or unique ID prefix).
func (s *store) Image(id string) (*Image, error) {
	r, err := s.findImage(id)
	if err != nil {
		return nil, err
	}
	return copyImage(r), nil
}

// Images lists every image.
func (s *store) Images() ([]Image, error) {
	idx, err := s.loadImages()
	if err != nil {
		return nil, err
	}
	out := make([]Image, 0, len(idx.list))
	for _, r := range idx.list {
		out = append(out, *copyImage(r))
	}
	return out, nil
}

// ImagesByTopLayer returns the images whose top layer is layer id.
func (s *store) ImagesByTopLayer(id string) ([]*Image, error) {
	l, err := s.Layer(id)
	if err != nil {
		return nil, err
	}
	idx, err := s.loadImages()
	if err != nil {
		return nil, err
	}
	out := []*Image{}
	for _, r := range idx.list {
		if r.TopLayer == l.ID {
			out = append(out, copyImage(r))
		}
	}
	return out, nil
}

// ImagesByDigest returns the images with d among their Digests: the digest
// given at creation or that of a manifest big data item.
func (s *store) ImagesByDigest(d digest.Digest) ([]*Image, error) {
	idx, err := s.loadImages()
	if err != nil {
		return nil, err
	}
	out := []*Image{}
	for _, r := range idx.list {
		for _, x := range r.Digests {
			if x == d {
				out = append(out, copyImage(r))
				break
			}
		}
	}
	return out, nil
}

// ListImageBigData lists the big data keys of image id.
func (s *store) ListImageBigData(id string) ([]string, error) {
	r, err := s.findImage(id)
	if err != nil {
		return nil, err
	}
	return append([]string{}, r.BigDataNames...), nil
}

// ImageBigData returns big data item key of image id.
func (s *store) ImageBigData(id, key string) ([]byte, error) {
	if key == "" {
		return nil, fmt.Errorf("can't retrieve image big data value for empty name: %w", ErrInvalidBigDataName)
	}
	r, err := s.findImage(id)
	if err != nil {
		return nil, err
	}
	blob := r.labels[cslabels.ImageBigDataPrefix+key]
	if blob == "" {
		// os.ErrNotExist too, as containers/storage's "does not exist".
		return nil, fmt.Errorf("image %s has no big data item %q: %w: %w", r.ID, key, os.ErrNotExist, errdefs.ErrNotFound)
	}
	info, err := s.cs.Info(s.ctx, digest.Digest(blob))
	if err != nil {
		return nil, fmt.Errorf("big data %q of image %s: %w", key, r.ID, err)
	}
	data, err := content.ReadBlob(s.ctx, s.cs, ocispec.Descriptor{Digest: info.Digest, Size: info.Size})
	if err != nil {
		return nil, fmt.Errorf("big data %q of image %s: %w", key, r.ID, err)
	}
	return data, nil
}

// ImageBigDataSize returns the size of big data item key of image id.
func (s *store) ImageBigDataSize(id, key string) (int64, error) {
	if key == "" {
		return -1, fmt.Errorf("can't retrieve size of image big data with empty name: %w", ErrInvalidBigDataName)
	}
	r, err := s.findImage(id)
	if err != nil {
		return -1, err
	}
	if n, ok := r.BigDataSizes[key]; ok {
		return n, nil
	}
	return -1, ErrSizeUnknown
}

// ImageBigDataDigest returns the digest of big data item key of image id.
func (s *store) ImageBigDataDigest(id, key string) (digest.Digest, error) {
	if key == "" {
		return "", fmt.Errorf("can't retrieve digest of image big data value with empty name: %w", ErrInvalidBigDataName)
	}
	r, err := s.findImage(id)
	if err != nil {
		return "", err
	}
	if d, ok := r.BigDataDigests[key]; ok {
		return d, nil
	}
	return "", ErrDigestUnknown
}

// SetImageBigData stores data as big data item key of image id, replacing
// any previous value. A manifest item (key beginning "manifest") is
// digested with digestManifest, and its digest joins the image's Digests.
func (s *store) SetImageBigData(id, key string, data []byte, digestManifest func([]byte) (digest.Digest, error)) error {
	r, err := s.findImage(id)
	if err != nil {
		return err
	}
	if err := readOnlyImage(r); err != nil {
		return err
	}
	if err := validBigDataKey(r.ID, key); err != nil {
		return err
	}
	var itemDigest digest.Digest
	if strings.HasPrefix(key, ImageDigestManifestBigDataNamePrefix) {
		if digestManifest == nil {
			return fmt.Errorf("digesting manifest: no manifest digest callback provided: %w", ErrDigestUnknown)
		}
		if itemDigest, err = digestManifest(data); err != nil {
			return fmt.Errorf("digesting manifest: %w", err)
		}
	} else {
		itemDigest = digest.Canonical.FromBytes(data)
	}
	blob, err := s.writeImageBlob(bigDataIngest(r.ID, key), bytes.NewReader(data), cslabels.ImageRef(r.ID, bigDataUse(key)), "bigdata", false)
	if err != nil {
		return fmt.Errorf("store big data %s of image %s: %w", shortKey(key), r.ID, err)
	}
	old := r.labels[cslabels.ImageBigDataPrefix+key]
	labels := map[string]string{}
	bigDataLabels(labels, key, blob, len(data), itemDigest)
	if err := digestLabels(merged(r.labels, labels), labels); err != nil {
		if old != blob.String() {
			s.releaseImageBlob(blob.String(), r.ID, bigDataUse(key))
		}
		return fmt.Errorf("recomputing image digest information for %s: %w", r.ID, err)
	}
	if err := s.updateImageLabels(r.dgst, labels); err != nil {
		if old != blob.String() {
			s.releaseImageBlob(blob.String(), r.ID, bigDataUse(key))
		}
		if errdefs.IsInvalidArgument(err) {
			return fmt.Errorf("big data key %s of image %s is too long: %w: %w", shortKey(key), r.ID, ErrInvalidBigDataName, err)
		}
		return mapImageErr(err)
	}
	if old != "" && old != blob.String() {
		s.releaseImageBlob(old, r.ID, bigDataUse(key))
	}
	return nil
}

// ImageSize returns the size of the image's layers (each counted once) and
// big data.
func (s *store) ImageSize(id string) (int64, error) {
	r, err := s.findImage(id)
	if err != nil {
		return -1, err
	}
	return imageSize(&r.Image, func(l string) (*Layer, error) {
		lr, err := s.findLayer(l)
		if err != nil {
			return nil, err
		}
		return &lr.Layer, nil
	}, func(l string) (int64, error) { return s.DiffSize("", l) })
}

// imageSize is the size of img's layers (found with layer; diffSize for
// one whose diff's size was not recorded) and big data.
func imageSize(img *Image, layer func(id string) (*Layer, error), diffSize func(id string) (int64, error)) (int64, error) {
	var size int64
	seen := map[string]bool{}
	for l := img.TopLayer; l != "" && !seen[l]; {
		seen[l] = true
		lr, err := layer(l)
		if err != nil {
			return -1, fmt.Errorf("locating layer with ID %q: %w", l, err)
		}
		n := lr.UncompressedSize
		if lr.UncompressedDigest == "" {
			if n, err = diffSize(lr.ID); err != nil {
				return -1, fmt.Errorf("size/digest of layer with ID %q could not be calculated: %w", l, err)
			}
		}
		size += n
		l = lr.Parent
	}
	for _, key := range img.BigDataNames {
		n, ok := img.BigDataSizes[key]
		if !ok {
			return -1, fmt.Errorf("reading size of big data item %q for image %q: %w", key, img.ID, ErrSizeUnknown)
		}
		size += n
	}
	return size, nil
}

// DeleteImage removes image id and then every layer only it needed: from
// its top layer down, while a layer is one the store made, has no other
// child and is no other image's top layer. It returns those layers; with
// commit false it only reports them. Snapshots containerd made are
// containerd's, and the walk stops at them.
func (s *store) DeleteImage(id string, commit bool) (layers []string, err error) {
	idx, err := s.loadImages()
	if err != nil {
		return nil, err
	}
	r, ok := idx.lookup(id)
	if !ok {
		return nil, ErrNotAnImage
	}
	if err := readOnlyImage(r); err != nil {
		return nil, err
	}
	lidx, err := s.load()
	if err != nil {
		return nil, err
	}
	if err := s.withImageIDs(lidx.containers); err != nil {
		return nil, err
	}
	for _, c := range lidx.containers {
		if c.ImageID == r.ID {
			return nil, fmt.Errorf("image %s is used by container %s: %w", r.ID, c.ID, ErrImageUsedByContainer)
		}
	}
	children := map[string][]string{}
	for _, l := range lidx.list {
		children[l.Parent] = append(children[l.Parent], l.ID)
	}
	otherTops := map[string]bool{}
	for _, o := range idx.list {
		if o != r {
			otherTops[o.TopLayer] = true
		}
	}
	remove := []string{}
	removing := map[string]bool{}
	for l := r.TopLayer; l != ""; {
		lr, ok := lidx.byID[l]
		if !ok || !lr.owned || otherTops[l] {
			break
		}
		busy := false
		for _, c := range children[l] {
			if !removing[c] {
				busy = true
			}
		}
		if busy {
			break
		}
		remove = append(remove, l)
		removing[l] = true
		l = lr.Parent
	}
	if !commit {
		return remove, nil
	}
	if err := s.deleteImage(r); err != nil {
		return nil, err
	}
	for _, l := range remove {
		if err := s.DeleteLayer(l); err != nil {
			return nil, err
		}
	}
	return remove, nil
}

// imageUsing returns an image whose top layer is layer id, if any.
func (s *store) imageUsing(id string) (*imageRecord, error) {
	idx, err := s.loadImages()
	if err != nil {
		return nil, err
	}
	for _, r := range idx.list {
		if r.TopLayer == id {
			return r, nil
		}
	}
	return nil, nil
}

// Image halves of the whole-store methods (layers.go asks layers first).

func (s *store) imageUpdateNames(r *imageRecord, idx *imageIndex, change func(old []string) []string) error {
	if err := readOnlyImage(r); err != nil {
		return err
	}
	if s.containerd != nil {
		// Claims are checked against a fresh listing under the lock.
		unlock, err := s.lockImages()
		if err != nil {
			return err
		}
		defer unlock()
		if idx, err = s.loadImages(); err != nil {
			return err
		}
		if fresh, ok := idx.byID[r.ID]; ok {
			r = fresh
		}
	}
	// Through containerd the lock makes the listing hold; through the
	// daemon, moveNames (names.go) copes with other clients.
	return s.moveNames(nameMove{
		what:     "image",
		id:       r.ID,
		labelKey: func(n string) string { return cslabels.ImageNamePrefix + n },
		current: func(first bool) ([]string, error) {
			if !first {
				fresh, err := s.restatImage(r)
				if err != nil {
					return nil, err
				}
				r = fresh
			}
			return r.Names, nil
		},
		want: change,
		holder: func(first bool, n string) (string, func() error, error) {
			var other *imageRecord
			if first {
				other = idx.byName[n]
			} else {
				var err error
				if other, err = s.imageNamed(n); err != nil {
					return "", nil, err
				}
			}
			if other == nil || other.dgst == r.dgst || other.ReadOnly { // a store image's name hides containerd's
				return "", nil, nil
			}
			return other.ID, func() error {
				return mapImageErr(s.updateImageLabels(other.dgst, map[string]string{cslabels.ImageNamePrefix + n: ""}))
			}, nil
		},
		claim: func(current, names []string) error {
			labels := map[string]string{}
			for _, n := range current {
				labels[cslabels.ImageNamePrefix+n] = ""
			}
			for i, n := range names {
				labels[cslabels.ImageNamePrefix+n] = strconv.Itoa(i)
			}
			history := append([]string(nil), r.NamesHistory...)
			for _, n := range names {
				history = dedupe(append([]string{n}, history...))
			}
			if len(history) > 0 {
				h, _ := json.Marshal(history)
				labels[cslabels.ImageNamesHistory] = string(h)
			}
			return mapImageErr(s.updateImageLabels(r.dgst, labels))
		},
	})
}

func (s *store) imageSetMetadata(r *imageRecord, metadata string) error {
	if err := readOnlyImage(r); err != nil {
		return err
	}
	err := s.updateImageLabels(r.dgst, map[string]string{cslabels.ImageMetadata: metadata})
	if errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("metadata of image %s does not fit in a label (%d bytes): %w", r.ID, len(metadata), err)
	}
	return mapImageErr(err)
}

// lookupImage finds image id when no layer has that name; nil if none.
func (s *store) lookupImage(id string) (*imageRecord, *imageIndex, error) {
	idx, err := s.loadImages()
	if err != nil {
		return nil, nil, err
	}
	r, ok := idx.lookup(id)
	if !ok {
		return nil, idx, nil
	}
	return r, idx, nil
}

// wipeImages deletes every image the store made.
func (s *store) wipeImages() error {
	idx, err := s.loadImages()
	if err != nil {
		return err
	}
	for _, r := range idx.list {
		if r.ReadOnly {
			continue // containerd's
		}
		if err := s.deleteImage(r); err != nil {
			return err
		}
	}
	return nil
}
