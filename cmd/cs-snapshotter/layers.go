package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

func init() {
	register(
		&command{
			names:       []string{"layers"},
			optionsHelp: "[options [...]]",
			usage:       "List layers",
			flags: func(fs *flagSet, o *options) {
				fs.boolVar(&o.tree, []string{"--tree", "-t"}, "Use a tree")
				fs.boolVar(&o.quiet, []string{"--quick", "-q"}, "Just the IDs")
				jsonFlag(fs, o)
			},
			action: cmdLayers,
		},
		&command{
			names:       []string{"layer"},
			optionsHelp: "[options [...]] layerNameOrID [...]",
			usage:       "Examine a layer",
			minArgs:     1,
			maxArgs:     -1,
			flags:       jsonFlag,
			action:      cmdLayer,
		},
	)
}

// outputJSON writes v as one line of JSON, as containers-storage does.
func (c *cli) outputJSON(v any) (int, error) {
	if err := json.NewEncoder(c.stdout).Encode(v); err != nil {
		return 1, err
	}
	return 0, nil
}

func cmdLayers(c *cli, _ []string) (int, error) {
	layers, err := c.store.Layers()
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		if len(layers) == 0 {
			return c.outputJSON(nil) // null, as containers-storage prints
		}
		return c.outputJSON(layers)
	}
	if c.opts.tree {
		var nodes []treeNode
		for _, l := range layers {
			n := treeNode{parent: l.Parent, id: l.ID}
			if n.parent == "" {
				n.parent = "(base)"
			}
			for _, name := range l.Names {
				n.notes = append(n.notes, "name: "+name)
			}
			if l.MountPoint != "" {
				n.notes = append(n.notes, "mount: "+l.MountPoint)
			}
			nodes = append(nodes, n)
		}
		printTree(c.stdout, nodes)
		return 0, nil
	}
	for _, l := range layers {
		fmt.Fprintf(c.stdout, "%s\n", l.ID)
		if c.opts.quiet {
			continue
		}
		for _, name := range l.Names {
			fmt.Fprintf(c.stdout, "\tname: %s\n", name)
		}
	}
	return 0, nil
}

// cmdLayer prints the layers it finds; the status is 1 unless it found
// every one.
func cmdLayer(c *cli, args []string) (int, error) {
	matched := []*storage.Layer{}
	for _, arg := range args {
		l, err := c.store.Layer(arg)
		if err != nil {
			errorf(c.stderr, "%s: %v", arg, err)
			continue
		}
		matched = append(matched, l)
	}
	if c.opts.json {
		if _, err := c.outputJSON(matched); err != nil {
			return 1, err
		}
	} else {
		for _, l := range matched {
			fmt.Fprintf(c.stdout, "ID: %s\n", l.ID)
			// (containers-storage prints UID and GID mappings here; the
			// store keeps layers unmapped.)
			if l.Parent != "" {
				fmt.Fprintf(c.stdout, "Parent: %s\n", l.Parent)
			}
			for _, name := range l.Names {
				fmt.Fprintf(c.stdout, "Name: %s\n", name)
			}
			if l.ReadOnly {
				fmt.Fprintf(c.stdout, "Read Only: true\n")
			}
		}
	}
	if len(matched) != len(args) {
		return 1, nil
	}
	return 0, nil
}

// The tree of `layers -t`: each layer under its parent, "(base)" at the
// top, notes under each layer, drawn with box characters:
//
//	(base)
//	├─a
//	│ name: x
//	│ └─b
//	└─c
type treeNode struct {
	parent, id string
	notes      []string
}

func printTree(w io.Writer, nodes []treeNode) {
	for len(nodes) > 0 {
		root := treeRoot(nodes)
		fmt.Fprintf(w, "%s\n", root)
		left := printSubtree(w, root, nodes, 0, nil)
		if len(left) == len(nodes) {
			return // a cycle: nothing hangs from the root
		}
		nodes = left
	}
}

// treeRoot picks a parent that is no node's id: the one with the fewest
// children, the first such in nodes' order on a tie.
func treeRoot(nodes []treeNode) string {
	isID := map[string]bool{}
	children := map[string]int{}
	var order []string
	for _, n := range nodes {
		isID[n.id] = true
		if children[n.parent] == 0 {
			order = append(order, n.parent)
		}
		children[n.parent]++
	}
	best := ""
	for _, p := range order {
		if isID[p] {
			continue
		}
		if best == "" || children[p] < children[best] {
			best = p
		}
	}
	return best
}

// printSubtree prints root's children and their subtrees at indent;
// bars lists the columns where a vertical line continues. It returns the
// nodes it did not print.
func printSubtree(w io.Writer, root string, nodes []treeNode, indent int, bars []int) []treeNode {
	var children, rest []treeNode
	for _, n := range nodes {
		if n.parent == root {
			children = append(children, n)
		} else {
			rest = append(rest, n)
		}
	}
	for i, child := range children {
		prefix := []rune(strings.Repeat(" ", indent))
		for _, col := range bars {
			prefix[col] = '│'
		}
		last := i == len(children)-1
		branch, noteBar, sub := "├", "│", append(append([]int(nil), bars...), indent)
		if last {
			branch, noteBar, sub = "└", " ", bars
		}
		fmt.Fprintf(w, "%s%s─%s\n", string(prefix), branch, child.id)
		for _, note := range child.notes {
			fmt.Fprintf(w, "%s%s %s\n", string(prefix), noteBar, note)
		}
		rest = printSubtree(w, child.id, rest, indent+2, sub)
	}
	return rest
}
