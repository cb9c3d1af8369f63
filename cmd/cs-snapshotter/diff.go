package main

import (
	"fmt"
	"io"
	"os"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

func init() {
	register(
		&command{
			names:       []string{"changes"},
			optionsHelp: "[options [...]] layerNameOrID [referenceLayerNameOrID]",
			usage:       "Compare two layers",
			minArgs:     1,
			maxArgs:     2,
			flags:       jsonFlag,
			action:      cmdChanges,
		},
		&command{
			names:       []string{"diffsize", "diff-size"},
			optionsHelp: "[options [...]] layerNameOrID [referenceLayerNameOrID]",
			usage:       "Compare two layers",
			minArgs:     1,
			maxArgs:     2,
			action:      cmdDiffSize,
		},
		&command{
			names:       []string{"diff"},
			optionsHelp: "[options [...]] layerNameOrID [referenceLayerNameOrID]",
			usage:       "Compare two layers",
			minArgs:     1,
			maxArgs:     2,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.file, []string{"--file", "-f"}, "Write to file instead of stdout")
				fs.boolVar(&o.diffUncompressed, []string{"--uncompressed", "-u"}, "Use no compression")
				fs.boolVar(&o.diffGzip, []string{"--gzip", "-c"}, "Compress using gzip")
				fs.boolVar(&o.diffBzip2, []string{"--bzip2", "--bz2", "-b"}, "Compress using bzip2 (not currently supported)")
				fs.boolVar(&o.diffXz, []string{"--xz", "-x"}, "Compress using xz (not currently supported)")
			},
			action: cmdDiff,
		},
		&command{
			names:       []string{"applydiff", "apply-diff"},
			optionsHelp: "[options [...]] layerNameOrID",
			usage:       "Apply a diff to a layer",
			minArgs:     1,
			maxArgs:     1,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.file, []string{"--file", "-f"}, "Read from file instead of stdin")
			},
			action: cmdApplyDiff,
		},
	)
}

// fromTo reads "layer [reference]" arguments.
func fromTo(args []string) (from, to string) {
	to = args[0]
	if len(args) > 1 {
		from = args[1]
	}
	return from, to
}

func cmdChanges(c *cli, args []string) (int, error) {
	from, to := fromTo(args)
	changes, err := c.store.Changes(from, to)
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		return c.outputJSON(changes)
	}
	for _, ch := range changes {
		what := "?"
		switch ch.Kind {
		case storage.ChangeAdd:
			what = "Add"
		case storage.ChangeModify:
			what = "Modify"
		case storage.ChangeDelete:
			what = "Delete"
		}
		fmt.Fprintf(c.stdout, "%s %q\n", what, ch.Path)
	}
	return 0, nil
}

func cmdDiffSize(c *cli, args []string) (int, error) {
	from, to := fromTo(args)
	n, err := c.store.DiffSize(from, to)
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(c.stdout, "%d\n", n)
	return 0, nil
}

func cmdDiff(c *cli, args []string) (int, error) {
	from, to := fromTo(args)
	var opts storage.DiffOptions
	o := c.opts
	if o.diffUncompressed || o.diffGzip || o.diffBzip2 || o.diffXz {
		// As containers-storage: the last of gzip, bzip2, xz given wins.
		comp := storage.Uncompressed
		if o.diffGzip {
			comp = storage.Gzip
		}
		if o.diffBzip2 {
			comp = storage.Bzip2
		}
		if o.diffXz {
			comp = storage.Xz
		}
		opts.Compression = &comp
	}
	// Ask for the diff before creating the file: an unknown layer leaves
	// no empty file behind.
	rc, err := c.store.Diff(from, to, &opts)
	if err != nil {
		return 1, err
	}
	defer rc.Close()
	out := c.stdout
	var f *os.File
	if o.file != "" {
		if f, err = os.Create(o.file); err != nil {
			return 1, err
		}
		defer f.Close()
		out = f
	}
	var total int64
	if c.stderrIsTerminal && from == "" {
		if l, err := c.store.Layer(to); err == nil && (opts.Compression != nil && *opts.Compression == storage.Uncompressed ||
			opts.Compression == nil && l.CompressionType == storage.Uncompressed) {
			total = l.UncompressedSize
		}
	}
	p := c.newProgress("diff", total)
	_, err = io.Copy(p.writer(out), rc)
	p.finish(err == nil)
	if err != nil {
		return 1, err
	}
	if err := rc.Close(); err != nil {
		return 1, err
	}
	if f != nil {
		if err := f.Close(); err != nil {
			return 1, err
		}
	}
	return 0, nil
}

func cmdApplyDiff(c *cli, args []string) (int, error) {
	in, size, closeIn, err := c.input()
	if err != nil {
		return 1, err
	}
	defer closeIn()
	p := c.newProgress("applydiff", size)
	_, err = c.store.ApplyDiff(args[0], p.reader(in))
	p.finish(err == nil)
	if err != nil {
		return 1, err
	}
	return 0, nil
}
