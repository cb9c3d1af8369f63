// Command cs-snapshotter runs the daemon containerd uses as a proxy
// snapshotter and content store.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
)

type command struct {
	summary string
	run     func(ctx context.Context, args []string) error
}

var commands = map[string]command{
	"serve":  {"run the daemon", runServe},
	"config": {"print the default configuration (config default)", runConfig},
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: cs-snapshotter COMMAND [OPTIONS]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", name, commands[name].summary)
	}
}

func main() {
	if len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "-h") || strings.HasPrefix(os.Args[1], "--h") || os.Args[1] == "help" {
		usage()
		os.Exit(2)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "cs-snapshotter: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err := cmd.run(context.Background(), os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "cs-snapshotter %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
