package main

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

type testFlags struct {
	json, quiet, tree bool
	name, file        string
	list              []string
}

func newTestFlagSet(f *testFlags) *flagSet {
	fs := newFlagSet("test")
	fs.boolVar(&f.json, []string{"--json", "-j"}, "json")
	fs.boolVar(&f.quiet, []string{"--quiet", "-q"}, "quiet")
	fs.boolVar(&f.tree, []string{"--tree", "-t"}, "tree")
	fs.stringVar(&f.name, []string{"--id", "-i"}, "id")
	fs.stringVar(&f.file, []string{"--file", "-f"}, "file")
	fs.listVar(&f.list, []string{"--name", "-n"}, "names")
	return fs
}

func TestFlagParse(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want testFlags
		rest []string
	}{
		{nil, testFlags{}, nil},
		{[]string{"-j"}, testFlags{json: true}, nil},
		{[]string{"--json"}, testFlags{json: true}, nil},
		{[]string{"-json"}, testFlags{json: true}, nil}, // one dash, long name
		{[]string{"-qj"}, testFlags{json: true, quiet: true}, nil},
		{[]string{"-qjt", "x"}, testFlags{json: true, quiet: true, tree: true}, []string{"x"}},
		{[]string{"-qi", "ID", "arg"}, testFlags{quiet: true, name: "ID"}, []string{"arg"}},
		{[]string{"--json=false", "-q=true"}, testFlags{quiet: true}, nil},
		{[]string{"-i", "a", "--id", "b"}, testFlags{name: "b"}, nil},
		{[]string{"-i=a", "--file=x=y"}, testFlags{name: "a", file: "x=y"}, nil},
		{[]string{"-n", "a", "--name", "b", "-n=c"}, testFlags{list: []string{"a", "b", "c"}}, nil},
		{[]string{"-i", "-j"}, testFlags{name: "-j"}, nil}, // a value may look like a flag
		{[]string{"arg", "-j"}, testFlags{}, []string{"arg", "-j"}},
		{[]string{"-j", "--", "-q"}, testFlags{json: true}, []string{"-q"}},
		{[]string{"-", "-q"}, testFlags{}, []string{"-", "-q"}},
	} {
		var f testFlags
		fs := newTestFlagSet(&f)
		if err := fs.parse(tc.args); err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if !reflect.DeepEqual(f, tc.want) {
			t.Errorf("%q: flags %+v, want %+v", tc.args, f, tc.want)
		}
		if len(fs.args) != len(tc.rest) || (len(tc.rest) > 0 && !reflect.DeepEqual(fs.args, tc.rest)) {
			t.Errorf("%q: arguments %q, want %q", tc.args, fs.args, tc.rest)
		}
	}
}

func TestFlagParseErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "flag provided but not defined: --bogus"},
		{[]string{"-z"}, "flag provided but not defined: -z"},
		{[]string{"-jz"}, "flag provided but not defined: -jz"},
		{[]string{"-ij"}, "flag provided but not defined: -ij"}, // -i takes a value: only last in a group
		{[]string{"-i"}, "flag needs an argument: -i"},
		{[]string{"--file"}, "flag needs an argument: --file"},
		{[]string{"--json=maybe"}, `invalid boolean value "maybe" for --json`},
		{[]string{"--=x"}, "bad flag syntax: --=x"},
	} {
		var f testFlags
		err := newTestFlagSet(&f).parse(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.want)
		}
	}
	for _, h := range []string{"-h", "-help", "--help"} {
		var f testFlags
		if err := newTestFlagSet(&f).parse([]string{"-j", h}); !errors.Is(err, errHelp) {
			t.Errorf("%s: %v, want errHelp", h, err)
		}
	}
}

func TestFlagIsSet(t *testing.T) {
	var f testFlags
	fs := newTestFlagSet(&f)
	if err := fs.parse([]string{"-i", "x"}); err != nil {
		t.Fatal(err)
	}
	if !fs.isSet("--id") || !fs.isSet("-i") || fs.isSet("--json") {
		t.Errorf("isSet: --id %v -i %v --json %v", fs.isSet("--id"), fs.isSet("-i"), fs.isSet("--json"))
	}
}

func TestPrintDefaults(t *testing.T) {
	var f testFlags
	f.name = "default-id"
	fs := newTestFlagSet(&f)
	var b bytes.Buffer
	fs.printDefaults(&b)
	want := `
  --file, -f             file
  --id, -i=default-id    id
  --json, -j             json
  --name, -n             names
  --quiet, -q            quiet
  --tree, -t             tree
`
	if b.String() != want {
		t.Errorf("printDefaults:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestTree draws the tree containers-storage's own test draws.
func TestTree(t *testing.T) {
	nodes := []treeNode{
		{"F", "H", nil}, {"F", "I", nil}, {"F", "J", nil},
		{"A", "B", nil}, {"A", "C", nil}, {"A", "K", nil},
		{"C", "F", nil}, {"C", "G", []string{"beware", "the", "scary", "thing"}}, {"C", "L", nil},
		{"B", "D", nil}, {"B", "E", nil}, {"B", "M", nil},
		{"K", "N", nil},
		{"W", "X", nil}, {"Y", "Z", nil}, {"X", "Y", nil},
	}
	var b bytes.Buffer
	printTree(&b, nodes)
	want := `W
└─X
  └─Y
    └─Z
A
├─B
│ ├─D
│ ├─E
│ └─M
├─C
│ ├─F
│ │ ├─H
│ │ ├─I
│ │ └─J
│ ├─G
│ │ beware
│ │ the
│ │ scary
│ │ thing
│ └─L
└─K
  └─N
`
	if b.String() != want {
		t.Errorf("tree:\n%s\nwant:\n%s", b.String(), want)
	}
}
