package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

func namesFlags(usage string) func(fs *flagSet, o *options) {
	return func(fs *flagSet, o *options) {
		fs.listVar(&o.names, []string{"--name", "-n"}, usage)
		jsonFlag(fs, o)
	}
}

func init() {
	register(
		&command{
			names:       []string{"get-names", "getnames"},
			optionsHelp: "[options [...]] imageOrContainerNameOrID",
			usage:       "Get layer, image, or container name or names",
			minArgs:     1,
			maxArgs:     1,
			flags:       jsonFlag,
			action:      cmdGetNames,
		},
		&command{
			names:       []string{"add-names", "addnames"},
			optionsHelp: "[options [...]] imageOrContainerNameOrID",
			usage:       "Add layer, image, or container name or names",
			minArgs:     1,
			maxArgs:     -1,
			flags:       namesFlags("Name to add"),
			action:      cmdChangeNames,
		},
		&command{
			names:       []string{"remove-names", "removenames"},
			optionsHelp: "[options [...]] imageOrContainerNameOrID",
			usage:       "Remove layer, image, or container name or names",
			minArgs:     1,
			maxArgs:     -1,
			flags:       namesFlags("Name to remove"),
			action:      cmdChangeNames,
		},
		&command{
			names:       []string{"set-names", "setnames"},
			optionsHelp: "[options [...]] imageOrContainerNameOrID",
			usage:       "Set layer, image, or container name or names",
			minArgs:     1,
			maxArgs:     -1,
			flags:       namesFlags("New name"),
			action:      cmdChangeNames,
		},
		&command{
			names:       []string{"metadata"},
			optionsHelp: "[LayerOrImageOrContainerNameOrID [...]]",
			usage:       "Retrieve layer, image, or container metadata",
			minArgs:     1,
			maxArgs:     -1,
			flags: func(fs *flagSet, o *options) {
				fs.boolVar(&o.quiet, []string{"--quiet", "-q"}, "Omit names and IDs")
				jsonFlag(fs, o)
			},
			action: cmdMetadata,
		},
		&command{
			names:       []string{"set-metadata", "setmetadata"},
			optionsHelp: "[options [...]] layerOrImageOrContainerNameOrID",
			usage:       "Set layer, image, or container metadata",
			minArgs:     1,
			maxArgs:     1,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.metadata, []string{"--metadata", "-m"}, "Metadata")
				fs.stringVar(&o.metadataFile, []string{"--metadata-file", "-f"}, "Metadata File")
			},
			action: cmdSetMetadata,
		},
	)
}

func cmdGetNames(c *cli, args []string) (int, error) {
	id, err := c.store.Lookup(args[0])
	if err != nil {
		return 1, err
	}
	names, err := c.store.Names(id)
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		return c.outputJSON(append([]string{}, names...))
	}
	for _, name := range names {
		fmt.Fprintf(c.stdout, "%s\n", name)
	}
	return 0, nil
}

// cmdChangeNames is add-names, remove-names and set-names: it changes the
// names of the first argument and prints them with --json.
func cmdChangeNames(c *cli, args []string) (int, error) {
	id, err := c.store.Lookup(args[0])
	if err != nil {
		return 1, err
	}
	switch c.name {
	case "add-names", "addnames":
		err = c.store.AddNames(id, c.opts.names)
	case "remove-names", "removenames":
		err = c.store.RemoveNames(id, c.opts.names)
	default:
		err = c.store.SetNames(id, c.opts.names)
	}
	if err != nil {
		return 1, err
	}
	names, err := c.store.Names(id)
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		return c.outputJSON(names)
	}
	return 0, nil
}

// cmdMetadata prints each argument's metadata ("ID: metadata", or the
// metadata alone with -q); 1 if any is not found.
func cmdMetadata(c *cli, args []string) (int, error) {
	found := map[string]string{}
	missing := false
	for _, what := range args {
		md, err := c.store.Metadata(what)
		if err != nil {
			errorf(c.stderr, "%s: %v", what, err)
			missing = true
			continue
		}
		found[what] = strings.TrimSuffix(md, "\n")
	}
	if c.opts.json {
		if _, err := c.outputJSON(found); err != nil {
			return 1, err
		}
	} else {
		for _, what := range args {
			if c.opts.quiet {
				fmt.Fprintf(c.stdout, "%s\n", found[what])
			} else {
				fmt.Fprintf(c.stdout, "%s: %s\n", what, found[what])
			}
		}
	}
	if missing {
		return 1, nil
	}
	return 0, nil
}

func cmdSetMetadata(c *cli, args []string) (int, error) {
	md := c.opts.metadata
	if c.opts.metadataFile == "" && md == "" {
		return 1, errors.New("no new metadata provided")
	}
	if c.opts.metadataFile != "" {
		b, err := os.ReadFile(c.opts.metadataFile)
		if err != nil {
			return 1, err
		}
		md = string(b)
	}
	if err := c.store.SetMetadata(args[0], md); err != nil {
		return 1, err
	}
	return 0, nil
}
