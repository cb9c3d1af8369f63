// Package cslabels names the labels through which cs-snapshotter's store
// face keeps its records on containerd's snapshots and blobs. Every key is
// documented in docs/labels.md.
//
// Snapshot label keys begin with "containerd.io/snapshot/": containerd
// forwards only those to a proxy snapshotter, and the daemon must see the
// ones it enforces (names, ownership) whichever way a snapshot was made.
package cslabels

import (
	"fmt"
	"strings"
)

// Prefix begins every snapshot label the store owns.
const Prefix = "containerd.io/snapshot/cs."

// Kind is a kind of named item; names are unique per kind.
type Kind string

// The kinds that live on snapshots.
const (
	Layer     Kind = "layer"
	Container Kind = "container"
)

// Kinds lists the snapshot kinds with names.
var Kinds = []Kind{Layer, Container, ContainerIDKind}

// NamePrefix begins the label keys holding the names of kind: one label per
// name, the name after the prefix, the value its position among the item's
// names (so the order callers gave survives).
func NamePrefix(k Kind) string {
	return Prefix + string(k) + "-name."
}

// NameKey is the label key recording name as a name of kind k.
func NameKey(k Kind, name string) string {
	return NamePrefix(k) + name
}

// ParseName tells whether key records a name, and of which kind.
func ParseName(key string) (Kind, string, bool) {
	if !strings.HasPrefix(key, Prefix) {
		return "", "", false
	}
	for _, k := range Kinds {
		if name, ok := strings.CutPrefix(key, NamePrefix(k)); ok && name != "" {
			return k, name, true
		}
	}
	return "", "", false
}

// Names returns the names of each kind recorded in labels.
func Names(labels map[string]string) map[Kind][]string {
	var names map[Kind][]string
	for key := range labels {
		if k, name, ok := ParseName(key); ok {
			if names == nil {
				names = map[Kind][]string{}
			}
			names[k] = append(names[k], name)
		}
	}
	return names
}

// Owned marks a snapshot the store holds: the daemon lists it and lets it
// be removed only on the store's calls (snapshotter.WithStoreCaller), so
// containerd's garbage collector, which removes backend snapshots it did
// not make, never sees it; any other Remove is refused (FailedPrecondition).
const Owned = Prefix + "owned"

// Made marks a snapshot the store made through containerd (the store
// opened on containerd's socket): there containerd's gc.root label, not
// Owned, keeps it, and Made says it is a layer of the store (its key is its
// ID) rather than one of containerd's own.
const Made = Prefix + "made"

// OwnedError is the message of a refused Remove.
func OwnedError(key string) string {
	return fmt.Sprintf("snapshot %q is held by the cs store (label %s); delete it through the store", key, Owned)
}

// Layer record labels, on the committed snapshot of a layer the store made.
const (
	Metadata           = Prefix + "metadata"
	MountLabel         = Prefix + "mount-label"
	CompressedDigest   = Prefix + "compressed-digest"
	CompressedSize     = Prefix + "compressed-size"
	UncompressedDigest = Prefix + "uncompressed-digest"
	UncompressedSize   = Prefix + "uncompressed-size"
	Compression        = Prefix + "compression"
	UIDs               = Prefix + "uidset"
	GIDs               = Prefix + "gidset"
	Flags              = Prefix + "flags"
	// TarSplit is the digest of the blob holding the layer's tar-split,
	// set only when it reproduces the applied tar byte for byte.
	TarSplit = Prefix + "tar-split"
	// DiffBlob is the digest of the blob holding the diff as it was
	// applied, kept instead of a tar-split when the applied files cannot
	// reproduce it (sparse files, whiteouts with content).
	DiffBlob = Prefix + "diff-blob"
	// BigDataPrefix + key is the digest of the blob holding big data item key.
	BigDataPrefix = Prefix + "bigdata."
	// Incomplete marks the active snapshot of a layer still being filled;
	// one found when the root is opened is the remains of a crash and goes.
	Incomplete = Prefix + "incomplete"
)

// Blob labels (the content store's labels, which only the store and the
// daemon see; containerd passes none to a proxy content store).
const (
	// BlobRefPrefix + layer ID marks a blob a layer of the store uses; the
	// daemon keeps a blob with any such label when asked to Delete it, so
	// containerd's garbage collector does not take it.
	BlobRefPrefix = "cs.ref."
	// CommitAddRefs, among the labels of a content Commit (any value),
	// asks the daemon to add the commit's BlobRefPrefix labels to the
	// blob if it exists already, under the blob's lock, and to answer
	// success then instead of AlreadyExists: a Delete or Release of the
	// blob cannot come between finding it there and the reference.
	// The daemon never stores it. contentstore.CommitReferenced sets it.
	CommitAddRefs = "cs.commit.add-refs"
)

// Image record labels: content labels on an image's record blob (a small
// immutable JSON document {"id","created","top-layer"}), holding the image's
// mutable fields. Content labels need no "containerd.io/snapshot/" prefix:
// containerd passes no labels to a proxy content store, and the store talks
// to the daemon directly.
const (
	// ImageMarker ("1") marks a blob as an image record of the store;
	// the value is the record format's version.
	ImageMarker = "cs.image"
	// ImageID is the image's ID. Enforced: the daemon claims it in the
	// transaction that writes the labels, so an ID belongs to one record.
	ImageID = "cs.image-id"
	// ImageNamePrefix + name records a name of the image; the value is
	// its position among the names. Enforced like ImageID: a name belongs
	// to one image.
	ImageNamePrefix = "cs.image-name."
	// ImageDoc is a copy of the record blob's document, so listing the
	// images needs no blob reads. The blob stays the authority.
	ImageDoc = "cs.image-doc"
	// ImageMetadata is the image's metadata string.
	ImageMetadata = "cs.metadata"
	// ImageDigest is the image's Digest.
	ImageDigest = "cs.image-digest"
	// ImageDigests is the image's Digests, a JSON list: Digest and the
	// digests of its manifest big data items, as containers/storage
	// computes them.
	ImageDigests = "cs.image-digests"
	// ImageBigDataPrefix + key is the digest of the blob holding big data
	// item key; the blob carries the label ImageRef(id, "bigdata/"+key).
	ImageBigDataPrefix = "cs.bigdata."
	// ImageBigDataSizePrefix + key is the size of big data item key.
	ImageBigDataSizePrefix = "cs.bigdata-size."
	// ImageBigDataDigestPrefix + key is the digest of big data item key
	// when it is not the blob's (a manifest digested by the caller's
	// function).
	ImageBigDataDigestPrefix = "cs.bigdata-digest."
	// ImageNamesHistory is the image's NamesHistory, JSON.
	ImageNamesHistory = "cs.names-history"
	// ImageFlags is the image's Flags, JSON.
	ImageFlags = "cs.flags"
	// GCRefSnapshot is the snapshot key of the image's top layer, in
	// containerd's garbage collection reference form.
	GCRefSnapshot = "containerd.io/gc.ref.snapshot.cs"
)

// Image is the kind of image names, and ImageIDKind that of image IDs, in
// the daemon's name index. They are claimed from content labels, not
// snapshot labels, so they are not in Kinds.
const (
	Image       Kind = "image"
	ImageIDKind Kind = "image-id"
)

// ImageRef is the label a blob image id uses carries: the record itself
// (use "record") or a big data item ("bigdata/<key>"). It begins with
// BlobRefPrefix, so the daemon keeps the blob from containerd's garbage
// collector.
func ImageRef(id, use string) string {
	return BlobRefPrefix + "image." + id + "." + use
}

// ContainerIDKind is the kind of container IDs in the daemon's name index:
// a container's ID is claimed like a name, in the transaction that writes
// its record, so an ID belongs to one container.
const ContainerIDKind Kind = "container-id"

// Container record labels, on the active snapshot of the container's
// read-write layer (next to that layer's own labels). The container's ID is
// the label NameKey(ContainerIDKind, id); its names NameKey(Container, n).
const (
	// ContainerImage is the ID of the container's image ("" for none).
	ContainerImage = Prefix + "container-image"
	// ContainerMetadata is the container's metadata string.
	ContainerMetadata = Prefix + "container-metadata"
	// ContainerFlags is the container's Flags, JSON.
	ContainerFlags = Prefix + "container-flags"
	// ContainerBigDataPrefix + key is the digest of the blob holding the
	// container's big data item key (the blob's digest is the item's).
	ContainerBigDataPrefix = Prefix + "container-bigdata."
	// ContainerBigDataSizePrefix + key is the size of big data item key.
	ContainerBigDataSizePrefix = Prefix + "container-bigdata-size."
)

// ContainerID returns the container ID recorded in labels, if any.
func ContainerID(labels map[string]string) string {
	for key := range labels {
		if id, ok := strings.CutPrefix(key, NamePrefix(ContainerIDKind)); ok && id != "" {
			return id
		}
	}
	return ""
}

// Mirrors of an additional read-only image store's layers (issue 8): a
// committed snapshot in the writable root whose files directory is a
// symbolic link to the layer's directory in the read-only root, so a
// layer or container made on a read-only store's layer stacks on it
// without copying. ReadOnlyStore is that root's path, ReadOnlyDir the
// layer's directory there; the snapshotter makes the link when a store
// caller prepares a snapshot with ReadOnlyDir, and removing the snapshot
// removes only the link.
const (
	ReadOnlyStore = Prefix + "ro-store"
	ReadOnlyDir   = Prefix + "ro-dir"
)
