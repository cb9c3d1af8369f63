package main

import "fmt"

func init() {
	register(&command{
		names:       []string{"exists"},
		optionsHelp: "[LayerOrImageOrContainerNameOrID [...]]",
		usage:       "Check if a layer or image or container exists",
		minArgs:     1,
		maxArgs:     -1,
		flags: func(fs *flagSet, o *options) {
			fs.boolVar(&o.quiet, []string{"--quiet", "-q"}, "Don't print names")
			fs.boolVar(&o.existLayer, []string{"--layer", "-l"}, "Only succeed if the match is a layer")
			fs.boolVar(&o.existImage, []string{"--image", "-i"}, "Only succeed if the match is an image")
			fs.boolVar(&o.existContainer, []string{"--container", "-c"}, "Only succeed if the match is a container")
			jsonFlag(fs, o)
		},
		action: cmdExists,
	})
}

// cmdExists answers with its exit status: 0 if every argument exists (as
// a layer with -l, as an image with -i, as a container with -c), 1
// otherwise. It prints "ARG: true|false" for each argument, whether it
// exists as anything, as containers-storage does.
func cmdExists(c *cli, args []string) (int, error) {
	exists := map[string]bool{}
	var order []string
	missing := false
	for _, what := range args {
		ok := c.store.Exists(what)
		if _, dup := exists[what]; !dup {
			order = append(order, what)
		}
		exists[what] = ok
		if c.opts.existLayer {
			if l, err := c.store.Layer(what); l == nil || err != nil {
				ok = false
			}
		}
		if c.opts.existImage {
			if i, err := c.store.Image(what); i == nil || err != nil {
				ok = false
			}
		}
		if c.opts.existContainer {
			if ctr, err := c.container(what); ctr == nil || err != nil {
				ok = false
			}
		}
		missing = missing || !ok
	}
	if c.opts.json {
		if _, err := c.outputJSON(exists); err != nil {
			return 1, err
		}
	} else if !c.opts.quiet {
		for _, what := range order {
			fmt.Fprintf(c.stdout, "%s: %v\n", what, exists[what])
		}
	}
	if missing {
		return 1, nil
	}
	return 0, nil
}
