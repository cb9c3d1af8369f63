package storage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// Check, Repair, GarbageCollect, LayerParentOwners and ContainerParentOwners:
// containers/storage v1.50's consistency checks and clean-up, on the store's
// snapshots and blobs.
//
// What is read-write and what is read-only maps as it does for images:
// layers and images the store made (cs.owned snapshots, record blobs) are
// the read-write store; the snapshots containerd made and the images it
// imported are a read-only store, checked but never repaired (containerd
// removes them).

// The problems Check reports, with containers/storage's names and messages.
var (
	// ErrLayerUnaccounted: a snapshot the store began as a layer but never
	// finished (an incomplete layer whose writer is gone), which no layer
	// record accounts for.
	ErrLayerUnaccounted = errors.New("layer in lower level storage driver not accounted for")
	// ErrLayerUnreferenced: a layer no image or container uses.
	ErrLayerUnreferenced = errors.New("layer not referenced by any images or containers")
	// ErrLayerIncorrectContentDigest: the layer's diff no longer has the
	// digest recorded for it. A file whose content changed usually shows
	// as a "checksum failed" error of the reassembly instead.
	ErrLayerIncorrectContentDigest = errors.New("layer content incorrect digest")
	// ErrLayerIncorrectContentSize: the layer's diff no longer has the
	// size recorded for it.
	ErrLayerIncorrectContentSize = errors.New("layer content incorrect size")
	// ErrLayerContentModified: the mounted layer holds what its diffs do
	// not say, or owners, permissions or times changed.
	ErrLayerContentModified = errors.New("layer content modified")
	// ErrLayerDataMissing: a big data item's blob is gone.
	ErrLayerDataMissing = errors.New("layer data item is missing")
	// ErrLayerMissing: the missing parent of a layer. (A snapshot's parent
	// cannot go while it has children, so the store never reports it.)
	ErrLayerMissing = errors.New("layer is missing")
	// ErrImageLayerMissing: an image's top layer, or one beneath it, is gone.
	ErrImageLayerMissing = errors.New("image layer is missing")
	// ErrImageDataMissing: an image big data item's blob is gone.
	ErrImageDataMissing = errors.New("image data item is missing")
	// ErrImageDataIncorrectSize: an image big data item's blob is not the
	// size recorded for it.
	ErrImageDataIncorrectSize = errors.New("image data item has incorrect size")
	// ErrContainerImageMissing: a container's image is gone.
	ErrContainerImageMissing = errors.New("image missing")
	// ErrContainerDataMissing: a container big data item's blob is gone.
	ErrContainerDataMissing = errors.New("container data item is missing")
	// ErrContainerDataIncorrectSize: a container big data item's blob is
	// not the size recorded for it.
	ErrContainerDataIncorrectSize = errors.New("container data item has incorrect size")

	// cs-snapshotter's own: big data are content-addressed blobs here, so
	// what they hold is checked against the digest they are filed under.
	ErrLayerDataIncorrectDigest     = errors.New("layer data item has incorrect digest")
	ErrImageDataIncorrectDigest     = errors.New("image data item has incorrect digest")
	ErrContainerDataIncorrectDigest = errors.New("container data item has incorrect digest")
	// ErrLayerIncomplete: a layer that was left half-written (an ApplyDiff
	// whose writer went away); the next start of the root removes it too.
	ErrLayerIncomplete = errors.New("layer is incomplete")
)

const defaultMaximumUnreferencedLayerAge = 24 * time.Hour

// CheckOptions says which checks Check makes.
type CheckOptions struct {
	// LayerUnreferencedMaximumAge is how old a layer no image or container
	// uses may be before it is reported (24 hours when nil): a younger one
	// may be part of an image being put together. An incomplete layer is
	// reported once nothing has written to it for this long or 10
	// minutes, whichever is shorter.
	LayerUnreferencedMaximumAge *time.Duration
	// LayerDigests: each layer's diff is reassembled and must have the
	// digest and size recorded for it.
	LayerDigests bool
	// LayerMountable: each read-write layer must mount.
	LayerMountable bool
	// LayerContents: each mounted read-write layer must hold what its
	// diffs (and its parents') say, no more; requires LayerMountable and
	// LayerDigests.
	LayerContents bool
	// LayerData: each layer big data item must be present and readable.
	LayerData bool
	// ImageData: each image big data item must be present, readable and
	// of its recorded size.
	ImageData bool
	// ContainerData: each container big data item must be present,
	// readable and of its recorded size.
	ContainerData bool
}

// CheckMost returns CheckOptions with the quicker checks: all but
// LayerContents.
func CheckMost() *CheckOptions {
	return &CheckOptions{
		LayerDigests:   true,
		LayerMountable: true,
		LayerContents:  false,
		LayerData:      true,
		ImageData:      true,
		ContainerData:  true,
	}
}

// CheckEverything returns CheckOptions with every check.
func CheckEverything() *CheckOptions {
	return &CheckOptions{
		LayerDigests:   true,
		LayerMountable: true,
		LayerContents:  true,
		LayerData:      true,
		ImageData:      true,
		ContainerData:  true,
	}
}

// CheckReport lists the problems Check found, by ID.
type CheckReport struct {
	Layers                map[string][]error // damaged read-write layers
	ROLayers              map[string][]error // damaged read-only layers (containerd's snapshots)
	layerParentsByLayerID map[string]string
	layerOrder            map[string]int
	Images                map[string][]error // damaged read-write images (including those with damaged layers)
	ROImages              map[string][]error // damaged read-only images (containerd's; including those with damaged layers)
	Containers            map[string][]error // damaged containers (including those based on damaged images or on damaged layers)
}

// RepairOptions says what Repair may remove.
type RepairOptions struct {
	RemoveContainers bool // remove damaged containers
}

// RepairEverything returns RepairOptions allowing every remedy.
func RepairEverything() *RepairOptions {
	return &RepairOptions{RemoveContainers: true}
}

// checkIgnore lists the differences LayerContents overlooks.
type checkIgnore struct {
	ownership, timestamps, permissions bool
}

// Check reports what is wrong in the store as a whole. It reads every
// layer's diff (and mounts every layer), so it can take long, and others
// (containerd, other clients of the daemon) change the store meanwhile: a
// problem is reported only if a second look finds it still there. The
// containers a store opened through containerd made are left to it.
func (s *store) Check(options *CheckOptions) (CheckReport, error) {
	if options == nil {
		options = CheckMost()
	}
	var ignore checkIgnore
	for _, o := range s.opts.GraphDriverOptions {
		if strings.Contains(o, "ignore_chown_errors=true") {
			ignore.ownership = true
		}
		if strings.HasPrefix(strings.TrimPrefix(o, "overlay."), "force_mask=") {
			ignore.permissions = true
		}
	}
	maxAge := defaultMaximumUnreferencedLayerAge
	if options.LayerUnreferencedMaximumAge != nil {
		maxAge = *options.LayerUnreferencedMaximumAge
	}
	// An incomplete layer shows whether someone works on it (it is
	// written to), so it is abandoned sooner than an unreferenced layer.
	incompleteAge := min(maxAge, staleAfter)

	report := CheckReport{
		Layers:                map[string][]error{},
		ROLayers:              map[string][]error{},
		layerParentsByLayerID: map[string]string{},
		layerOrder:            map[string]int{},
		Images:                map[string][]error{},
		ROImages:              map[string][]error{},
		Containers:            map[string][]error{},
	}

	idx, err := s.load()
	if err != nil {
		return CheckReport{}, err
	}
	incomplete, err := s.incompleteSnapshots()
	if err != nil {
		return CheckReport{}, err
	}
	now := time.Now()

	// Layers. referenced tracks the read-write layers an image or a
	// container uses, referencedRO the read-only ones; a layer is in one
	// map or the other once seen.
	referenced := map[string]bool{}
	referencedRO := map[string]bool{}
	addLayer := func(r *layerRecord, err error) {
		if r.owned {
			report.Layers[r.ID] = append(report.Layers[r.ID], err)
		} else {
			report.ROLayers[r.ID] = append(report.ROLayers[r.ID], err)
		}
	}
	// A layer being filled by someone (its incomplete label set, and
	// written to lately) is left out of the checks: its diff and files are
	// not final. One abandoned is reported as incomplete.
	busy := map[string]bool{}
	for _, r := range idx.list {
		report.layerParentsByLayerID[r.ID] = r.Parent
		if r.owned {
			referenced[r.ID] = false
		} else {
			referencedRO[r.ID] = false
		}
		if r.labels[cslabels.Incomplete] != "" {
			busy[r.ID] = true
			info, ok := incomplete[r.key]
			if !ok { // marked since the walk: under way
				info = snapshots.Info{Created: now}
			}
			if last := s.lastWritten(info, r.ID); now.Sub(last) > incompleteAge {
				addLayer(r, fmt.Errorf("%slayer %s: last written %s: %w", roDesc(r), r.ID, last.UTC().Format(time.RFC3339), ErrLayerIncomplete))
			}
		}
	}
	// Each layer's diff headers, kept for LayerContents.
	headers := map[string][]*tar.Header{}
	for _, r := range idx.list {
		if busy[r.ID] {
			continue
		}
		if options.LayerData {
			for _, key := range r.BigDataNames {
				if err := s.checkBlob(digest.Digest(r.labels[cslabels.BigDataPrefix+key]), -1, ErrLayerDataMissing, nil, ErrLayerDataIncorrectDigest); err != nil {
					addLayer(r, fmt.Errorf("%slayer %s: data item %q: %w", roDesc(r), r.ID, key, err))
				}
			}
		}
		if options.LayerDigests && r.UncompressedDigest != "" {
			hdrs, errs := s.checkLayerDiff(r)
			for _, err := range errs {
				addLayer(r, fmt.Errorf("%slayer %s: %w", roDesc(r), r.ID, err))
			}
			if len(errs) == 0 {
				headers[r.ID] = hdrs
			}
		}
	}
	// Mounting and contents: read-write layers only, as containers/storage
	// checks them only in its read-write store.
	if options.LayerMountable {
		for _, r := range idx.list {
			if !r.owned || busy[r.ID] {
				continue
			}
			var want *checkDirectory
			if options.LayerDigests && options.LayerContents && r.UncompressedDigest != "" {
				want = expectedTree(r.ID, report.layerParentsByLayerID, headers)
			}
			for _, err := range s.checkLayerMount(r, want, ignore) {
				addLayer(r, err)
			}
		}
	}
	// Incomplete snapshots no layer accounts for: what PutLayer leaves if
	// its process dies. Written to lately, they are work under way.
	var unaccounted []snapshots.Info
	for key, info := range incomplete {
		if id, ok := strings.CutPrefix(key, incompletePrefix); ok {
			if last := s.lastWritten(info, id); now.Sub(last) > incompleteAge {
				unaccounted = append(unaccounted, info)
			}
		}
	}
	sort.Slice(unaccounted, func(i, j int) bool { return unaccounted[i].Created.Before(unaccounted[j].Created) })
	for i, info := range unaccounted {
		id := strings.TrimPrefix(info.Name, incompletePrefix)
		report.Layers[id] = append(report.Layers[id], fmt.Errorf("layer %s: incomplete since %s: %w", id, info.Created.UTC().Format(time.RFC3339), ErrLayerUnaccounted))
		report.layerOrder[id] = i + 1
	}

	// What Check found so far may be a change made since its listing
	// rather than damage: containerd imports and removes its images and
	// snapshots whenever it likes, and other clients of the daemon create
	// and delete. A problem is reported only if a second look finds it
	// still there.
	recheck := &checkNow{s: s}
	if err := recheck.dropVanishedLayers(&report, idx); err != nil {
		return CheckReport{}, err
	}

	// Images: their big data, and the layers beneath their top layer, whose
	// problems are the image's too.
	images, err := s.loadImages()
	if err != nil {
		return CheckReport{}, err
	}
	// The second look at images lists layers, then images, both after
	// the first look: a layer missing then whose image is still there
	// with the same top layer is missing for good, since containerd's
	// snapshot keys are never made twice and a layer goes only after
	// those above it.
	var imageRecheck *checkNow
	examined := map[string]bool{}
	for _, img := range images.list {
		id := img.ID
		if examined[id] {
			continue
		}
		examined[id] = true
		desc, reports := "", report.Images
		if img.ReadOnly {
			desc, reports = "read-only ", report.ROImages
		}
		var dataErrs []error
		if options.ImageData {
			dataErrs = s.checkImageData(img, desc)
		}
		// The chain: a layer not listed, or the problems of one that is.
		type link struct {
			missing string
			errs    []error
		}
		var chain []link
		seen := map[string]bool{}
		for layer := img.TopLayer; layer != "" && !seen[layer]; layer = report.layerParentsByLayerID[layer] {
			seen[layer] = true
			_, rw := referenced[layer]
			_, ro := referencedRO[layer]
			switch {
			case rw:
				referenced[layer] = true
			case ro:
				referencedRO[layer] = true
			default:
				chain = append(chain, link{missing: layer})
			}
			if errs := append(append([]error(nil), report.Layers[layer]...), report.ROLayers[layer]...); len(errs) > 0 {
				chain = append(chain, link{errs: errs})
			}
		}
		if len(dataErrs) == 0 && len(chain) == 0 {
			continue
		}
		// Still there? An image that went meanwhile has no problems; one
		// still there is asked again about its data, and a layer it
		// misses must still be missing.
		if imageRecheck == nil {
			imageRecheck = &checkNow{s: s}
			if _, err := imageRecheck.layerIndex(); err != nil {
				return CheckReport{}, err
			}
		}
		fresh, err := imageRecheck.image(id)
		if err != nil {
			return CheckReport{}, err
		}
		if fresh == nil || fresh.TopLayer != img.TopLayer {
			// Gone, or made again on other layers (containerd imported it
			// again): what was found is of an image no longer there.
			continue
		}
		if len(dataErrs) > 0 {
			dataErrs = s.checkImageData(fresh, desc)
			if fresh.ReadOnly {
				// containerd's images are listed only with all their
				// blobs there (ctrdImages), so one missing now went
				// after this image was listed: containerd is removing
				// it (or removed it and imported it again).
				dataErrs = withoutErr(dataErrs, ErrImageDataMissing)
			}
		}
		var errs []error
		errs = append(errs, dataErrs...)
		for _, l := range chain {
			if l.missing == "" {
				errs = append(errs, l.errs...)
				continue
			}
			there, err := imageRecheck.layerExists(l.missing)
			if err != nil {
				return CheckReport{}, err
			}
			if !there {
				errs = append(errs, fmt.Errorf("%simage %s: %w", desc, id, fmt.Errorf("layer %s: %w", l.missing, ErrImageLayerMissing)))
			}
		}
		if len(errs) > 0 {
			reports[id] = append(reports[id], errs...)
		}
	}

	// Containers: their big data, their image, and their own layer.
	if err := s.withImageIDs(idx.containers); err != nil {
		return CheckReport{}, err
	}
	for _, c := range idx.containers {
		id := c.ID
		if c.layer.owned {
			referenced[c.LayerID] = true
		} else {
			referencedRO[c.LayerID] = true
		}
		if madeElsewhere(c) {
			continue
		}
		var dataErrs []error
		if options.ContainerData {
			dataErrs = s.checkContainerData(c)
		}
		imageMissing := c.ImageID != "" && !examined[c.ImageID]
		var inherited []error
		if c.ImageID != "" {
			inherited = append(inherited, report.Images[c.ImageID]...)
			inherited = append(inherited, report.ROImages[c.ImageID]...)
		}
		// The container lives on its layer: a damaged one is the
		// container's damage too (containers/storage leaves this out, and
		// its Repair then fails on the layer).
		if c.layer.owned {
			inherited = append(inherited, report.Layers[c.LayerID]...)
		}
		if len(dataErrs) == 0 && !imageMissing && len(inherited) == 0 {
			continue
		}
		// Still there, and still this container? Its data is asked
		// again, and its image must still be missing.
		fresh, err := recheck.container(c)
		if err != nil {
			return CheckReport{}, err
		}
		if fresh == nil {
			continue
		}
		var errs []error
		if len(dataErrs) > 0 {
			errs = append(errs, s.checkContainerData(fresh)...)
		}
		if imageMissing {
			there, err := recheck.imageExists(c.ImageID)
			if err != nil {
				return CheckReport{}, err
			}
			if !there {
				errs = append(errs, fmt.Errorf("image %s: %w", c.ImageID, ErrContainerImageMissing))
			}
		}
		errs = append(errs, inherited...)
		if len(errs) > 0 {
			report.Containers[id] = append(report.Containers[id], errs...)
		}
	}

	// Read-write layers nothing uses, old enough not to be an image being
	// put together, and still unused when asked again.
	var unused []*layerRecord
	for _, r := range idx.list {
		if !r.owned || busy[r.ID] || referenced[r.ID] {
			continue
		}
		if r.Created.IsZero() || now.Sub(r.Created) > maxAge {
			unused = append(unused, r)
		}
	}
	if len(unused) > 0 {
		used, err := recheck.usedLayers()
		if err != nil {
			return CheckReport{}, err
		}
		for _, r := range unused {
			if _, ok := used[r.ID]; !ok || used[r.ID] {
				continue // gone, or used since
			}
			report.Layers[r.ID] = append(report.Layers[r.ID], fmt.Errorf("layer %s: %w", r.ID, ErrLayerUnreferenced))
		}
	}
	return report, nil
}

// checkImageData checks the big data items of image img.
func (s *store) checkImageData(img *imageRecord, desc string) []error {
	var errs []error
	for _, key := range img.BigDataNames {
		size, ok := img.BigDataSizes[key]
		if !ok {
			size = -1
		}
		if err := s.checkBlob(digest.Digest(img.labels[cslabels.ImageBigDataPrefix+key]), size, ErrImageDataMissing, ErrImageDataIncorrectSize, ErrImageDataIncorrectDigest); err != nil {
			errs = append(errs, fmt.Errorf("%simage %s: data item %q: %w", desc, img.ID, key, err))
		}
	}
	return errs
}

// checkContainerData checks the big data items of container c.
func (s *store) checkContainerData(c *containerRecord) []error {
	var errs []error
	for _, key := range c.BigDataNames {
		size, ok := c.BigDataSizes[key]
		if !ok {
			size = -1
		}
		if err := s.checkBlob(c.BigDataDigests[key], size, ErrContainerDataMissing, ErrContainerDataIncorrectSize, ErrContainerDataIncorrectDigest); err != nil {
			errs = append(errs, fmt.Errorf("container %s: data item %q: %w", c.ID, key, err))
		}
	}
	return errs
}

// madeElsewhere tells whether container c is one a store opened through
// containerd (StoreOptions.ContainerdAddress) made: its layer carries
// cslabels.Made, which containerd passes on to the daemon, but not the
// ownership label this store holds its own by. Its record and its image
// live in a containerd namespace, whose content labels containerd keeps to
// itself, so this store cannot see its image: it is that store's to check
// and repair, not this one's, as containers/storage reports damage only of
// what it owns. (Opened through containerd, the store sees Made as its own
// mark: such a container is owned there.)
func madeElsewhere(c *containerRecord) bool {
	return !c.layer.owned && c.layer.labels[cslabels.Made] != ""
}

// checkNow is Check's second look at the store, for the problems its first
// found: the snapshots and listings as they are now, each read when first
// needed and once.
type checkNow struct {
	s      *store
	layers *layerIndex
	images *imageIndex
}

func (n *checkNow) layerIndex() (*layerIndex, error) {
	if n.layers == nil {
		idx, err := n.s.load()
		if err != nil {
			return nil, err
		}
		n.layers = idx
	}
	return n.layers, nil
}

func (n *checkNow) imageIndex() (*imageIndex, error) {
	if n.images == nil {
		idx, err := n.s.loadImages()
		if err != nil {
			return nil, err
		}
		n.images = idx
	}
	return n.images, nil
}

// snapshot returns snapshot key as it is now; false if it is gone.
func (n *checkNow) snapshot(key string) (snapshots.Info, bool, error) {
	info, err := n.s.sn.Stat(n.s.ctx, key)
	if errdefs.IsNotFound(err) {
		return snapshots.Info{}, false, nil
	}
	if err != nil {
		return snapshots.Info{}, false, fmt.Errorf("snapshot %s: %w", key, err)
	}
	return info, true, nil
}

// layerExists tells whether a layer with ID id exists now.
func (n *checkNow) layerExists(id string) (bool, error) {
	idx, err := n.layerIndex()
	if err != nil {
		return false, err
	}
	_, ok := idx.byID[id]
	if !ok && n.s.roLayerExists != nil {
		// An image of the writable store on another image store's layer.
		return n.s.roLayerExists(id), nil
	}
	return ok, nil
}

// image returns the image with ID id as it is now; nil if there is none.
func (n *checkNow) image(id string) (*imageRecord, error) {
	idx, err := n.imageIndex()
	if err != nil {
		return nil, err
	}
	return idx.byID[id], nil
}

func (n *checkNow) imageExists(id string) (bool, error) {
	img, err := n.image(id)
	if err == nil && img == nil && n.s.roImageExists != nil {
		// A container on an image of a read-only image store.
		return n.s.roImageExists(id), nil
	}
	return img != nil, err
}

// container returns container c as it is now, read from its layer's
// snapshot; nil if the snapshot is gone or holds another container or
// none.
func (n *checkNow) container(c *containerRecord) (*containerRecord, error) {
	info, ok, err := n.snapshot(c.layer.key)
	if err != nil || !ok {
		return nil, err
	}
	now := containerFromLayer(recordFromInfo(info))
	if now == nil || now.ID != c.ID {
		return nil, nil
	}
	return now, nil
}

// dropVanishedLayers drops from report the layers whose snapshot has gone
// since it was listed (their problems were those of a layer being
// removed: a view that cannot be made, a tar-split already released, files
// going while they are read) and the incomplete-layer problems of layers
// finished since.
func (n *checkNow) dropVanishedLayers(report *CheckReport, idx *layerIndex) error {
	for _, m := range []map[string][]error{report.Layers, report.ROLayers} {
		for id, errs := range m {
			key := incompletePrefix + id
			if r, ok := idx.byID[id]; ok && !hasErr(errs, ErrLayerUnaccounted) {
				key = r.key
			}
			info, ok, err := n.snapshot(key)
			if err != nil {
				return err
			}
			if !ok {
				delete(m, id)
				delete(report.layerOrder, id)
				continue
			}
			if info.Labels[cslabels.Incomplete] != "" {
				continue
			}
			kept := withoutErr(errs, ErrLayerIncomplete)
			if len(kept) == 0 {
				delete(m, id)
			} else {
				m[id] = kept
			}
		}
	}
	return nil
}

// usedLayers returns every layer there is now, true for those an image's
// chain or a container uses.
func (n *checkNow) usedLayers() (map[string]bool, error) {
	layers, err := n.layerIndex()
	if err != nil {
		return nil, err
	}
	images, err := n.imageIndex()
	if err != nil {
		return nil, err
	}
	used := make(map[string]bool, len(layers.list))
	for _, r := range layers.list {
		used[r.ID] = false
	}
	for _, img := range images.list {
		for l := img.TopLayer; l != ""; {
			r, ok := layers.byID[l]
			if !ok || used[l] {
				break
			}
			used[l] = true
			l = r.Parent
		}
	}
	for _, c := range layers.containers {
		if _, ok := used[c.LayerID]; ok {
			used[c.LayerID] = true
		}
	}
	return used, nil
}

// withoutErr returns errs but those that are target.
func withoutErr(errs []error, target error) []error {
	var kept []error
	for _, err := range errs {
		if !errors.Is(err, target) {
			kept = append(kept, err)
		}
	}
	return kept
}

func hasErr(errs []error, target error) bool {
	for _, err := range errs {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

func roDesc(r *layerRecord) string {
	if r.owned {
		return ""
	}
	return "read-only "
}

// incompleteSnapshots returns the snapshots marked incomplete, by key: the
// active snapshots of PutLayer (cs.incomplete/<id>) and layers under
// ApplyDiff.
func (s *store) incompleteSnapshots() (map[string]snapshots.Info, error) {
	found := map[string]snapshots.Info{}
	err := s.sn.Walk(s.ctx, func(_ context.Context, info snapshots.Info) error {
		found[info.Name] = info
		return nil
	}, fmt.Sprintf("labels.%q", cslabels.Incomplete))
	if err != nil {
		return nil, fmt.Errorf("list incomplete layers: %w", err)
	}
	return found, nil
}

// lastWritten is when incomplete layer id (snapshot info) last showed
// signs of its writer: the snapshot's own times, and the ingests its
// tar-split or diff go to while it is filled.
func (s *store) lastWritten(info snapshots.Info, id string) time.Time {
	last := info.Created
	if info.Updated.After(last) {
		last = info.Updated
	}
	for _, ref := range []string{"cs.tar-split." + id, "cs.diff." + id} {
		if st, err := s.cs.Status(s.ctx, ref); err == nil && st.UpdatedAt.After(last) {
			last = st.UpdatedAt
		}
	}
	return last
}

// checkBlob reads blob dgst through and checks it is size bytes (unless
// size is negative) holding what dgst says. A missing blob is missing; a
// nil error for a kind of problem leaves that problem unchecked.
func (s *store) checkBlob(dgst digest.Digest, size int64, missing, wrongSize, wrongDigest error) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("blob %q: %w", dgst, err)
	}
	ra, err := s.blobReader(dgst)
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("blob %s: %w", dgst, missing)
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", dgst, err)
	}
	defer ra.Close()
	d := dgst.Algorithm().Digester()
	n, err := io.Copy(d.Hash(), content.NewReader(ra))
	if errdefs.IsNotFound(err) || errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("blob %s: %w", dgst, missing)
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", dgst, err)
	}
	if size >= 0 && n != size && wrongSize != nil {
		return fmt.Errorf("blob %s holds %d bytes, not %d: %w", dgst, n, size, wrongSize)
	}
	if d.Digest() != dgst && wrongDigest != nil {
		return fmt.Errorf("blob %s holds data with digest %s: %w", dgst, d.Digest(), wrongDigest)
	}
	return nil
}

// checkLayerDiff reassembles layer r's diff, checking its digest and size
// against the record, and returns its headers.
func (s *store) checkLayerDiff(r *layerRecord) ([]*tar.Header, []error) {
	if err := r.UncompressedDigest.Validate(); err != nil {
		return nil, []error{err}
	}
	rc, err := s.rawDiff(r)
	if err != nil {
		return nil, []error{err}
	}
	d := r.UncompressedDigest.Algorithm().Digester()
	counter := &countWriter{w: d.Hash()}
	in := io.TeeReader(rc, counter)
	var hdrs []*tar.Header
	tr := tar.NewReader(in)
	var archiveErr error
	for {
		h, err := tr.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				archiveErr = err
			}
			break
		}
		hdrs = append(hdrs, h)
	}
	if archiveErr == nil {
		// What follows the end-of-archive marker counts too.
		_, archiveErr = io.Copy(io.Discard, in)
	}
	rc.Close()
	if archiveErr != nil {
		return nil, []error{archiveErr}
	}
	var errs []error
	if d.Digest() != r.UncompressedDigest {
		errs = append(errs, ErrLayerIncorrectContentDigest)
	}
	if _, known := r.labels[cslabels.UncompressedSize]; known && counter.n != r.UncompressedSize {
		errs = append(errs, fmt.Errorf("read %d bytes instead of %d bytes: %w", counter.n, r.UncompressedSize, ErrLayerIncorrectContentSize))
	}
	return hdrs, errs
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// expectedTree is what layer id should show when mounted, from its diffs'
// headers and its parents'; nil when a diff in the chain is not known.
func expectedTree(id string, parents map[string]string, headers map[string][]*tar.Header) *checkDirectory {
	var chain [][]*tar.Header
	seen := map[string]bool{}
	for l := id; l != ""; l = parents[l] {
		h, ok := headers[l]
		if !ok || seen[l] {
			return nil
		}
		seen[l] = true
		chain = append([][]*tar.Header{h}, chain...)
	}
	tree := newCheckDirectoryDefaults()
	for _, h := range chain {
		tree.headers(h)
	}
	return tree
}

// checkLayerMount mounts read-write layer r read-only (or uses the store's
// mount of it) and, when want is given, compares what it shows with want.
func (s *store) checkLayerMount(r *layerRecord, want *checkDirectory, ignore checkIgnore) []error {
	fail := func(err error) []error { return []error{fmt.Errorf("layer %s: %w", r.ID, err)} }
	root := ""
	if r.MountCount > 0 && isMountPoint(r.MountPoint) {
		root = r.MountPoint
	} else {
		mounts, release, err := s.readOnlyMounts(r)
		if err != nil {
			return fail(err)
		}
		defer release()
		for _, dir := range mountDirs(mounts) {
			if _, err := os.Stat(dir); err != nil {
				return fail(fmt.Errorf("snapshot directory: %w", err))
			}
		}
		tmp, err := os.MkdirTemp(s.opts.RunRoot, ".check-")
		if err != nil {
			return fail(err)
		}
		defer os.Remove(tmp)
		if err := mount.All(mounts, tmp); err != nil {
			return fail(fmt.Errorf("mount: %w", err))
		}
		defer mount.UnmountAll(tmp, 0)
		root = tmp
	}
	if want == nil {
		return nil
	}
	got, err := newCheckDirectoryFromDirectory(root)
	if err != nil {
		return []error{fmt.Errorf("scanning contents of layer %s: %w", r.ID, err)}
	}
	var errs []error
	for _, d := range compareCheckDirectory(want, got, ignore) {
		errs = append(errs, fmt.Errorf("layer %s: %s, %w", r.ID, d, ErrLayerContentModified))
	}
	return errs
}

// readOnlyMounts returns mounts showing layer r read-only: a view of a
// committed layer, the snapshot's own mounts made read-only for a
// writeable one (mounting its upper directory read-write twice would not
// do).
func (s *store) readOnlyMounts(r *layerRecord) ([]mount.Mount, func(), error) {
	if !r.writeable {
		key := viewPrefix + newID()
		m, err := s.sn.View(s.ctx, key, r.key, snapshots.WithLabels(map[string]string{cslabels.Owned: "store"}))
		if err != nil {
			return nil, nil, mapErr(fmt.Errorf("view layer %s: %w", r.ID, err))
		}
		return m, func() { s.deleteSnapshot(key) }, nil
	}
	m, err := s.sn.Mounts(s.ctx, r.key)
	if err != nil {
		return nil, nil, mapErr(err)
	}
	out := make([]mount.Mount, 0, len(m))
	for _, mm := range m {
		out = append(out, readOnlyMount(mm))
	}
	return out, func() {}, nil
}

func readOnlyMount(m mount.Mount) mount.Mount {
	var opts []string
	switch m.Type {
	case "bind", "rbind":
		for _, o := range m.Options {
			if o != "rw" && o != "ro" {
				opts = append(opts, o)
			}
		}
		m.Options = append(opts, "ro")
	case "overlay":
		upper := ""
		var lowers []string
		for _, o := range m.Options {
			switch {
			case strings.HasPrefix(o, "upperdir="):
				upper = strings.TrimPrefix(o, "upperdir=")
			case strings.HasPrefix(o, "lowerdir="):
				lowers = strings.Split(strings.TrimPrefix(o, "lowerdir="), ":")
			case strings.HasPrefix(o, "workdir="), o == "volatile", o == "rw":
			default:
				opts = append(opts, o)
			}
		}
		if upper == "" {
			return m
		}
		m.Options = append(opts, "lowerdir="+strings.Join(append([]string{upper}, lowers...), ":"))
	}
	return m
}

// mountDirs lists the directories mounts show.
func mountDirs(mounts []mount.Mount) []string {
	var dirs []string
	for _, m := range mounts {
		switch m.Type {
		case "bind", "rbind":
			dirs = append(dirs, m.Source)
		case "overlay":
			for _, o := range m.Options {
				if v, ok := strings.CutPrefix(o, "upperdir="); ok {
					dirs = append(dirs, v)
				} else if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
					dirs = append(dirs, strings.Split(v, ":")...)
				}
			}
		}
	}
	return dirs
}

// Repair removes what report says is damaged, as containers/storage does:
// the damaged containers (with RemoveContainers), then the damaged images
// with the layers only they used, then the remaining damaged layers,
// children first. Read-only layers and images are containerd's and are
// left alone. A damaged layer that is a container's layer is left to the
// container when RemoveContainers is not set. It returns the errors of
// the removals that failed.
func (s *store) Repair(report CheckReport, options *RepairOptions) []error {
	if options == nil {
		options = RepairEverything()
	}
	var errs []error
	if options.RemoveContainers {
		for _, id := range sortedKeys(report.Containers) {
			if err := s.DeleteContainer(id); err != nil && !errors.Is(err, ErrContainerUnknown) && !errors.Is(err, ErrNotAContainer) {
				errs = append(errs, fmt.Errorf("deleting container %s: %w", id, err))
			}
		}
	}
	deleted := map[string]bool{}
	for _, id := range sortedKeys(report.Images) {
		layers, err := s.DeleteImage(id, true)
		if err != nil {
			if !errors.Is(err, ErrImageUnknown) && !errors.Is(err, ErrNotAnImage) && !errors.Is(err, ErrLayerUnknown) {
				errs = append(errs, fmt.Errorf("deleting image %s: %w", id, err))
			}
			continue
		}
		for _, l := range layers {
			deleted[l] = true
		}
	}
	containerLayers := map[string]bool{}
	if !options.RemoveContainers && len(report.Containers) > 0 {
		if idx, err := s.load(); err == nil {
			for _, c := range idx.containers {
				if _, damaged := report.Containers[c.ID]; damaged {
					containerLayers[c.LayerID] = true
				}
			}
		}
	}

	layers := sortedKeys(report.Layers)
	depth := func(id string) int {
		d := 0
		seen := map[string]bool{}
		for p := report.layerParentsByLayerID[id]; p != "" && !seen[p]; p = report.layerParentsByLayerID[p] {
			seen[p] = true
			d++
		}
		return d
	}
	unaccounted := func(id string) bool {
		for _, err := range report.Layers[id] {
			if errors.Is(err, ErrLayerUnaccounted) {
				return true
			}
		}
		return false
	}
	sort.SliceStable(layers, func(i, j int) bool {
		ui, uj := unaccounted(layers[i]), unaccounted(layers[j])
		oi, oj := report.layerOrder[layers[i]], report.layerOrder[layers[j]]
		switch {
		case ui && uj && oi != 0 && oj != 0:
			return oi < oj
		case ui && !uj:
			return false // the ones the store knows go first
		case !ui && uj:
			return true
		}
		return depth(layers[i]) > depth(layers[j]) // children before their parents
	})
	for _, id := range layers {
		if deleted[id] || containerLayers[id] {
			continue
		}
		var err error
		if unaccounted(id) {
			if err = s.deleteSnapshot(incompletePrefix + id); err != nil {
				err = fmt.Errorf("deleting storage layer %s: %w", id, err)
			}
		} else {
			s.Unmount(id, true)
			if err = s.DeleteLayer(id); err != nil {
				err = fmt.Errorf("deleting layer %s: %w", id, err)
			}
		}
		if err != nil && !errors.Is(err, ErrLayerUnknown) && !errors.Is(err, ErrNotALayer) && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errs
}

func sortedKeys(m map[string][]error) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// LayerParentOwners returns the owners of the directories above the
// layer's mount point that its ID mappings cannot map. The store has no ID
// mappings, so there are none, as containers/storage answers for a layer
// without mappings.
func (s *store) LayerParentOwners(id string) ([]int, []int, error) {
	idx, err := s.load()
	if err != nil {
		return nil, nil, err
	}
	if _, ok := idx.lookup(id); !ok {
		return nil, nil, ErrLayerUnknown
	}
	return nil, nil, nil
}

// ContainerParentOwners is LayerParentOwners for the container's layer.
// The container may be named by ID, name, ID prefix or its layer's ID, as
// containers/storage looks containers up.
func (s *store) ContainerParentOwners(id string) ([]int, []int, error) {
	idx, err := s.load()
	if err != nil {
		return nil, nil, err
	}
	if _, ok := idx.lookupContainer(id); ok {
		return nil, nil, nil
	}
	if r, ok := idx.byID[id]; ok && idx.containerOn(r) != nil {
		return nil, nil, nil
	}
	return nil, nil, ErrContainerUnknown
}

// What LayerContents compares: each path's type, owner, size, permissions
// and modification time (whole seconds), as containers/storage compares
// them.

type checkFileInfo struct {
	typeflag byte
	uid, gid int
	size     int64
	mode     os.FileMode
	mtime    int64
}

// checkDirectory is a directory of the tree, the root included.
type checkDirectory struct {
	directory map[string]*checkDirectory
	file      map[string]checkFileInfo
	checkFileInfo
}

func newCheckDirectory(uid, gid int, size int64, mode os.FileMode, mtime int64) *checkDirectory {
	return &checkDirectory{
		directory:     map[string]*checkDirectory{},
		file:          map[string]checkFileInfo{},
		checkFileInfo: checkFileInfo{typeflag: tar.TypeDir, uid: uid, gid: gid, size: size, mode: mode, mtime: mtime},
	}
}

func newCheckDirectoryDefaults() *checkDirectory {
	return newCheckDirectory(0, 0, 0, 0o555, time.Now().Unix())
}

// newCheckDirectoryFromDirectory records the tree under dir.
func newCheckDirectoryFromDirectory(dir string) (*checkDirectory, error) {
	cd := newCheckDirectoryDefaults()
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if info == nil {
			return nil // gone meanwhile
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		cd.header(hdr)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cd, nil
}

// add records an item at p.
func (c *checkDirectory) add(p string, typeflag byte, uid, gid int, size int64, mode os.FileMode, mtime int64) {
	parts := strings.Split(p, "/")
	if parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	if len(parts) > 0 && parts[0] == "." {
		parts = parts[1:]
	}
	if typeflag != tar.TypeReg {
		size = 0
	}
	info := checkFileInfo{typeflag: typeflag, uid: uid, gid: gid, size: size, mode: mode, mtime: mtime}
	switch len(parts) {
	case 0:
		c.uid, c.gid, c.mode, c.mtime = uid, gid, mode, mtime
		return
	case 1:
		switch typeflag {
		case tar.TypeDir:
			delete(c.file, parts[0])
			// A directory entry updates the directory, keeping what is in it.
			if d, ok := c.directory[parts[0]]; ok {
				d.checkFileInfo = info
			} else {
				c.directory[parts[0]] = newCheckDirectory(uid, gid, size, mode, mtime)
			}
		case tar.TypeXGlobalHeader:
			// Not a file.
		default:
			delete(c.directory, parts[0])
			c.file[parts[0]] = info
		}
		return
	}
	sub := c.directory[parts[0]]
	if sub == nil {
		sub = newCheckDirectory(uid, gid, size, mode, mtime)
		c.directory[parts[0]] = sub
	}
	sub.add(strings.Join(parts[1:], "/"), typeflag, uid, gid, size, mode, mtime)
}

// remove forgets p and what is under it.
func (c *checkDirectory) remove(p string) {
	parts := strings.Split(p, "/")
	if len(parts) == 1 {
		delete(c.directory, parts[0])
		delete(c.file, parts[0])
		return
	}
	if sub := c.directory[parts[0]]; sub != nil {
		sub.remove(strings.Join(parts[1:], "/"))
	}
}

const (
	whiteoutPrefix    = ".wh."
	whiteoutOpaqueDir = ".wh..wh..opq"
)

// header applies one diff entry: whiteouts remove, an opaque directory
// marker empties its directory, hard links take their target's attributes.
func (c *checkDirectory) header(hdr *tar.Header) {
	name := path.Clean(hdr.Name)
	dir, base := path.Split(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		if base == whiteoutOpaqueDir {
			c.remove(path.Clean(dir))
			c.add(path.Clean(dir), tar.TypeDir, hdr.Uid, hdr.Gid, hdr.Size, os.FileMode(hdr.Mode), hdr.ModTime.Unix())
		} else {
			c.remove(path.Join(dir, base[len(whiteoutPrefix):]))
		}
		return
	}
	typeflag, uid, gid, size, mode, mtime := hdr.Typeflag, hdr.Uid, hdr.Gid, hdr.Size, os.FileMode(hdr.Mode), hdr.ModTime.Unix()
	if hdr.Typeflag == tar.TypeLink {
		// The link name is relative to the archive's root.
		d := c
		for _, part := range strings.Split(path.Clean(hdr.Linkname), "/") {
			if part == "." || part == ".." {
				continue
			}
			if sub, ok := d.directory[part]; ok {
				d = sub
				continue
			}
			if f, ok := d.file[part]; ok {
				typeflag, uid, gid, size, mode, mtime = f.typeflag, f.uid, f.gid, f.size, f.mode, f.mtime
			}
			break
		}
	}
	c.add(name, typeflag, uid, gid, size, mode, mtime)
}

// headers applies a layer's entries: whiteouts before what else their
// directory gets, hard links after everything else.
func (c *checkDirectory) headers(hdrs []*tar.Header) {
	hdrs = append([]*tar.Header(nil), hdrs...)
	sort.SliceStable(hdrs, func(i, j int) bool {
		li, lj := hdrs[i].Typeflag == tar.TypeLink, hdrs[j].Typeflag == tar.TypeLink
		if li != lj {
			return lj
		}
		idir, ifile := path.Split(hdrs[i].Name)
		jdir, jfile := path.Split(hdrs[j].Name)
		if idir != jdir {
			return hdrs[i].Name < hdrs[j].Name
		}
		if ifile == whiteoutOpaqueDir {
			return true
		}
		return strings.HasPrefix(ifile, whiteoutPrefix) && !strings.HasPrefix(jfile, whiteoutPrefix)
	})
	for _, h := range hdrs {
		c.header(h)
	}
}

// compareFileInfo describes how b differs from a, "" if it does not.
func compareFileInfo(a, b checkFileInfo, ignore checkIgnore) string {
	var diffs []string
	if a.typeflag != b.typeflag {
		diffs = append(diffs, fmt.Sprintf("filetype:%v￫%v", a.typeflag, b.typeflag))
	}
	if a.uid != b.uid && !ignore.ownership {
		diffs = append(diffs, fmt.Sprintf("uid:%d￫%d", a.uid, b.uid))
	}
	if a.gid != b.gid && !ignore.ownership {
		diffs = append(diffs, fmt.Sprintf("gid:%d￫%d", a.gid, b.gid))
	}
	if a.size != b.size {
		diffs = append(diffs, fmt.Sprintf("size:%d￫%d", a.size, b.size))
	}
	// A symlink's permissions are always 0777 on Linux, whatever its tar
	// entry says.
	symlink := a.typeflag == tar.TypeSymlink && b.typeflag == tar.TypeSymlink
	if (os.ModeType|os.ModePerm)&a.mode != (os.ModeType|os.ModePerm)&b.mode && !ignore.permissions && !symlink {
		diffs = append(diffs, fmt.Sprintf("mode:%04o￫%04o", a.mode, b.mode))
	}
	if a.mtime != b.mtime && !ignore.timestamps {
		diffs = append(diffs, fmt.Sprintf("mtime:0x%x￫0x%x", a.mtime, b.mtime))
	}
	return strings.Join(diffs, ",")
}

func compareCheckSubdirectory(p string, a, b *checkDirectory, ignore checkIgnore) []string {
	var diffs []string
	if a == nil {
		a = newCheckDirectoryDefaults()
	}
	if b == nil {
		b = newCheckDirectoryDefaults()
	}
	for name, adir := range a.directory {
		if bdir, ok := b.directory[name]; !ok {
			diffs = append(diffs, "-"+p+"/"+name+"/")
			diffs = append(diffs, compareCheckSubdirectory(p+"/"+name, adir, nil, ignore)...)
		} else {
			if attrs := compareFileInfo(adir.checkFileInfo, bdir.checkFileInfo, ignore); attrs != "" {
				diffs = append(diffs, p+"/"+name+"("+attrs+")")
			}
			diffs = append(diffs, compareCheckSubdirectory(p+"/"+name, adir, bdir, ignore)...)
		}
	}
	for name, bdir := range b.directory {
		if _, ok := a.directory[name]; !ok {
			diffs = append(diffs, "+"+p+"/"+name+"/")
			diffs = append(diffs, compareCheckSubdirectory(p+"/"+name, nil, bdir, ignore)...)
		}
	}
	for name, afile := range a.file {
		if bfile, ok := b.file[name]; !ok {
			diffs = append(diffs, "-"+p+"/"+name)
		} else if attrs := compareFileInfo(afile, bfile, ignore); attrs != "" {
			diffs = append(diffs, p+"/"+name+"("+attrs+")")
		}
	}
	for name := range b.file {
		if _, ok := a.file[name]; !ok {
			diffs = append(diffs, "+"+p+"/"+name)
		}
	}
	return diffs
}

// compareCheckDirectory lists how tree b differs from tree a, sorted.
func compareCheckDirectory(a, b *checkDirectory, ignore checkIgnore) []string {
	diffs := compareCheckSubdirectory("", a, b, ignore)
	sort.Slice(diffs, func(i, j int) bool {
		if c := strings.Compare(strings.TrimLeft(diffs[i], "+-"), strings.TrimLeft(diffs[j], "+-")); c != 0 {
			return c < 0
		}
		return diffs[i] < diffs[j]
	})
	return diffs
}

// staleAfter is how long an incomplete layer must have gone unwritten, or
// one of the store's short-lived views must have lived, before
// GarbageCollect takes it for the remains of a process that died rather
// than work under way in another one (through the daemon, other processes
// use the store at the same time).
var staleAfter = 10 * time.Minute

// GarbageCollect removes what nothing references any more: the
// directories of containers that are gone, layers left incomplete by a
// process that died, views and mount snapshots whose reader or mount is
// gone (and mount counts of mounts that are gone), blobs whose every
// reference (cs.ref.* label) names a layer, image or container that no
// longer uses them, and the store's own ingests nobody writes any more. It
// goes on after an error and returns them all.
func (s *store) GarbageCollect() error {
	return errors.Join(
		s.gcContainerDirs(),
		s.gcIncomplete(),
		s.gcViews(),
		s.gcBlobs(),
		// Last, so gcIncomplete judges a layer's writer by its ingests as
		// it always does.
		s.gcIngests(),
	)
}

// gcIngests aborts the ingests the store and the daemon write for
// themselves (refs beginning with contentstore.OwnRefPrefix: tar-splits,
// diffs, big data, image records) that nobody writes any more: what a
// client killed while it wrote leaves. containerd's garbage collector never
// sees them (the daemon leaves them out of its listings), and the daemon
// aborts them only when it starts.
//
// Whether an ingest is still written is asked of the ingest, not guessed
// from its age. An ingest has one writer at a time, so opening a writer on
// it fails (Unavailable) while its writer lives: in the daemon, a remote
// client's writer lasts as long as its connection, however long the client
// stalls between writes, so no age would be safe (an in-progress write of a
// live client idle for longer would be aborted), and none is needed. An
// ingest whose writer opens is nobody's: none of the store's or the
// daemon's writers resumes an ingest (each starts its ref afresh), so what
// it holds would never be used; it is aborted while that writer holds it,
// so no other can start on it in between, and a writer that asks for the
// ref meanwhile (content.OpenWriter waits for a busy ref) then starts it
// afresh. Opening the writer reads the ingest's data through once (to
// digest it, as a resumed ingest is): the price of a leftover, paid once.
func (s *store) gcIngests() error {
	statuses, err := s.cs.ListStatuses(s.ctx, contentstore.OwnIngests)
	if err != nil {
		return fmt.Errorf("list ingests: %w", err)
	}
	var errs []error
	for _, st := range statuses {
		if !strings.HasPrefix(st.Ref, contentstore.OwnRefPrefix) {
			continue // a store that lists what it was not asked for
		}
		w, err := s.cs.Writer(s.ctx, content.WithRef(st.Ref))
		if errdefs.IsUnavailable(err) {
			continue // being written
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("ingest %s: %w", st.Ref, err))
			continue
		}
		err = s.cs.Abort(s.ctx, st.Ref)
		w.Close() // of an ingest that is gone: nothing to keep
		if err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("abort ingest %s: %w", st.Ref, err))
		}
	}
	return errors.Join(errs...)
}

// isContainerDirName tells whether name looks like the directory of a
// container, as containers/storage's garbage collection asks: 64 hex
// digits.
func isContainerDirName(name string) bool {
	if len(name) != 64 {
		return false
	}
	for _, c := range name {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// gcContainerDirs removes the container and run directories of containers
// that no longer exist. The directories are listed before the containers,
// so one made for a container created meanwhile is not taken.
func (s *store) gcContainerDirs() error {
	var dirs []string
	var errs []error
	for _, root := range []string{s.opts.GraphRoot, s.opts.RunRoot} {
		parent := s.containerDir(root, "")
		entries, err := os.ReadDir(parent)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			if e.IsDir() && isContainerDirName(e.Name()) {
				dirs = append(dirs, filepath.Join(parent, e.Name()))
			}
		}
	}
	if len(dirs) == 0 {
		return errors.Join(errs...)
	}
	idx, err := s.load()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, d := range dirs {
		if _, ok := idx.ctrByID[filepath.Base(d)]; !ok {
			errs = append(errs, os.RemoveAll(d))
		}
	}
	return errors.Join(errs...)
}

// gcIncomplete removes incomplete layers nothing has written to for
// staleAfter: a PutLayer's active snapshot, and a layer whose ApplyDiff
// stopped half-way when nothing references it (one that is an image's,
// a container's or a parent is left to Check and Repair).
func (s *store) gcIncomplete() error {
	incomplete, err := s.incompleteSnapshots()
	if err != nil {
		return err
	}
	var errs []error
	now := time.Now()
	for key, info := range incomplete {
		id := strings.TrimPrefix(strings.TrimPrefix(key, incompletePrefix), rwPrefix)
		if now.Sub(s.lastWritten(info, id)) <= staleAfter {
			continue
		}
		if strings.HasPrefix(key, incompletePrefix) {
			if err := s.deleteSnapshot(key); err != nil && !errdefs.IsFailedPrecondition(err) {
				errs = append(errs, fmt.Errorf("incomplete layer %s: %w", id, err))
			}
			continue
		}
		if info.Labels[cslabels.Owned] == "" {
			continue // not the store's
		}
		err := s.DeleteLayer(id)
		if err != nil && !errors.Is(err, ErrLayerHasChildren) && !errors.Is(err, ErrLayerUsedByImage) &&
			!errors.Is(err, ErrLayerUsedByContainer) && !errors.Is(err, ErrNotALayer) {
			errs = append(errs, fmt.Errorf("incomplete layer %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// gcViews removes the store's views (cs.view/) older than staleAfter, the
// snapshots behind mounts (cs.mount/) whose mount is gone, and the counts
// of mounts that are gone. It holds the mount counts' lock, so no Mount or
// Unmount runs meanwhile.
func (s *store) gcViews() error {
	unlock, err := s.lockMounts()
	if err != nil {
		return err
	}
	defer unlock()
	counts, err := s.readMounts()
	if err != nil {
		return err
	}
	var errs []error
	changed := false
	for id, e := range counts {
		if !isMountPoint(e.Path) {
			delete(counts, id)
			os.Remove(e.Path) // empty unless something else is there
			changed = true
		}
	}
	if changed {
		if err := s.writeMounts(counts); err != nil {
			errs = append(errs, err)
		}
	}
	var stale []string
	now := time.Now()
	err = s.sn.Walk(s.ctx, func(_ context.Context, info snapshots.Info) error {
		switch {
		case strings.HasPrefix(info.Name, viewPrefix):
			if now.Sub(info.Created) > staleAfter {
				stale = append(stale, info.Name)
			}
		case strings.HasPrefix(info.Name, mountPrefix):
			if _, mounted := counts[strings.TrimPrefix(info.Name, mountPrefix)]; !mounted {
				stale = append(stale, info.Name)
			}
		}
		return nil
	})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list views: %w", err))...)
	}
	for _, key := range stale {
		if err := s.deleteSnapshot(key); err != nil {
			errs = append(errs, fmt.Errorf("remove view %s: %w", key, err))
		}
	}
	return errors.Join(errs...)
}

// gcBlobs drops the references (cs.ref.* labels) that no layer, image or
// container holds any more, deleting each blob left with none. A blob
// written or relabelled within staleAfter is left alone: its owner may be
// about to record it (a layer's tar-split is stored before the layer is
// committed, an image's big data before its record). References the store
// does not know the form of, and the daemon's own (cs.ref.snapshot.*),
// are kept.
func (s *store) gcBlobs() error {
	now := time.Now()
	var candidates []content.Info
	live := map[string]bool{} // reference + "@" + blob digest
	held := func(ref, blob string) {
		if blob != "" {
			live[ref+"@"+blob] = true
		}
	}
	// Blobs first, then the records: a blob seen here was stored before
	// the records are read.
	err := s.cs.Walk(s.ctx, func(info content.Info) error {
		if info.Labels[cslabels.ImageMarker] != "" {
			// An image record, as loadImages finds them.
			id := info.Labels[cslabels.ImageID]
			if id == "" {
				doc, err := s.readImageDoc(info)
				if err != nil {
					return nil // deleted since, or unreadable: no image
				}
				id = doc.ID
			}
			held(cslabels.ImageRef(id, "record"), info.Digest.String())
			for k, v := range info.Labels {
				if key, ok := strings.CutPrefix(k, cslabels.ImageBigDataPrefix); ok {
					held(cslabels.ImageRef(id, bigDataUse(key)), v)
				}
			}
		}
		updated := info.UpdatedAt
		if info.CreatedAt.After(updated) {
			updated = info.CreatedAt
		}
		if now.Sub(updated) <= staleAfter {
			return nil
		}
		for k := range info.Labels {
			if knownRef(k) {
				candidates = append(candidates, info)
				break
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list blobs: %w", err)
	}
	if len(candidates) == 0 {
		return nil
	}
	idx, err := s.load()
	if err != nil {
		return err
	}
	for _, r := range idx.list {
		held(cslabels.BlobRefPrefix+r.ID+".tar-split", r.labels[cslabels.TarSplit])
		held(cslabels.BlobRefPrefix+r.ID+".diff", r.labels[cslabels.DiffBlob])
		for _, key := range r.BigDataNames {
			held(cslabels.BlobRefPrefix+r.ID+"."+bigDataRef(r.ID, key), r.labels[cslabels.BigDataPrefix+key])
		}
	}
	for _, c := range idx.containers {
		for _, key := range c.BigDataNames {
			held(cslabels.BlobRefPrefix+containerRefID(c.ID)+"."+bigDataUse(key), c.layer.labels[cslabels.ContainerBigDataPrefix+key])
		}
	}
	// A layer being filled holds its tar-split or diff before it is a
	// layer.
	filling := map[string]bool{}
	err = s.sn.Walk(s.ctx, func(_ context.Context, info snapshots.Info) error {
		if id, ok := strings.CutPrefix(info.Name, incompletePrefix); ok {
			filling[cslabels.BlobRefPrefix+id+".tar-split"] = true
			filling[cslabels.BlobRefPrefix+id+".diff"] = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list layers: %w", err)
	}
	var errs []error
	for _, info := range candidates {
		for k := range info.Labels {
			if !knownRef(k) || live[k+"@"+info.Digest.String()] || filling[k] {
				continue
			}
			if err := contentstore.Release(s.ctx, s.cs, info.Digest, k); err != nil {
				errs = append(errs, fmt.Errorf("release %s of blob %s: %w", k, info.Digest, err))
			}
		}
	}
	return errors.Join(errs...)
}

// knownRef tells whether label k is a reference of the store's in a form
// GarbageCollect knows: <layer>.tar-split, <layer>.diff,
// <layer>.bigdata/<key>, image.<id>.record, image.<id>.bigdata/<key>,
// container.<id>.bigdata/<key>. The daemon's references for containerd's
// snapshots (snapshot.<n>.tar-split) are the daemon's to release.
func knownRef(k string) bool {
	rest, ok := strings.CutPrefix(k, cslabels.BlobRefPrefix)
	if !ok || strings.HasPrefix(rest, "snapshot.") {
		return false
	}
	return strings.HasSuffix(rest, ".tar-split") || strings.HasSuffix(rest, ".diff") ||
		strings.HasSuffix(rest, ".record") || strings.Contains(rest, ".bigdata/")
}
