package storage

import "errors"

// The errors of containers/storage's Store, with the same names and
// messages, so callers can errors.Is them.
var (
	ErrContainerUnknown     = errors.New("container not known")
	ErrDigestUnknown        = errors.New("could not compute digest of item")
	ErrDuplicateID          = errors.New("that ID is already in use")
	ErrDuplicateName        = errors.New("that name is already in use")
	ErrImageUnknown         = errors.New("image not known")
	ErrIncompleteOptions    = errors.New("missing necessary StoreOptions")
	ErrInvalidBigDataName   = errors.New("not a valid name for a big data item")
	ErrLayerHasChildren     = errors.New("layer has children")
	ErrLayerNotMounted      = errors.New("layer is not mounted")
	ErrLayerUnknown         = errors.New("layer not known")
	ErrLayerUsedByContainer = errors.New("layer is in use by a container")
	ErrLayerUsedByImage     = errors.New("layer is in use by an image")
	ErrLoadError            = errors.New("error loading storage metadata")
	ErrNotALayer            = errors.New("identifier is not a layer")
	ErrNotAnID              = errors.New("identifier is not a layer, image, or container")
	ErrParentIsContainer    = errors.New("would-be parent layer is a container")
	ErrParentUnknown        = errors.New("parent of layer not known")
	ErrSizeUnknown          = errors.New("size is not known")
	ErrStoreIsReadOnly      = errors.New("called a write method on a read-only store")
	ErrNotSupported         = errors.New("not supported")
	ErrInvalidMappings      = errors.New("invalid mappings specified")
	ErrNotAContainer        = errors.New("identifier is not a container")

	// ErrInvalidName is cs-snapshotter's own: a name that is empty.
	ErrInvalidName = errors.New("not a valid name")
)
