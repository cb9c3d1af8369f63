package main

func init() {
	register(
		&command{
			names:       []string{"delete"},
			optionsHelp: "[LayerOrImageOrContainerNameOrID [...]]",
			usage:       "Delete a layer or image or container, with no safety checks",
			minArgs:     1,
			maxArgs:     -1,
			flags:       jsonFlag,
			action: func(c *cli, args []string) (int, error) {
				return c.deleteEach(args, c.store.Delete)
			},
		},
		&command{
			names:       []string{"delete-layer", "deletelayer"},
			optionsHelp: "[LayerNameOrID [...]]",
			usage:       "Delete a layer, with safety checks",
			minArgs:     1,
			maxArgs:     -1,
			flags:       jsonFlag,
			action: func(c *cli, args []string) (int, error) {
				return c.deleteEach(args, c.store.DeleteLayer)
			},
		},
	)
}

// deleteEach deletes every argument, reporting each failure ("ARG: error"
// on stderr, or {"ARG": "error" or ""} with --json); 1 if any failed.
func (c *cli) deleteEach(args []string, del func(string) error) (int, error) {
	result := map[string]string{}
	var failed []string
	for _, what := range args {
		if _, done := result[what]; done {
			continue
		}
		result[what] = ""
		if err := del(what); err != nil {
			result[what] = err.Error()
			failed = append(failed, what)
		}
	}
	if c.opts.json {
		if _, err := c.outputJSON(result); err != nil {
			return 1, err
		}
	} else {
		for _, what := range failed {
			errorf(c.stderr, "%s: %s", what, result[what])
		}
	}
	if len(failed) > 0 {
		return 1, nil
	}
	return 0, nil
}
