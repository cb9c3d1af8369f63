package main

import (
	"fmt"
	"os"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

// createVolatile is create-container's --volatile. A package variable, as
// the options of main.go are shared by every command and this flag is
// create-container's alone; its flags function resets it.
var createVolatile bool

func init() {
	register(
		&command{
			names:       []string{"containers"},
			optionsHelp: "[options [...]]",
			usage:       "List containers",
			maxArgs:     0,
			flags:       jsonFlag,
			action:      cmdContainers,
		},
		&command{
			names:       []string{"container"},
			optionsHelp: "[options [...]] containerNameOrID [...]",
			usage:       "Examine a container",
			minArgs:     1,
			maxArgs:     -1,
			flags:       jsonFlag,
			action:      cmdContainer,
		},
		&command{
			names:       []string{"create-container", "createcontainer"},
			optionsHelp: "[options [...]] parentImageNameOrID",
			usage:       "Create a new container from an image",
			minArgs:     1,
			maxArgs:     1,
			flags: func(fs *flagSet, o *options) {
				createVolatile = false
				fs.listVar(&o.names, []string{"--name", "-n"}, "Container name")
				fs.boolVar(&createVolatile, []string{"--volatile"}, "Mark as volatile")
				fs.stringVar(&o.id, []string{"--id", "-i"}, "Container ID")
				fs.stringVar(&o.metadata, []string{"--metadata", "-m"}, "Metadata")
				fs.stringVar(&o.metadataFile, []string{"--metadata-file", "-f"}, "Metadata File")
				jsonFlag(fs, o)
				idMapFlags(fs, o)
			},
			action: cmdCreateContainer,
		},
		&command{
			names:       []string{"delete-container", "deletecontainer"},
			optionsHelp: "[ContainerNameOrID [...]]",
			usage:       "Delete a container, with safety checks",
			minArgs:     1,
			maxArgs:     -1,
			flags:       jsonFlag,
			action: func(c *cli, args []string) (int, error) {
				return c.deleteEach(args, func(arg string) error {
					if ctr, err := c.container(arg); err == nil {
						arg = ctr.ID
					}
					return c.store.DeleteContainer(arg)
				})
			},
		},
		&command{
			names:       []string{"list-container-data", "listcontainerdata"},
			optionsHelp: "[options [...]] containerNameOrID",
			usage:       "List data items that are attached to an container",
			minArgs:     1,
			maxArgs:     1,
			flags:       jsonFlag,
			action:      containerData.listCmd,
		},
		&command{
			names:       []string{"get-container-data", "getcontainerdata"},
			optionsHelp: "[options [...]] containerNameOrID dataName",
			usage:       "Get data that is attached to an container",
			minArgs:     2,
			maxArgs:     2,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.file, []string{"--file", "-f"}, "Write data to file")
			},
			action: containerData.getCmd,
		},
		&command{
			names:       []string{"get-container-data-size", "getcontainerdatasize"},
			optionsHelp: "[options [...]] containerNameOrID dataName",
			usage:       "Get size of data that is attached to an container",
			minArgs:     2,
			maxArgs:     2,
			action:      containerData.sizeCmd,
		},
		&command{
			names:       []string{"get-container-data-digest", "getcontainerdatadigest"},
			optionsHelp: "[options [...]] containerNameOrID dataName",
			usage:       "Get digest of data that is attached to an container",
			minArgs:     2,
			maxArgs:     2,
			action:      containerData.digestCmd,
		},
		&command{
			names:       []string{"set-container-data", "setcontainerdata"},
			optionsHelp: "[options [...]] containerNameOrID dataName",
			usage:       "Set data that is attached to an container",
			minArgs:     2,
			maxArgs:     2,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.file, []string{"--file", "-f"}, "Read data from file")
			},
			action: containerData.setCmd,
		},
		&command{
			names:       []string{"get-container-dir", "getcontainerdir"},
			optionsHelp: "[options [...]] containerNameOrID",
			usage:       "Find the container's associated data directory",
			minArgs:     1,
			maxArgs:     1,
			action: func(c *cli, args []string) (int, error) {
				return c.printPath(c.store.ContainerDirectory(c.containerID(args[0])))
			},
		},
		&command{
			names:       []string{"get-container-run-dir", "getcontainerrundir"},
			optionsHelp: "[options [...]] containerNameOrID",
			usage:       "Find the container's associated runtime directory",
			minArgs:     1,
			maxArgs:     1,
			action: func(c *cli, args []string) (int, error) {
				return c.printPath(c.store.ContainerRunDirectory(c.containerID(args[0])))
			},
		},
	)
}

// container finds the container arg names as containers/storage does: by
// ID, name, the ID of its layer, or ID prefix. The store's Container does
// all of these since 5d4cc4e; ContainerByLayer stays as a fallback for a
// store that does not take the layer's ID.
func (c *cli) container(arg string) (*storage.Container, error) {
	ctr, err := c.store.Container(arg)
	if err == nil {
		return ctr, nil
	}
	if byLayer, err2 := c.store.ContainerByLayer(arg); err2 == nil && byLayer.LayerID == arg {
		return byLayer, nil
	}
	return nil, err
}

// containerID is the ID of the container arg names, else arg, for the
// store to say what is wrong with it.
func (c *cli) containerID(arg string) string {
	if ctr, err := c.container(arg); err == nil {
		return ctr.ID
	}
	return arg
}

// cmdContainers lists the containers: each ID, then tab-indented names
// and data item names ("[]" with --json when there are none).
func cmdContainers(c *cli, _ []string) (int, error) {
	containers, err := c.store.Containers()
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		if containers == nil {
			containers = []storage.Container{}
		}
		return c.outputJSON(containers)
	}
	for _, ctr := range containers {
		fmt.Fprintf(c.stdout, "%s\n", ctr.ID)
		for _, name := range ctr.Names {
			fmt.Fprintf(c.stdout, "\tname: %s\n", name)
		}
		for _, name := range ctr.BigDataNames {
			fmt.Fprintf(c.stdout, "\tdata: %s\n", name)
		}
	}
	return 0, nil
}

// cmdContainer describes each argument that is a container; 1 if any is
// not.
func cmdContainer(c *cli, args []string) (int, error) {
	images, err := c.store.Images()
	if err != nil {
		return 1, err
	}
	matched := []*storage.Container{}
	for _, arg := range args {
		if ctr, err := c.container(arg); err == nil {
			matched = append(matched, ctr)
		}
	}
	if c.opts.json {
		if _, err := c.outputJSON(matched); err != nil {
			return 1, err
		}
	} else {
		w := c.stdout
		for _, ctr := range matched {
			fmt.Fprintf(w, "ID: %s\n", ctr.ID)
			for _, name := range ctr.Names {
				fmt.Fprintf(w, "Name: %s\n", name)
			}
			fmt.Fprintf(w, "Image: %s\n", ctr.ImageID)
			for _, img := range images {
				if img.ID == ctr.ImageID {
					for _, name := range img.Names {
						fmt.Fprintf(w, "Image name: %s\n", name)
					}
					break
				}
			}
			if size, err := c.store.ContainerSize(ctr.ID); err != nil {
				fmt.Fprintf(w, "Size unknown: %+v\n", err)
			} else {
				fmt.Fprintf(w, "Size: %d\n", size)
			}
			fmt.Fprintf(w, "Layer: %s\n", ctr.LayerID)
			for _, name := range ctr.BigDataNames {
				fmt.Fprintf(w, "Data: %s\n", name)
			}
		}
	}
	if len(matched) != len(args) {
		return 1, nil
	}
	return 0, nil
}

// cmdCreateContainer makes a container on the image named by the argument
// ("" for none). It prints the ID on a line, then each name after a tab
// with no newline, as containers-storage does; the container as JSON with
// --json.
func cmdCreateContainer(c *cli, args []string) (int, error) {
	md := c.opts.metadata
	if c.opts.metadataFile != "" {
		b, err := os.ReadFile(c.opts.metadataFile)
		if err != nil {
			return 1, err
		}
		md = string(b)
	}
	// The ID mapping flags are checked as for layers: the store keeps
	// files unmapped.
	if _, err := c.opts.layerOptions(); err != nil {
		return 1, err
	}
	ctr, err := c.store.CreateContainer(c.opts.id, c.opts.names, args[0], "", md, &storage.ContainerOptions{Volatile: createVolatile})
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		return c.outputJSON(ctr)
	}
	fmt.Fprintf(c.stdout, "%s\n", ctr.ID)
	for _, name := range ctr.Names {
		fmt.Fprintf(c.stdout, "\t%s", name)
	}
	return 0, nil
}

// printPath ends get-container-dir and get-container-run-dir.
func (c *cli) printPath(path string, err error) (int, error) {
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(c.stdout, "%s\n", path)
	return 0, nil
}
