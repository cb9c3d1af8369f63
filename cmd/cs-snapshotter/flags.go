package main

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// A flag parser with the command-line syntax of Docker's mflag, which the
// containers-storage command uses:
//
//	--name value  --name=value   a long name (two dashes)
//	-x value      -x=value       a one-letter name (one dash)
//	-qj                          one-letter booleans grouped; the last may
//	                             take a value from the next argument
//	--flag=false                 the only way to turn a boolean off
//
// Parsing stops at the first argument that is not a flag ("-" is not a
// flag) or after "--". As a convenience a long name is also accepted with
// one dash (-json) when the letters are not a valid group.

// errHelp is returned by parse for -h, -help and --help when the flag set
// does not define them.
var errHelp = errors.New("help requested")

type flagValue interface {
	String() string
	Set(string) error
}

type boolValue struct{ p *bool }

func (b boolValue) String() string { return strconv.FormatBool(*b.p) }
func (b boolValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*b.p = v
	return nil
}

type stringValue struct{ p *string }

func (s stringValue) String() string     { return *s.p }
func (s stringValue) Set(v string) error { *s.p = v; return nil }

// listValue collects every occurrence of a repeatable flag.
type listValue struct{ p *[]string }

func (l listValue) String() string     { return fmt.Sprintf("%v", *l.p) }
func (l listValue) Set(v string) error { *l.p = append(*l.p, v); return nil }

type flagDef struct {
	names    []string // with their dashes: "--graph", "-g"
	usage    string
	value    flagValue
	isBool   bool
	defValue string
}

type flagSet struct {
	name   string
	defs   []*flagDef
	lookup map[string]*flagDef
	seen   map[*flagDef]bool
	args   []string
}

func newFlagSet(name string) *flagSet {
	return &flagSet{name: name, lookup: map[string]*flagDef{}, seen: map[*flagDef]bool{}}
}

func (fs *flagSet) add(names []string, usage string, v flagValue, isBool bool) {
	d := &flagDef{names: names, usage: usage, value: v, isBool: isBool, defValue: v.String()}
	for _, n := range names {
		if !strings.HasPrefix(n, "-") || (!strings.HasPrefix(n, "--") && len(n) != 2) {
			panic(fmt.Sprintf("flag name %q: want --long or -x", n))
		}
		if _, dup := fs.lookup[n]; dup {
			panic(fmt.Sprintf("flag %s defined twice in %s", n, fs.name))
		}
		fs.lookup[n] = d
	}
	fs.defs = append(fs.defs, d)
}

func (fs *flagSet) boolVar(p *bool, names []string, usage string) {
	fs.add(names, usage, boolValue{p}, true)
}

func (fs *flagSet) stringVar(p *string, names []string, usage string) {
	fs.add(names, usage, stringValue{p}, false)
}

func (fs *flagSet) listVar(p *[]string, names []string, usage string) {
	fs.add(names, usage, listValue{p}, false)
}

// isSet reports whether the flag named name was given on the command line.
func (fs *flagSet) isSet(name string) bool {
	d, ok := fs.lookup[name]
	return ok && fs.seen[d]
}

// parse parses flags from args; the remaining arguments are in fs.args.
func (fs *flagSet) parse(args []string) error {
	for len(args) > 0 {
		s := args[0]
		if s == "--" {
			args = args[1:]
			break
		}
		if len(s) < 2 || s[0] != '-' {
			break
		}
		args = args[1:]
		name, value, hasValue := strings.Cut(s, "=")
		if name == "-" || name == "--" {
			return fmt.Errorf("bad flag syntax: %s", s)
		}
		var err error
		if strings.HasPrefix(name, "--") {
			d := fs.lookup[name]
			if d == nil {
				if name == "--help" {
					return errHelp
				}
				return fmt.Errorf("flag provided but not defined: %s", name)
			}
			args, err = fs.apply(d, name, value, hasValue, args)
		} else if d := fs.lookup[name]; d != nil {
			args, err = fs.apply(d, name, value, hasValue, args)
		} else if name == "-h" || name == "-help" {
			return errHelp
		} else if group := fs.group(name[1:]); group != nil && !hasValue {
			for i, d := range group {
				letter := "-" + name[1+i:2+i]
				// Only the last letter may take a value (the next argument).
				if args, err = fs.apply(d, letter, "", false, args); err != nil {
					break
				}
			}
		} else if d := fs.lookup["-"+name]; d != nil {
			args, err = fs.apply(d, "-"+name, value, hasValue, args)
		} else {
			return fmt.Errorf("flag provided but not defined: %s", name)
		}
		if err != nil {
			return err
		}
	}
	fs.args = args
	return nil
}

// group resolves letters as grouped one-letter flags: every letter defined,
// all but the last boolean. nil if they are not a valid group.
func (fs *flagSet) group(letters string) []*flagDef {
	if len(letters) < 2 {
		return nil
	}
	var group []*flagDef
	for i := 0; i < len(letters); i++ {
		d := fs.lookup["-"+letters[i:i+1]]
		if d == nil || (!d.isBool && i != len(letters)-1) {
			return nil
		}
		group = append(group, d)
	}
	return group
}

func (fs *flagSet) apply(d *flagDef, name, value string, hasValue bool, args []string) ([]string, error) {
	if d.isBool && !hasValue {
		value = "true"
	} else if !hasValue {
		if len(args) == 0 {
			return args, fmt.Errorf("flag needs an argument: %s", name)
		}
		value, args = args[0], args[1:]
	}
	if err := d.value.Set(value); err != nil {
		if d.isBool {
			return args, fmt.Errorf("invalid boolean value %q for %s: %v", value, name, err)
		}
		return args, fmt.Errorf("invalid value %q for flag %s: %v", value, name, err)
	}
	fs.seen[d] = true
	return args, nil
}

// printDefaults lists the flags, sorted by name, as mflag does:
//
//	--graph, -g=/var/lib/cs-snapshotter    Root of the storage tree
func (fs *flagSet) printDefaults(w io.Writer) {
	defs := append([]*flagDef(nil), fs.defs...)
	sort.Slice(defs, func(i, j int) bool {
		return strings.TrimLeft(defs[i].names[0], "-") < strings.TrimLeft(defs[j].names[0], "-")
	})
	tw := tabwriter.NewWriter(w, 20, 1, 3, ' ', 0)
	if len(defs) > 0 {
		fmt.Fprintln(tw)
	}
	for _, d := range defs {
		line := "  " + strings.Join(d.names, ", ")
		if d.defValue != "" && d.defValue != "false" && d.defValue != "[]" {
			line += "=" + d.defValue
		}
		fmt.Fprintf(tw, "%s\t %s\n", line, d.usage)
	}
	tw.Flush()
}
