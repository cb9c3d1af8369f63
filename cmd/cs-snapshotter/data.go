package main

import (
	"fmt"
	"io"
	"os"
)

func init() {
	register(
		&command{
			names:       []string{"list-layer-data", "listlayerdata"},
			optionsHelp: "[options [...]] layerNameOrID",
			usage:       "List data items that are attached to a layer",
			minArgs:     1,
			maxArgs:     1,
			flags:       jsonFlag,
			action:      cmdListLayerData,
		},
		&command{
			names:       []string{"get-layer-data", "getlayerdata"},
			optionsHelp: "[options [...]] layerID dataName",
			usage:       "Get data that is attached to a layer",
			minArgs:     2,
			maxArgs:     2,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.file, []string{"--file", "-f"}, "Write data to file")
			},
			action: cmdGetLayerData,
		},
		&command{
			names:       []string{"set-layer-data", "setlayerdata"},
			optionsHelp: "[options [...]] layerID dataName",
			usage:       "Set data that is attached to a layer",
			minArgs:     2,
			maxArgs:     2,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.file, []string{"--file", "-f"}, "Read data from file")
			},
			action: cmdSetLayerData,
		},
	)
}

func cmdListLayerData(c *cli, args []string) (int, error) {
	l, err := c.store.Layer(args[0])
	if err != nil {
		return 1, err
	}
	keys, err := c.store.ListLayerBigData(l.ID)
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

func cmdGetLayerData(c *cli, args []string) (int, error) {
	l, err := c.store.Layer(args[0])
	if err != nil {
		return 1, err
	}
	rc, err := c.store.LayerBigData(l.ID, args[1])
	if err != nil {
		return 1, err
	}
	defer rc.Close()
	out := c.stdout
	if c.opts.file != "" {
		f, err := os.Create(c.opts.file)
		if err != nil {
			return 1, err
		}
		defer f.Close()
		out = f
	}
	if _, err := io.Copy(out, rc); err != nil {
		return 1, err
	}
	if f, ok := out.(*os.File); ok && c.opts.file != "" {
		if err := f.Close(); err != nil {
			return 1, err
		}
	}
	return 0, nil
}

func cmdSetLayerData(c *cli, args []string) (int, error) {
	l, err := c.store.Layer(args[0])
	if err != nil {
		return 1, err
	}
	in, _, closeIn, err := c.input()
	if err != nil {
		return 1, err
	}
	defer closeIn()
	if err := c.store.SetLayerBigData(l.ID, args[1], in); err != nil {
		return 1, err
	}
	return 0, nil
}
