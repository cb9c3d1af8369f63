package main

import (
	"errors"
	"fmt"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

func init() {
	register(
		&command{
			names:  []string{"status"},
			usage:  "Check on graph driver status",
			flags:  jsonFlag,
			action: cmdStatus,
		},
		&command{
			names:  []string{"version"},
			usage:  "Return cs-snapshotter version information",
			flags:  jsonFlag,
			action: cmdVersion,
		},
		&command{
			names: []string{"wipe"},
			usage: "Wipe all layers, images, and containers",
			flags: jsonFlag,
			action: func(c *cli, _ []string) (int, error) {
				return c.jsonResult(c.store.Wipe())
			},
		},
		&command{
			names: []string{"shutdown"},
			usage: "Shut down layer storage",
			flags: func(fs *flagSet, o *options) {
				jsonFlag(fs, o)
				fs.boolVar(&o.force, []string{"--force", "-f"}, "Unmount mounted layers first")
			},
			action: func(c *cli, _ []string) (int, error) {
				_, err := c.store.Shutdown(c.opts.force)
				// Shutdown releases the store unless it refused because
				// a layer is mounted.
				c.closed = err == nil || c.opts.force || !errors.Is(err, storage.ErrLayerUsedByContainer)
				return c.jsonResult(err)
			},
		},
	)
}

// printPairs prints name: value lines on stderr, as containers-storage's
// status and version do.
func (c *cli) printPairs(pairs [][2]string) {
	for _, p := range pairs {
		fmt.Fprintf(c.stderr, "%s: %s\n", p[0], p[1])
	}
}

func cmdStatus(c *cli, _ []string) (int, error) {
	status, err := c.store.Status()
	if err != nil {
		return 1, fmt.Errorf("status: %w", err)
	}
	pairs := append([][2]string{
		{"Root", c.store.GraphRoot()},
		{"Run Root", c.store.RunRoot()},
		{"Driver Name", c.store.GraphDriverName()},
		{"Driver Options", fmt.Sprintf("%v", c.store.GraphOptions())},
	}, status...)
	if c.opts.json {
		return c.outputJSON(pairs)
	}
	c.printPairs(pairs)
	return 0, nil
}

func cmdVersion(c *cli, _ []string) (int, error) {
	version, err := c.store.Version()
	if err != nil {
		return 1, fmt.Errorf("version: %w", err)
	}
	if c.opts.json {
		return c.outputJSON(version)
	}
	c.printPairs(version)
	return 0, nil
}

// jsonResult ends wipe and shutdown: nothing on success (`""` with
// --json), the error otherwise (`{}` with --json, as containers-storage
// encodes an error value, and the message on stderr).
func (c *cli) jsonResult(err error) (int, error) {
	if err != nil {
		if c.opts.json {
			if _, err2 := c.outputJSON(struct{}{}); err2 != nil {
				return 1, err2
			}
		}
		return 1, fmt.Errorf("%s: %w", c.name, err)
	}
	if c.opts.json {
		return c.outputJSON("")
	}
	return 0, nil
}
