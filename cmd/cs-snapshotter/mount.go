package main

import (
	"fmt"
)

// The JSON shapes of containers-storage's mount, unmount and mounted.
type mountResult struct {
	ID         string `json:"id"`
	MountPoint string `json:"mountpoint"`
	Error      string `json:"error"`
}

type idError struct {
	ID    string `json:"id"`
	Error string `json:"error"`
}

func init() {
	register(
		&command{
			names:       []string{"mount"},
			optionsHelp: "[options [...]] LayerOrContainerNameOrID",
			usage:       "Mount a layer or container",
			minArgs:     1,
			maxArgs:     -1,
			flags: func(fs *flagSet, o *options) {
				fs.stringVar(&o.mountOpts, []string{"--opt", "-o"}, "Mount Options")
				fs.stringVar(&o.label, []string{"--label", "-l"}, "Mount Label")
				fs.boolVar(&o.readOnly, []string{"--read-only", "--ro", "-r"}, "Mount image readonly")
				jsonFlag(fs, o)
			},
			action: cmdMount,
		},
		&command{
			names:       []string{"unmount", "umount"},
			optionsHelp: "LayerOrContainerNameOrID",
			usage:       "Unmount an image, layer or container",
			minArgs:     1,
			maxArgs:     -1,
			flags: func(fs *flagSet, o *options) {
				jsonFlag(fs, o)
				fs.boolVar(&o.force, []string{"--force", "-f"}, "Force the umount")
			},
			action: cmdUnmount,
		},
		&command{
			names:       []string{"mounted"},
			optionsHelp: "LayerOrContainerNameOrID",
			usage:       "Check if a file system is mounted",
			minArgs:     1,
			maxArgs:     -1,
			flags:       jsonFlag,
			action:      cmdMounted,
		},
	)
}

// cmdMount mounts each argument and prints its mount point (an empty line
// for one that failed, with the error on stderr); 1 if any failed.
func cmdMount(c *cli, args []string) (int, error) {
	results := []mountResult{}
	for _, arg := range args {
		var mp string
		var err error
		if c.opts.readOnly {
			mp, err = c.store.MountImage(arg, []string{"noexec", "nosuid"}, c.opts.label)
		} else {
			mp, err = c.store.Mount(arg, c.opts.label)
		}
		r := mountResult{ID: arg, MountPoint: mp}
		if err != nil {
			r.Error = err.Error()
		}
		results = append(results, r)
	}
	failed := false
	for _, r := range results {
		failed = failed || r.Error != ""
	}
	if c.opts.json {
		if _, err := c.outputJSON(results); err != nil {
			return 1, err
		}
	} else {
		for _, r := range results {
			if r.Error != "" {
				errorf(c.stderr, "%s while mounting %s", r.Error, r.ID)
			}
			fmt.Fprintf(c.stdout, "%s\n", r.MountPoint)
		}
	}
	if failed {
		return 1, nil
	}
	return 0, nil
}

// cmdUnmount unmounts each argument once (every time with --force) and
// says when it is no longer mounted; 1 if any failed.
func cmdUnmount(c *cli, args []string) (int, error) {
	results := []idError{}
	failed := false
	for _, arg := range args {
		stillMounted, err := c.store.Unmount(arg, c.opts.force)
		r := idError{ID: arg}
		if err != nil {
			// Perhaps an image mounted with mount -r; as
			// containers-storage, the first error is the one told.
			if _, ierr := c.store.UnmountImage(arg, c.opts.force); ierr != nil {
				r.Error = err.Error()
				failed = true
			}
		} else if !stillMounted {
			// Printed with --json too, before the JSON, as
			// containers-storage does.
			fmt.Fprintf(c.stdout, "%s mountpoint unmounted\n", arg)
		}
		results = append(results, r)
	}
	return c.reportIDErrors(results, failed, "%s while unmounting %s")
}

// cmdMounted prints "ID mounted" for each argument that is; 1 if any
// could not be checked.
func cmdMounted(c *cli, args []string) (int, error) {
	results := []idError{}
	failed := false
	for _, arg := range args {
		n, err := c.store.Mounted(arg)
		r := idError{ID: arg}
		if err != nil {
			r.Error = err.Error()
			failed = true
		} else if n > 0 {
			fmt.Fprintf(c.stdout, "%s mounted\n", arg) // with --json too, as above
		}
		results = append(results, r)
	}
	return c.reportIDErrors(results, failed, "%s checking if %s is mounted")
}

// reportIDErrors ends unmount and mounted: the results as JSON, or each
// error on stderr (format takes the error, then the ID); status 1 if any
// failed.
func (c *cli) reportIDErrors(results []idError, failed bool, format string) (int, error) {
	if c.opts.json {
		if _, err := c.outputJSON(results); err != nil {
			return 1, err
		}
	} else {
		for _, r := range results {
			if r.Error != "" {
				errorf(c.stderr, format, r.Error, r.ID)
			}
		}
	}
	if failed {
		return 1, nil
	}
	return 0, nil
}
