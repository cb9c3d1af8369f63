package main

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"

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

// Set at build time:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)"
var (
	version = "dev"
	commit  = "unknown"
)

// containerdAPIModule is the module of containerd's gRPC API the daemon
// serves.
const containerdAPIModule = "github.com/containerd/containerd/api"

// buildVersions returns cs-snapshotter's version and git commit (the
// -ldflags values, else what the Go toolchain recorded), the Go version
// and the containerd API module version it was built with.
func buildVersions() [][2]string {
	v, c, api := version, commit, "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		var rev, modified string
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if c == "unknown" && rev != "" {
			c = rev
			if modified == "true" {
				c += "-dirty"
			}
		}
		for _, m := range info.Deps {
			if m.Path == containerdAPIModule {
				if m.Replace != nil {
					m = m.Replace
				}
				api = m.Version
			}
		}
	}
	return [][2]string{
		{"cs-snapshotter Version", v},
		{"Git Commit", c},
		{"Go Version", runtime.Version()},
		{"containerd API Version", api},
	}
}

// cmdVersion prints containers-storage's version lines, then
// cs-snapshotter's own.
func cmdVersion(c *cli, _ []string) (int, error) {
	version, err := c.store.Version()
	if err != nil {
		return 1, fmt.Errorf("version: %w", err)
	}
	version = append(version, buildVersions()...)
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
