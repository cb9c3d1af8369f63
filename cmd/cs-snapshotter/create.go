package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

func idMapFlags(fs *flagSet, o *options) {
	fs.boolVar(&o.hostUIDMap, []string{"--hostuidmap"}, "Force host UID map")
	fs.boolVar(&o.hostGIDMap, []string{"--hostgidmap"}, "Force host GID map")
	fs.stringVar(&o.uidMap, []string{"--uidmap"}, "UID map")
	fs.stringVar(&o.gidMap, []string{"--gidmap"}, "GID map")
	fs.stringVar(&o.subUIDMap, []string{"--subuidmap"}, "subuid UID map for a user")
	fs.stringVar(&o.subGIDMap, []string{"--subgidmap"}, "subgid GID map for a group")
}

func layerFlags(fs *flagSet, o *options) {
	fs.stringVar(&o.label, []string{"--label", "-l"}, "Mount Label")
	fs.listVar(&o.names, []string{"--name", "-n"}, "Layer name")
	fs.stringVar(&o.id, []string{"--id", "-i"}, "Layer ID")
	fs.boolVar(&o.readOnly, []string{"--readonly", "-r"}, "Mark as read-only")
	jsonFlag(fs, o)
	idMapFlags(fs, o)
}

func init() {
	register(
		&command{
			names:       []string{"create-layer", "createlayer"},
			optionsHelp: "[options [...]] [parentLayerNameOrID]",
			usage:       "Create a new layer",
			maxArgs:     1,
			flags:       layerFlags,
			action:      cmdCreateLayer,
		},
		&command{
			names:       []string{"import-layer", "importlayer"},
			optionsHelp: "[options [...]] [parentLayerNameOrID]",
			usage:       "Import a new layer",
			maxArgs:     1,
			flags: func(fs *flagSet, o *options) {
				layerFlags(fs, o)
				fs.stringVar(&o.file, []string{"--file", "-f"}, "Read from file instead of stdin")
			},
			action: cmdImportLayer,
		},
		&command{
			names:       []string{"create-storage-layer"},
			optionsHelp: "[options [...]] [parentLayerNameOrID]",
			usage:       "Create a new layer only in the storage driver",
			maxArgs:     1,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.label, []string{"--label", "-l"}, "Mount Label")
				fs.stringVar(&o.id, []string{"--id", "-i"}, "Layer ID")
				fs.boolVar(&o.readOnly, []string{"--readonly", "-r"}, "Mark as read-only")
				jsonFlag(fs, o)
				idMapFlags(fs, o)
			},
			action: cmdCreateStorageLayer,
		},
	)
}

// layerOptions turns the ID mapping flags into LayerOptions. The store
// keeps files with the IDs they have: it takes no mapping.
func (o *options) layerOptions() (*storage.LayerOptions, error) {
	if o.hostUIDMap && (o.uidMap != "" || o.subUIDMap != "") {
		return nil, errors.New("host uid map specified along with UID mapping")
	}
	if o.hostGIDMap && (o.gidMap != "" || o.subGIDMap != "") {
		return nil, errors.New("host gid map specified along with GID mapping")
	}
	if o.uidMap != "" || o.gidMap != "" || o.subUIDMap != "" || o.subGIDMap != "" {
		return nil, errors.New("ID mappings are not supported: cs-snapshotter stores layers unmapped")
	}
	return &storage.LayerOptions{}, nil
}

func (c *cli) printLayer(l *storage.Layer) (int, error) {
	if c.opts.json {
		return c.outputJSON(l)
	}
	fmt.Fprintf(c.stdout, "%s\n", l.ID)
	for _, name := range l.Names {
		fmt.Fprintf(c.stdout, "\t%s\n", name)
	}
	return 0, nil
}

func optionalArg(args []string) string {
	if len(args) > 0 {
		return args[0]
	}
	return ""
}

func cmdCreateLayer(c *cli, args []string) (int, error) {
	lo, err := c.opts.layerOptions()
	if err != nil {
		return 1, err
	}
	l, err := c.store.CreateLayer(c.opts.id, optionalArg(args), c.opts.names, c.opts.label, !c.opts.readOnly, lo)
	if err != nil {
		return 1, err
	}
	return c.printLayer(l)
}

// input opens the file named by --file, or stdin; size is its size when
// known (a regular file), else 0.
func (c *cli) input() (r io.Reader, size int64, closeFn func(), err error) {
	f, _ := c.stdin.(*os.File)
	closeFn = func() {}
	if c.opts.file != "" {
		if f, err = os.Open(c.opts.file); err != nil {
			return nil, 0, nil, err
		}
		closeFn = func() { f.Close() }
	}
	if f == nil {
		return c.stdin, 0, closeFn, nil
	}
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
		if off, err := f.Seek(0, io.SeekCurrent); err == nil {
			size -= off
		}
	}
	return f, size, closeFn, nil
}

func cmdImportLayer(c *cli, args []string) (int, error) {
	in, size, closeIn, err := c.input()
	if err != nil {
		return 1, err
	}
	defer closeIn()
	lo, err := c.opts.layerOptions()
	if err != nil {
		return 1, err
	}
	p := c.newProgress("import-layer", size)
	l, _, err := c.store.PutLayer(c.opts.id, optionalArg(args), c.opts.names, c.opts.label, !c.opts.readOnly, lo, p.reader(in))
	p.finish(err == nil)
	if err != nil {
		return 1, err
	}
	return c.printLayer(l)
}

// cmdCreateStorageLayer is containers-storage's "layer only in the storage
// driver". The store's driver is the snapshotter and every snapshot is a
// layer, so this is a layer with no names, listed by `layers`; it prints
// only the ID (a JSON string with --json).
func cmdCreateStorageLayer(c *cli, args []string) (int, error) {
	lo, err := c.opts.layerOptions()
	if err != nil {
		return 1, err
	}
	l, err := c.store.CreateLayer(c.opts.id, optionalArg(args), nil, c.opts.label, !c.opts.readOnly, lo)
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		return c.outputJSON(l.ID)
	}
	fmt.Fprintf(c.stdout, "%s\n", l.ID)
	return 0, nil
}
