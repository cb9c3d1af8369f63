package storage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// Container is containers/storage's container record.
type Container struct {
	ID    string   `json:"id"`
	Names []string `json:"names,omitempty"`
	// ImageID is the container's image, "" for none.
	ImageID string `json:"image"`
	// LayerID is the container's read-write layer.
	LayerID        string                   `json:"layer"`
	Metadata       string                   `json:"metadata,omitempty"`
	BigDataNames   []string                 `json:"big-data-names,omitempty"`
	BigDataSizes   map[string]int64         `json:"big-data-sizes,omitempty"`
	BigDataDigests map[string]digest.Digest `json:"big-data-digests,omitempty"`
	Created        time.Time                `json:"created,omitempty"`
	Flags          map[string]interface{}   `json:"flags,omitempty"`
}

// ContainerOptions are the options of CreateContainer.
type ContainerOptions struct {
	// LabelOpts are SELinux label options; recorded, not applied.
	LabelOpts []string
	Flags     map[string]interface{}
	// MountOpts are kept in the container's Flags, as containers/storage
	// does.
	MountOpts []string
	Volatile  bool
	// StorageOpt is accepted for compatibility; overlay quotas are not
	// supported.
	StorageOpt map[string]string
	Metadata   string
	BigData    []ContainerBigDataOption
}

// ContainerBigDataOption is a big data item to store with a new container.
type ContainerBigDataOption struct {
	Key  string
	Data []byte
}

// The container Flags containers/storage sets.
const (
	mountLabelFlag   = "MountLabel"
	processLabelFlag = "ProcessLabel"
	mountOptsFlag    = "MountOpts"
	volatileFlag     = "Volatile"
)

// containerRecord is a container with the layer (active snapshot) it lives
// on.
type containerRecord struct {
	Container
	layer *layerRecord
	// ctrd marks an active snapshot containerd made: listed as a
	// container, but containerd's to delete.
	ctrd bool
}

// containerFromLayer reads the container record on layer r, if it carries
// one: a store-made container (its ID claimed in the labels) or an active
// snapshot containerd made for one of its containers.
func containerFromLayer(r *layerRecord) *containerRecord {
	l := r.labels
	id := cslabels.ContainerID(l)
	ctrd := false
	if id == "" {
		// containerd's own unpacking makes short-lived active snapshots
		// ("extract-<time>-<rand> <chain ID>"); those are no containers.
		if r.owned || r.kind != snapshots.KindActive || strings.HasPrefix(r.key[strings.LastIndexByte(r.key, '/')+1:], "extract-") {
			return nil
		}
		id, ctrd = r.ID, true
	}
	c := &containerRecord{layer: r, ctrd: ctrd}
	c.ID, c.LayerID, c.Created = id, r.ID, r.Created
	if ctrd {
		c.Names = []string{r.key}
	}
	c.Names = append(c.Names, orderedNames(l, cslabels.Container)...)
	c.ImageID = l[cslabels.ContainerImage]
	c.Metadata = l[cslabels.ContainerMetadata]
	if f := l[cslabels.ContainerFlags]; f != "" {
		json.Unmarshal([]byte(f), &c.Flags)
	}
	c.BigDataSizes = map[string]int64{}
	c.BigDataDigests = map[string]digest.Digest{}
	for k, v := range l {
		key, ok := strings.CutPrefix(k, cslabels.ContainerBigDataPrefix)
		if !ok {
			continue
		}
		c.BigDataNames = append(c.BigDataNames, key)
		c.BigDataDigests[key] = digest.Digest(v)
		c.BigDataSizes[key], _ = strconv.ParseInt(l[cslabels.ContainerBigDataSizePrefix+key], 10, 64)
	}
	sort.Strings(c.BigDataNames)
	return c
}

// lookupContainer finds a container by ID, name, its layer's ID, or
// unique ID prefix, as containers/storage does.
func (idx *layerIndex) lookupContainer(name string) (*containerRecord, bool) {
	if c, ok := idx.ctrByID[name]; ok {
		return c, true
	}
	if c, ok := idx.ctrByName[name]; ok {
		return c, true
	}
	if l, ok := idx.byID[name]; ok {
		if c := idx.containerOn(l); c != nil {
			return c, true
		}
	}
	if name == "" {
		return nil, false
	}
	var found *containerRecord
	for id, c := range idx.ctrByID {
		if strings.HasPrefix(id, name) {
			if found != nil {
				return nil, false // ambiguous
			}
			found = c
		}
	}
	return found, found != nil
}

// containerOn returns the container whose layer is r, if any.
func (idx *layerIndex) containerOn(r *layerRecord) *containerRecord {
	for _, c := range idx.containers {
		if c.layer == r {
			return c
		}
	}
	return nil
}

// layerOrContainer finds layer id, or else the layer of container id, as
// containers/storage's Mount and Unmount take either.
func (idx *layerIndex) layerOrContainer(id string) (*layerRecord, error) {
	if r, ok := idx.lookup(id); ok {
		return r, nil
	}
	if c, ok := idx.lookupContainer(id); ok {
		return c.layer, nil
	}
	return nil, fmt.Errorf("layer %q: %w", id, ErrLayerUnknown)
}

func (s *store) container(id string) (*containerRecord, *layerIndex, error) {
	idx, err := s.load()
	if err != nil {
		return nil, nil, err
	}
	c, ok := idx.lookupContainer(id)
	if !ok {
		return nil, nil, fmt.Errorf("container %q: %w", id, ErrContainerUnknown)
	}
	return c, idx, nil
}

// withImageIDs fills in the images of containerd's containers: the image
// whose top layer is the container layer's parent.
func (s *store) withImageIDs(list []*containerRecord) error {
	need := false
	for _, c := range list {
		need = need || (c.ctrd && c.layer.Parent != "")
	}
	if !need {
		return nil
	}
	images, err := s.loadImages()
	if err != nil {
		return err
	}
	byTop := map[string]string{}
	for _, img := range images.list {
		if img.TopLayer != "" {
			byTop[img.TopLayer] = img.ID
		}
	}
	for _, c := range list {
		if c.ctrd {
			c.ImageID = byTop[c.layer.Parent]
		}
	}
	return nil
}

func copyContainer(c *containerRecord) *Container {
	out := c.Container
	out.Names = append([]string(nil), c.Names...)
	out.BigDataNames = append([]string(nil), c.BigDataNames...)
	out.BigDataSizes = make(map[string]int64, len(c.BigDataSizes))
	for k, v := range c.BigDataSizes {
		out.BigDataSizes[k] = v
	}
	out.BigDataDigests = make(map[string]digest.Digest, len(c.BigDataDigests))
	for k, v := range c.BigDataDigests {
		out.BigDataDigests[k] = v
	}
	return &out
}

// CreateContainer makes a container: a read-write layer (layer is its ID,
// "" for a new one) on top of image's top layer, carrying the container's
// record.
func (s *store) CreateContainer(id string, names []string, image, layer, metadata string, options *ContainerOptions) (*Container, error) {
	if options == nil {
		options = &ContainerOptions{}
	}
	if id == "" {
		id = newID()
	} else if err := validID(id); err != nil {
		return nil, fmt.Errorf("container: %w", err)
	}
	if layer == "" {
		layer = newID()
	} else if err := validID(layer); err != nil {
		return nil, err
	}
	if err := validNames(names); err != nil {
		return nil, err
	}
	names = dedupe(names)
	for _, bd := range options.BigData {
		if err := validContainerBigDataKey(bd.Key); err != nil {
			return nil, err
		}
	}
	// The daemon claims the container's ID and names atomically.
	if taken, err := s.layerKeyTaken(layer); err != nil || taken {
		if err == nil {
			err = fmt.Errorf("layer %q: %w", layer, ErrDuplicateID)
		}
		return nil, err
	}
	parentKey, imageID := "", ""
	if image != "" {
		img, err := s.findImage(image)
		switch {
		case errors.Is(err, ErrImageUnknown) && s.roImage != nil:
			// An image of a read-only image store: on its mirrored chain.
			if imageID, parentKey, err = s.roImage(image); err != nil {
				return nil, err
			}
		case err != nil:
			return nil, err
		default:
			imageID = img.ID
			if img.TopLayer != "" {
				top, err := s.findLayer(img.TopLayer)
				if errors.Is(err, ErrLayerUnknown) && s.roLayer != nil {
					// An image on another image store's layer (one
					// pulled up, say): on its mirror.
					if parentKey, err = s.roLayer(img.TopLayer); err == nil {
						break
					}
				}
				if err != nil {
					return nil, fmt.Errorf("top layer %s of image %s: %w", img.TopLayer, img.ID, err)
				}
				if top.writeable {
					if err := s.freeze(top); err != nil {
						return nil, err
					}
				}
				parentKey = top.key
			}
		}
	}

	flags := map[string]interface{}{}
	for k, v := range options.Flags {
		flags[k] = v
	}
	mountLabel, _ := flags[mountLabelFlag].(string)
	processLabel, _ := flags[processLabelFlag].(string)
	if (mountLabel == "") != (processLabel == "") {
		return nil, errors.New("ProcessLabel and Mountlabel must either not be specified or both specified")
	}
	// SELinux labels are recorded, not applied: with none given the
	// container gets the empty labels of a host without SELinux.
	flags[mountLabelFlag], flags[processLabelFlag] = mountLabel, processLabel
	if options.MountOpts != nil {
		flags[mountOptsFlag] = append([]string{}, options.MountOpts...)
	}
	if options.Volatile {
		flags[volatileFlag] = true
	}
	f, err := json.Marshal(flags)
	if err != nil {
		return nil, fmt.Errorf("container flags: %w", err)
	}

	labels := map[string]string{
		cslabels.Owned: "store",
		cslabels.NameKey(cslabels.ContainerIDKind, id): "0",
		cslabels.ContainerFlags:                        string(f),
	}
	nameLabels(cslabels.Container, names, labels)
	if imageID != "" {
		labels[cslabels.ContainerImage] = imageID
	}
	if mountLabel != "" {
		labels[cslabels.MountLabel] = mountLabel
	}
	if metadata == "" {
		metadata = options.Metadata
	}
	if metadata != "" {
		labels[cslabels.ContainerMetadata] = metadata
	}
	if _, err := s.sn.Prepare(s.ctx, rwPrefix+layer, parentKey, snapshots.WithLabels(labels)); err != nil {
		if errdefs.IsInvalidArgument(err) && len(metadata) > 0 {
			return nil, fmt.Errorf("create container %s: its record (metadata %d bytes) does not fit in labels: %w", id, len(metadata), err)
		}
		return nil, mapErr(fmt.Errorf("create container %s: %w", id, err))
	}
	for _, bd := range options.BigData {
		if err := s.SetContainerBigData(id, bd.Key, bd.Data); err != nil {
			s.DeleteContainer(id)
			return nil, err
		}
	}
	r, err := s.statLayer(rwPrefix + layer)
	if err != nil || r == nil {
		return nil, fmt.Errorf("container %s after creating it: %w", id, errors.Join(err, ErrContainerUnknown))
	}
	return copyContainer(containerFromLayer(r)), nil
}

// Container returns the container id names (ID, name or unique ID prefix).
func (s *store) Container(id string) (*Container, error) {
	c, _, err := s.container(id)
	if err != nil {
		return nil, err
	}
	if err := s.withImageIDs([]*containerRecord{c}); err != nil {
		return nil, err
	}
	return copyContainer(c), nil
}

// Containers lists every container, oldest first.
func (s *store) Containers() ([]Container, error) {
	idx, err := s.load()
	if err != nil {
		return nil, err
	}
	if err := s.withImageIDs(idx.containers); err != nil {
		return nil, err
	}
	out := make([]Container, 0, len(idx.containers))
	for _, c := range idx.containers {
		out = append(out, *copyContainer(c))
	}
	return out, nil
}

// ContainerByLayer returns the container whose read-write layer is id.
func (s *store) ContainerByLayer(id string) (*Container, error) {
	idx, err := s.load()
	if err != nil {
		return nil, err
	}
	l, err := idx.get(id)
	if err != nil {
		return nil, err
	}
	c := idx.containerOn(l)
	if c == nil {
		return nil, fmt.Errorf("layer %s: %w", l.ID, ErrContainerUnknown)
	}
	if err := s.withImageIDs([]*containerRecord{c}); err != nil {
		return nil, err
	}
	return copyContainer(c), nil
}

// DeleteContainer removes container id, its layer, its big data and its
// directories.
func (s *store) DeleteContainer(id string) error {
	idx, err := s.load()
	if err != nil {
		return err
	}
	c, ok := idx.lookupContainer(id)
	if !ok {
		return ErrNotAContainer
	}
	return s.deleteContainer(c)
}

func (s *store) deleteContainer(c *containerRecord) error {
	if c.ctrd {
		return fmt.Errorf("container %s is containerd's snapshot %q: remove it through containerd: %w", c.ID, c.layer.key, ErrNotSupported)
	}
	if madeElsewhere(c) {
		// containerd's records hold it (gc.root): removed here, containerd
		// would name a snapshot that is gone.
		return fmt.Errorf("container %s was made through containerd (snapshot %q): delete it with the store opened through containerd (--containerd): %w", c.ID, c.layer.key, ErrNotSupported)
	}
	// The layer first: if that fails, the record still tells what it was.
	if c.layer.MountCount > 0 {
		if _, err := s.Unmount(c.LayerID, true); err != nil {
			return err
		}
	}
	if err := s.deleteSnapshot(c.layer.key); err != nil {
		return fmt.Errorf("delete layer %s of container %s: %w", c.LayerID, c.ID, mapErr(err))
	}
	for _, key := range c.BigDataNames {
		s.releaseBlob(c.layer.labels[cslabels.ContainerBigDataPrefix+key], containerRefID(c.ID), bigDataUse(key))
	}
	s.releaseLayerBlobs(c.layer)
	return errors.Join(
		os.RemoveAll(s.containerDir(s.opts.GraphRoot, c.ID)),
		os.RemoveAll(s.containerDir(s.opts.RunRoot, c.ID)),
	)
}

// containerDir is where container id's directory lives under root,
// where containers/storage's overlay driver keeps it.
func (s *store) containerDir(root, id string) string {
	return filepath.Join(root, "overlay-containers", id)
}

func (s *store) userdata(root, id string) (string, error) {
	c, _, err := s.container(id)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(s.containerDir(root, c.ID), "userdata")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, nil
}

// ContainerDirectory returns a directory the caller may keep container
// id's files in; it is removed with the container.
func (s *store) ContainerDirectory(id string) (string, error) {
	return s.userdata(s.opts.GraphRoot, id)
}

// ContainerRunDirectory is ContainerDirectory in the run root: gone after
// a reboot.
func (s *store) ContainerRunDirectory(id string) (string, error) {
	return s.userdata(s.opts.RunRoot, id)
}

func writeUserdata(dir, file string, data []byte) error {
	path := filepath.Join(dir, file)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// SetContainerDirectoryFile writes file (relative to the container's
// directory) atomically.
func (s *store) SetContainerDirectoryFile(id, file string, data []byte) error {
	dir, err := s.ContainerDirectory(id)
	if err != nil {
		return err
	}
	return writeUserdata(dir, file, data)
}

// FromContainerDirectory reads file from the container's directory.
func (s *store) FromContainerDirectory(id, file string) ([]byte, error) {
	dir, err := s.ContainerDirectory(id)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(dir, file))
}

// SetContainerRunDirectoryFile writes file in the container's run directory.
func (s *store) SetContainerRunDirectoryFile(id, file string, data []byte) error {
	dir, err := s.ContainerRunDirectory(id)
	if err != nil {
		return err
	}
	return writeUserdata(dir, file, data)
}

// FromContainerRunDirectory reads file from the container's run directory.
func (s *store) FromContainerRunDirectory(id, file string) ([]byte, error) {
	dir, err := s.ContainerRunDirectory(id)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(dir, file))
}

// ContainerSize is the size of the container's layer diff, big data and
// directories, as containers/storage counts it.
func (s *store) ContainerSize(id string) (int64, error) {
	c, _, err := s.container(id)
	if err != nil {
		return -1, err
	}
	size, err := s.DiffSize("", c.LayerID)
	if err != nil {
		return -1, fmt.Errorf("determining size of layer with ID %q: %w", c.LayerID, err)
	}
	for _, n := range c.BigDataSizes {
		size += n
	}
	for _, root := range []string{s.opts.GraphRoot, s.opts.RunRoot} {
		n, err := filesSize(s.containerDir(root, c.ID))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return -1, err
		}
		size += n
	}
	return size, nil
}

// containerRefID names container id in its blobs' reference labels.
func containerRefID(id string) string { return "container." + id }

// validContainerBigDataKey refuses an empty key or one whose labels would
// pass containerd's limit.
func validContainerBigDataKey(key string) error {
	if key == "" {
		return fmt.Errorf("can't set empty name for container big data item: %w", ErrInvalidBigDataName)
	}
	if len(cslabels.ContainerBigDataSizePrefix+key)+20 > maxLabel || len(cslabels.BlobRefPrefix+containerRefID(strings.Repeat("0", 64))+"."+bigDataUse(key))+len("bigdata") > maxLabel {
		return fmt.Errorf("big data key %s (%d bytes) does not fit in a label: %w", shortKey(key), len(key), ErrInvalidBigDataName)
	}
	return nil
}

// ListContainerBigData lists the big data keys of container id.
func (s *store) ListContainerBigData(id string) ([]string, error) {
	c, _, err := s.container(id)
	if err != nil {
		return nil, err
	}
	return append([]string{}, c.BigDataNames...), nil
}

// ContainerBigData returns big data item key of container id.
func (s *store) ContainerBigData(id, key string) ([]byte, error) {
	if key == "" {
		return nil, fmt.Errorf("can't retrieve container big data value for empty name: %w", ErrInvalidBigDataName)
	}
	c, _, err := s.container(id)
	if err != nil {
		return nil, err
	}
	dgst, ok := c.BigDataDigests[key]
	if !ok {
		return nil, fmt.Errorf("container %s has no big data item %q: %w", c.ID, key, os.ErrNotExist)
	}
	data, err := content.ReadBlob(s.ctx, s.cs, ocispec.Descriptor{Digest: dgst, Size: c.BigDataSizes[key]})
	if err != nil {
		return nil, fmt.Errorf("big data %q of container %s: %w", key, c.ID, err)
	}
	return data, nil
}

// ContainerBigDataSize returns the size of big data item key.
func (s *store) ContainerBigDataSize(id, key string) (int64, error) {
	c, _, err := s.container(id)
	if err != nil {
		return -1, err
	}
	n, ok := c.BigDataSizes[key]
	if !ok {
		return -1, fmt.Errorf("size of item %q in container %q: %w", key, c.ID, ErrSizeUnknown)
	}
	return n, nil
}

// ContainerBigDataDigest returns the digest of big data item key.
func (s *store) ContainerBigDataDigest(id, key string) (digest.Digest, error) {
	c, _, err := s.container(id)
	if err != nil {
		return "", err
	}
	d, ok := c.BigDataDigests[key]
	if !ok {
		return "", fmt.Errorf("digest of item %q in container %q: %w", key, c.ID, ErrDigestUnknown)
	}
	return d, nil
}

// SetContainerBigData stores data as big data item key of container id,
// replacing any previous value.
func (s *store) SetContainerBigData(id, key string, data []byte) error {
	if err := validContainerBigDataKey(key); err != nil {
		return err
	}
	c, _, err := s.container(id)
	if err != nil {
		return err
	}
	refID := containerRefID(c.ID)
	ref := cslabels.BlobRefPrefix + refID + "." + bigDataUse(key)
	dgst, err := s.writeBlob("cs.bigdata."+refID+"."+digest.FromString(key).Encoded()+"."+newID()[:12], bytes.NewReader(data), ref)
	if err != nil {
		return fmt.Errorf("store big data %q of container %s: %w", key, c.ID, err)
	}
	label, sizeLabel := cslabels.ContainerBigDataPrefix+key, cslabels.ContainerBigDataSizePrefix+key
	old := c.layer.labels[label]
	info := snapshots.Info{Name: c.layer.key, Labels: map[string]string{label: dgst.String(), sizeLabel: strconv.Itoa(len(data))}}
	if _, err := s.sn.Update(s.ctx, info, "labels."+label, "labels."+sizeLabel); err != nil {
		// As in SetLayerBigData: the update may have taken effect.
		landed, known := s.snapshotLabel(c.layer.key, label, dgst.String())
		if !landed {
			if known && old != dgst.String() {
				s.releaseBlob(dgst.String(), refID, bigDataUse(key))
			}
			return mapErr(fmt.Errorf("big data %q of container %s: %w", key, c.ID, err))
		}
	}
	if old != "" && old != dgst.String() {
		s.releaseBlob(old, refID, bigDataUse(key))
	}
	return nil
}

// replaceNameLabels replaces the names of kind old with names on snapshot
// key, in one Update.
func (s *store) replaceNameLabels(key string, kind cslabels.Kind, old, names []string) error {
	info := snapshots.Info{Name: key, Labels: map[string]string{}}
	nameLabels(kind, names, info.Labels)
	var paths []string
	for _, n := range old {
		paths = append(paths, "labels."+cslabels.NameKey(kind, n))
	}
	for k := range info.Labels {
		paths = append(paths, "labels."+k)
	}
	if len(paths) == 0 {
		return nil
	}
	_, err := s.sn.Update(s.ctx, info, paths...)
	return mapErr(err)
}

func (s *store) containerSetMetadata(c *containerRecord, metadata string) error {
	label := cslabels.ContainerMetadata
	_, err := s.sn.Update(s.ctx, snapshots.Info{Name: c.layer.key, Labels: map[string]string{label: metadata}}, "labels."+label)
	if errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("metadata of container %s does not fit in a label (%d bytes): %w", c.ID, len(metadata), err)
	}
	return mapErr(err)
}

// wipeContainers deletes every container the store made.
func (s *store) wipeContainers() error {
	idx, err := s.load()
	if err != nil {
		return err
	}
	for _, c := range idx.containers {
		if c.ctrd || madeElsewhere(c) {
			continue // containerd's to delete
		}
		if err := s.deleteContainer(c); err != nil {
			return err
		}
	}
	return nil
}
