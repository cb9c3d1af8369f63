package storage

import (
	"fmt"
	"path/filepath"
	"strings"
)

// imageStoreOption is an image store StoreOptions name, and where.
type imageStoreOption struct {
	path string
	// option names it as the user gave it: "imagestore",
	// "additionalimagestores", "storage option overlay.imagestore".
	option string
	// separate: the separate (writable) image store; otherwise a
	// read-only additional one.
	separate bool
}

// imageStoreOptions lists the image stores options names: ImageStore,
// ROImageStores, then the "overlay.imagestore=PATH[,PATH...]" (also
// "additionalimagestore" and "additionalimagestores") GraphDriverOptions,
// as containers/storage's overlay driver reads them.
func imageStoreOptions(o StoreOptions) []imageStoreOption {
	var list []imageStoreOption
	if o.ImageStore != "" {
		list = append(list, imageStoreOption{path: o.ImageStore, option: "--image-store, storage.conf imagestore", separate: true})
	}
	for _, p := range o.ROImageStores {
		if p != "" {
			list = append(list, imageStoreOption{path: filepath.Clean(p), option: "storage.conf additionalimagestores"})
		}
	}
	for _, opt := range o.GraphDriverOptions {
		key, val, ok := strings.Cut(opt, "=")
		if !ok {
			continue
		}
		name := strings.ToLower(strings.TrimSpace(key))
		for _, prefix := range []string{"overlay.", "overlay2.", "."} {
			name = strings.TrimPrefix(name, prefix)
		}
		switch name {
		case "imagestore", "additionalimagestore", "additionalimagestores":
		default:
			continue
		}
		for _, p := range strings.Split(val, ",") {
			if p != "" {
				list = append(list, imageStoreOption{path: filepath.Clean(p), option: "storage option " + strings.TrimSpace(key)})
			}
		}
	}
	return list
}

// unsupportedError is an option the store does not implement yet.
type unsupportedError struct{ msg string }

func (e *unsupportedError) Error() string { return e.msg }
func (e *unsupportedError) Unwrap() error { return ErrNotSupported }

// CheckImageStores refuses the image stores GetStore does not implement,
// naming the option and the path: image stores, separate or additional
// read-only ones, when the store is opened through containerd
// (ContainerdAddress), whose snapshotter is not a cs-snapshotter root. It
// touches nothing on disk.
func CheckImageStores(o StoreOptions) error {
	for _, s := range imageStoreOptions(o) {
		switch {
		case s.separate && o.ContainerdAddress != "":
			return &unsupportedError{msg: fmt.Sprintf("image store %s (%s): not supported by cs-snapshotter with a store opened through containerd (--containerd): give it to the daemon instead (serve --image-store)", s.path, s.option)}
		case o.ContainerdAddress != "":
			return &unsupportedError{msg: fmt.Sprintf("additional image store %s (%s): not supported by cs-snapshotter with a store opened through containerd (--containerd): give it to the daemon instead (serve --additional-image-store)", s.path, s.option)}
		}
	}
	return nil
}

// ImageStorePath is an image store the options name.
type ImageStorePath struct {
	Path string
	// Separate: the separate writable image store; otherwise a read-only
	// additional one.
	Separate bool
}

// ImageStorePaths lists the image stores o names, however it names them
// (ImageStore, ROImageStores, overlay.imagestore options), so a daemon can
// be given the same ones.
func ImageStorePaths(o StoreOptions) []ImageStorePath {
	var list []ImageStorePath
	for _, s := range imageStoreOptions(o) {
		list = append(list, ImageStorePath{Path: s.path, Separate: s.separate})
	}
	return list
}
