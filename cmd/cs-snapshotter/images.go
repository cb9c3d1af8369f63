package main

import (
	"fmt"
	"os"

	digest "github.com/opencontainers/go-digest"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

func imagesFlags(fs *flagSet, o *options) {
	jsonFlag(fs, o)
	fs.boolVar(&o.quiet, []string{"--quiet", "-q"}, "Only print IDs")
}

func init() {
	register(
		&command{
			names:       []string{"images"},
			optionsHelp: "[options [...]]",
			usage:       "List images",
			maxArgs:     0,
			flags:       imagesFlags,
			action:      cmdImages,
		},
		&command{
			names:       []string{"images-by-digest"},
			optionsHelp: "[options [...]] DIGEST",
			usage:       "List images by digest",
			minArgs:     1,
			maxArgs:     1,
			flags:       imagesFlags,
			action:      cmdImagesByDigest,
		},
		&command{
			names:       []string{"image"},
			optionsHelp: "[options [...]] imageNameOrID [...]",
			usage:       "Examine an image",
			minArgs:     1,
			maxArgs:     -1,
			flags:       jsonFlag,
			action:      cmdImage,
		},
		&command{
			names:       []string{"create-image", "createimage"},
			optionsHelp: "[options [...]] topLayerNameOrID",
			usage:       "Create a new image using layers",
			maxArgs:     1,
			flags: func(fs *flagSet, o *options) {
				fs.listVar(&o.names, []string{"--name", "-n"}, "Image name")
				fs.stringVar(&o.id, []string{"--id", "-i"}, "Image ID")
				fs.stringVar(&o.digest, []string{"--digest", "-d"}, "Image Digest")
				fs.stringVar(&o.metadata, []string{"--metadata", "-m"}, "Metadata")
				fs.stringVar(&o.metadataFile, []string{"--metadata-file", "-f"}, "Metadata File")
				jsonFlag(fs, o)
			},
			action: cmdCreateImage,
		},
		&command{
			names:       []string{"delete-image", "deleteimage"},
			optionsHelp: "[ImageNameOrID [...]]",
			usage:       "Delete an image, with safety checks",
			minArgs:     1,
			maxArgs:     -1,
			flags: func(fs *flagSet, o *options) {
				fs.boolVar(&o.testDelete, []string{"--test", "-t"}, "Only test removal")
				jsonFlag(fs, o)
			},
			action: cmdDeleteImage,
		},
		&command{
			names:       []string{"list-image-data", "listimagedata"},
			optionsHelp: "[options [...]] imageNameOrID",
			usage:       "List data items that are attached to an image",
			minArgs:     1,
			maxArgs:     1,
			flags:       jsonFlag,
			action:      imageData.listCmd,
		},
		&command{
			names:       []string{"get-image-data", "getimagedata"},
			optionsHelp: "[options [...]] imageNameOrID dataName",
			usage:       "Get data that is attached to an image",
			minArgs:     2,
			maxArgs:     2,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.file, []string{"--file", "-f"}, "Write data to file")
			},
			action: imageData.getCmd,
		},
		&command{
			names:       []string{"get-image-data-size", "getimagedatasize"},
			optionsHelp: "[options [...]] imageNameOrID dataName",
			usage:       "Get size of data that is attached to an image",
			minArgs:     2,
			maxArgs:     2,
			action:      imageData.sizeCmd,
		},
		&command{
			names:       []string{"get-image-data-digest", "getimagedatadigest"},
			optionsHelp: "[options [...]] imageNameOrID dataName",
			usage:       "Get digest of data that is attached to an image",
			minArgs:     2,
			maxArgs:     2,
			action:      imageData.digestCmd,
		},
		&command{
			names:       []string{"set-image-data", "setimagedata"},
			optionsHelp: "[options [...]] imageNameOrID dataName",
			usage:       "Set data that is attached to an image (with sometimes wrong digest)",
			minArgs:     2,
			maxArgs:     2,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.file, []string{"--file", "-f"}, "Read data from file")
			},
			action: imageData.setCmd,
		},
	)
}

// listImages prints images as `images` and `images-by-digest` do: the ID,
// then (unless -q) tab-indented names, digests and data item names.
func (c *cli) listImages(images any, list []*storage.Image) (int, error) {
	if c.opts.json {
		return c.outputJSON(images)
	}
	for _, img := range list {
		fmt.Fprintf(c.stdout, "%s\n", img.ID)
		if c.opts.quiet {
			continue
		}
		for _, name := range img.Names {
			fmt.Fprintf(c.stdout, "\tname: %s\n", name)
		}
		for _, d := range img.Digests {
			fmt.Fprintf(c.stdout, "\tdigest: %s\n", d.String())
		}
		for _, name := range img.BigDataNames {
			fmt.Fprintf(c.stdout, "\tdata: %s\n", name)
		}
	}
	return 0, nil
}

func cmdImages(c *cli, _ []string) (int, error) {
	images, err := c.store.Images()
	if err != nil {
		return 1, err
	}
	if len(images) == 0 {
		images = nil // "null", as containers-storage prints
	}
	list := make([]*storage.Image, len(images))
	for i := range images {
		list[i] = &images[i]
	}
	return c.listImages(images, list)
}

func cmdImagesByDigest(c *cli, args []string) (int, error) {
	list := []*storage.Image{}
	for _, arg := range args {
		d := digest.Digest(arg)
		if err := d.Validate(); err != nil {
			return 1, err
		}
		matched, err := c.store.ImagesByDigest(d)
		if err != nil {
			return 1, err
		}
		list = append(list, matched...)
	}
	return c.listImages(list, list)
}

// cmdImage describes each argument that is an image; 1 if any is not.
func cmdImage(c *cli, args []string) (int, error) {
	matched := []*storage.Image{}
	for _, arg := range args {
		if img, err := c.store.Image(arg); err == nil {
			matched = append(matched, img)
		}
	}
	if c.opts.json {
		if _, err := c.outputJSON(matched); err != nil {
			return 1, err
		}
	} else {
		w := c.stdout
		for _, img := range matched {
			fmt.Fprintf(w, "ID: %s\n", img.ID)
			for _, name := range img.Names {
				fmt.Fprintf(w, "Name: %s\n", name)
			}
			fmt.Fprintf(w, "Top Layer: %s\n", img.TopLayer)
			for _, id := range img.MappedTopLayers {
				fmt.Fprintf(w, "Top Layer: %s\n", id)
			}
			for _, d := range img.Digests {
				fmt.Fprintf(w, "Digest: %s\n", d.String())
			}
			for _, name := range img.BigDataNames {
				fmt.Fprintf(w, "Data: %s\n", name)
			}
			if size, err := c.store.ImageSize(img.ID); err != nil {
				fmt.Fprintf(w, "Size unknown: %+v\n", err)
			} else {
				fmt.Fprintf(w, "Size: %d\n", size)
			}
			if img.ReadOnly {
				fmt.Fprintf(w, "Read Only: true\n")
			}
		}
	}
	if len(matched) != len(args) {
		return 1, nil
	}
	return 0, nil
}

func cmdCreateImage(c *cli, args []string) (int, error) {
	md := c.opts.metadata
	if c.opts.metadataFile != "" {
		b, err := os.ReadFile(c.opts.metadataFile)
		if err != nil {
			return 1, err
		}
		md = string(b)
	}
	img, err := c.store.CreateImage(c.opts.id, c.opts.names, optionalArg(args), md, &storage.ImageOptions{Digest: digest.Digest(c.opts.digest)})
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		return c.outputJSON(img)
	}
	fmt.Fprintf(c.stdout, "%s\n", img.ID)
	for _, name := range img.Names {
		fmt.Fprintf(c.stdout, "\t%s\n", name)
	}
	return 0, nil
}

type deletedImage struct {
	DeletedLayers []string `json:"deleted-layers,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// cmdDeleteImage deletes each argument (with --test, only checks that it
// could), reporting "ARG: error" or "ARG: deleted layer" on stderr, or a
// JSON object; 1 if any failed.
func cmdDeleteImage(c *cli, args []string) (int, error) {
	deleted := map[string]deletedImage{}
	var order []string
	for _, what := range args {
		layers, err := c.store.DeleteImage(what, !c.opts.testDelete)
		rec := deletedImage{DeletedLayers: layers}
		if err != nil {
			rec.Error = err.Error()
		}
		if _, seen := deleted[what]; !seen {
			order = append(order, what)
		}
		deleted[what] = rec
	}
	if c.opts.json {
		if _, err := c.outputJSON(deleted); err != nil {
			return 1, err
		}
	} else {
		for _, what := range order {
			rec := deleted[what]
			if rec.Error != "" {
				fmt.Fprintf(c.stderr, "%s: %s\n", what, rec.Error)
				continue
			}
			for _, l := range rec.DeletedLayers {
				fmt.Fprintf(c.stderr, "%s: %s\n", what, l)
			}
		}
	}
	for _, rec := range deleted {
		if rec.Error != "" {
			return 1, nil
		}
	}
	return 0, nil
}
