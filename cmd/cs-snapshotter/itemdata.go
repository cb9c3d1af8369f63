package main

import (
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

// itemData is the big data of one kind of item (images, containers): the
// list/get/size/digest/set data commands of both kinds are these.
type itemData struct {
	// id resolves the item the first argument names.
	id     func(c *cli, ref string) (string, error)
	list   func(s storage.Store, id string) ([]string, error)
	get    func(s storage.Store, id, key string) ([]byte, error)
	size   func(s storage.Store, id, key string) (int64, error)
	digest func(s storage.Store, id, key string) (digest.Digest, error)
	set    func(s storage.Store, id, key string, data []byte) error
}

var imageData = itemData{
	id: func(c *cli, ref string) (string, error) {
		img, err := c.store.Image(ref)
		if err != nil {
			return "", err
		}
		return img.ID, nil
	},
	list:   storage.Store.ListImageBigData,
	get:    storage.Store.ImageBigData,
	size:   storage.Store.ImageBigDataSize,
	digest: storage.Store.ImageBigDataDigest,
	set: func(s storage.Store, id, key string, data []byte) error {
		return s.SetImageBigData(id, key, data, wrongManifestDigest)
	},
}

var containerData = itemData{
	id: func(c *cli, ref string) (string, error) {
		ctr, err := c.container(ref)
		if err != nil {
			return "", err
		}
		return ctr.ID, nil
	},
	list:   storage.Store.ListContainerBigData,
	get:    storage.Store.ContainerBigData,
	size:   storage.Store.ContainerBigDataSize,
	digest: storage.Store.ContainerBigDataDigest,
	set:    storage.Store.SetContainerBigData,
}

// wrongManifestDigest is containers-storage's digester for set-image-data:
// the sha256 of the bytes as they are, whatever the manifest's format.
func wrongManifestDigest(b []byte) (digest.Digest, error) {
	return digest.Canonical.FromBytes(b), nil
}

func (d itemData) listCmd(c *cli, args []string) (int, error) {
	id, err := d.id(c, args[0])
	if err != nil {
		return 1, err
	}
	keys, err := d.list(c.store, id)
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		return c.outputJSON(keys)
	}
	for _, k := range keys {
		fmt.Fprintf(c.stdout, "%s\n", k)
	}
	return 0, nil
}

// getCmd writes a data item to stdout or to --file, which, as
// containers-storage does, is created before the item is looked up.
func (d itemData) getCmd(c *cli, args []string) (int, error) {
	id, err := d.id(c, args[0])
	if err != nil {
		return 1, err
	}
	out := c.stdout
	var f *os.File
	if c.opts.file != "" {
		if f, err = os.Create(c.opts.file); err != nil {
			return 1, err
		}
		defer f.Close()
		out = f
	}
	b, err := d.get(c.store, id, args[1])
	if err != nil {
		return 1, err
	}
	if _, err := out.Write(b); err != nil {
		return 1, err
	}
	if f != nil {
		if err := f.Close(); err != nil {
			return 1, err
		}
	}
	return 0, nil
}

func (d itemData) sizeCmd(c *cli, args []string) (int, error) {
	id, err := d.id(c, args[0])
	if err != nil {
		return 1, err
	}
	size, err := d.size(c.store, id, args[1])
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(c.stdout, "%d\n", size)
	return 0, nil
}

func (d itemData) digestCmd(c *cli, args []string) (int, error) {
	id, err := d.id(c, args[0])
	if err != nil {
		return 1, err
	}
	dg, err := d.digest(c.store, id, args[1])
	if err != nil {
		return 1, err
	}
	if err := dg.Validate(); err != nil {
		return 1, err
	}
	fmt.Fprintf(c.stdout, "%s\n", dg)
	return 0, nil
}

// setCmd stores stdin (or --file) as a data item.
func (d itemData) setCmd(c *cli, args []string) (int, error) {
	id, err := d.id(c, args[0])
	if err != nil {
		return 1, err
	}
	in, _, closeIn, err := c.input()
	if err != nil {
		return 1, err
	}
	defer closeIn()
	b, err := io.ReadAll(in)
	if err != nil {
		return 1, err
	}
	if err := d.set(c.store, id, args[1], b); err != nil {
		return 1, err
	}
	return 0, nil
}
