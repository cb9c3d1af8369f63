package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLIContainersEmbedded(t *testing.T) {
	testContainerCommands(t, newCLIStore(t))
}

func TestCLIContainersWithDaemon(t *testing.T) {
	s := newCLIStore(t)
	p := s.startDaemon()
	testContainerCommands(t, s)
	select {
	case <-p.exited:
		t.Fatalf("daemon exited: %v\n%s", p.err, p.stderr)
	default:
	}
}

// storeState is every layer, image and container as JSON: what a failing
// command must leave as it was.
func (s *cliStore) storeState() string {
	s.t.Helper()
	return s.ok("layers", "--json") + s.ok("images", "--json") + s.ok("containers", "--json")
}

// cfails runs args, which must exit 1 with a one-line error on stderr
// saying want, and leave every layer, image and container as it was.
func (s *cliStore) cfails(stdin []byte, want string, args ...string) result {
	s.t.Helper()
	before := s.storeState()
	r := s.cs(stdin, args...)
	if r.code != 1 {
		s.t.Errorf("%v: %s; want exit 1", args, r)
	}
	if !strings.Contains(r.stderr, want) || !strings.HasPrefix(r.stderr, "cs-snapshotter: ") || strings.Count(r.stderr, "\n") != 1 {
		s.t.Errorf("%v: stderr %q: want one line saying %q", args, r.stderr, want)
	}
	if after := s.storeState(); after != before {
		s.t.Errorf("%v changed the store:\nbefore %s\nafter  %s", args, before, after)
	}
	return r
}

// createdContainer checks create-container's text output (the ID on a
// line, then each name after a tab, with no newline, as containers-storage
// prints it) and returns the ID.
func createdContainer(t *testing.T, out string, names ...string) string {
	t.Helper()
	id, rest, ok := strings.Cut(out, "\n")
	if !ok || !hexID.MatchString(id) {
		t.Fatalf("create-container output %q: want an ID on the first line", out)
	}
	want := ""
	for _, n := range names {
		want += "\t" + n
	}
	if rest != want {
		t.Errorf("create-container output %q: want names %q after the ID", out, want)
	}
	return id
}

type jsonContainer struct {
	ID             string            `json:"id"`
	Names          []string          `json:"names"`
	Image          string            `json:"image"`
	Layer          string            `json:"layer"`
	Metadata       string            `json:"metadata"`
	BigDataNames   []string          `json:"big-data-names"`
	BigDataSizes   map[string]int64  `json:"big-data-sizes"`
	BigDataDigests map[string]string `json:"big-data-digests"`
	Created        string            `json:"created"`
	Flags          map[string]any    `json:"flags"`
}

func (s *cliStore) container(name string) jsonContainer {
	s.t.Helper()
	var list []jsonContainer
	decodeJSON(s.t, s.ok("container", "--json", name), &list)
	if len(list) != 1 {
		s.t.Fatalf("container --json %s: %v", name, list)
	}
	return list[0]
}

// testContainerCommands runs the container commands, and the generic ones
// on containers, through one store, checking outputs, exit statuses and
// that failing commands change nothing.
func testContainerCommands(t *testing.T, s *cliStore) {
	s = s.with(t)
	dir := t.TempDir()
	writeFile := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := createdID(t, s.ok("create-layer", "-r", "-n", "ctr-base"), "ctr-base")
	img := createdID(t, s.ok("create-image", "-n", "cimg", "ctr-base"), "cimg")

	s.expect(0, "", "containers")
	s.expect(0, "[]\n", "containers", "--json")

	// create-container
	c1 := createdContainer(t, s.ok("create-container", "-n", "w1", "-n", "w2", "-m", "md1", "cimg"), "w1", "w2")
	jID := strings.Repeat("cd", 32)
	var j jsonContainer
	decodeJSON(t, s.ok("createcontainer", "-j", "-f", writeFile("md", []byte("from a file")), "--id", jID, "-n", "j1", img), &j)
	if j.ID != jID || len(j.Names) != 1 || j.Names[0] != "j1" || j.Image != img || !hexID.MatchString(j.Layer) || j.Layer == base || j.Metadata != "from a file" || j.Created == "" {
		t.Errorf("create-container -j: %+v", j)
	}
	if j.Flags["MountLabel"] != "" || j.Flags["ProcessLabel"] != "" {
		t.Errorf("create-container -j: flags %v, want empty SELinux labels as containers-storage records them", j.Flags)
	}
	noimg := createdContainer(t, s.ok("create-container", "--volatile", ""))
	if v := s.container(noimg); v.Image != "" || v.Flags["Volatile"] != true {
		t.Errorf("create-container --volatile \"\": %+v", v)
	}
	s.cfails(nil, "that name is already in use", "create-container", "-n", "w1", "cimg")
	s.cfails(nil, "that name is already in use", "create-container", "-n", "new", "-n", "j1", "cimg")
	s.cfails(nil, "that ID is already in use", "create-container", "--id", jID, "cimg")
	s.cfails(nil, "image not known", "create-container", "-n", "orphan", "nope")
	s.cfails(nil, "image not known", "create-container", "-n", "orphan", "ctr-base") // a layer
	s.cfails(nil, "create-container: more arguments required", "create-container")
	s.cfails(nil, "create-container: too many arguments (cimg cimg)", "create-container", "cimg", "cimg")
	s.cfails(nil, "ID mappings are not supported", "create-container", "--uidmap", "0:1000:1", "cimg")
	s.cfails(nil, "host uid map specified along with UID mapping", "create-container", "--hostuidmap", "--uidmap", "0:1000:1", "cimg")
	s.cfails(nil, "no such file", "create-container", "-f", filepath.Join(dir, "missing"), "cimg")
	s.cfails(nil, "flag provided but not defined: --bogus", "create-container", "--bogus", "cimg")
	s.expect(1, "orphan: false\n", "exists", "orphan")

	// containers
	out := s.ok("containers")
	for _, want := range []string{c1 + "\n\tname: w1\n\tname: w2\n", jID + "\n\tname: j1\n", noimg + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("containers: %q does not list %q", out, want)
		}
	}
	if strings.Count(out, "\n") != 6 {
		t.Errorf("containers: %q, want 3 containers and 3 names", out)
	}
	var all []jsonContainer
	decodeJSON(t, s.ok("containers", "-j"), &all)
	if len(all) != 3 {
		t.Errorf("containers -j: %+v", all)
	}
	s.cfails(nil, "containers: too many arguments (extra)", "containers", "extra")

	// container
	l1 := s.container("w1").Layer
	want := "ID: " + c1 + "\nName: w1\nName: w2\nImage: " + img + "\nImage name: cimg\nSize: 0\nLayer: " + l1 + "\n"
	s.expect(0, want, "container", "w2")
	s.expect(1, want, "container", "nope", c1)
	s.expect(1, "[]\n", "container", "-j", "nope")
	s.expect(1, "", "container", "cimg") // an image
	s.expect(0, "ID: "+noimg+"\nImage: \nSize: 0\nLayer: "+s.container(noimg).Layer+"\n", "container", noimg)
	if c := s.container(c1[:12]); c.ID != c1 || c.Metadata != "md1" {
		t.Errorf("container by ID prefix: %+v", c)
	}
	s.cfails(nil, "container: more arguments required", "container")

	// Big data.
	s.expect(0, "", "list-container-data", "w1")
	s.expect(0, "[]\n", "list-container-data", "-j", "w1")
	s.okIn([]byte("hello\n"), "set-container-data", "w1", "greeting")
	s.ok("setcontainerdata", "-f", writeFile("cfg", []byte("config!")), c1, "config")
	s.okIn([]byte("hello again\n"), "set-container-data", "j1", "greeting")
	s.expect(0, "config\ngreeting\n", "list-container-data", "w2")
	s.expect(0, "[\"config\",\"greeting\"]\n", "listcontainerdata", "--json", c1)
	s.expect(0, "hello\n", "get-container-data", "w1", "greeting")
	s.expect(0, "hello again\n", "get-container-data", "j1", "greeting")
	got := filepath.Join(dir, "got")
	s.expect(0, "", "getcontainerdata", "--file", got, "w1", "config")
	if b, err := os.ReadFile(got); err != nil || string(b) != "config!" {
		t.Errorf("get-container-data -f: %q %v", b, err)
	}
	s.expect(0, "6\n", "get-container-data-size", "w1", "greeting")
	s.expect(0, "7\n", "getcontainerdatasize", c1, "config")
	s.expect(0, sha([]byte("hello\n"))+"\n", "get-container-data-digest", "w1", "greeting")
	s.expect(0, sha([]byte("config!"))+"\n", "getcontainerdatadigest", "w2", "config")
	s.okIn([]byte("replaced"), "set-container-data", "w1", "config")
	s.expect(0, "replaced", "get-container-data", "w1", "config")
	s.expect(0, "8\n", "get-container-data-size", "w1", "config")
	s.cfails(nil, "", "get-container-data", "w1", "nokey")
	s.cfails(nil, "size is not known", "get-container-data-size", "w1", "nokey")
	s.cfails(nil, "could not compute digest of item", "get-container-data-digest", "w1", "nokey")
	s.cfails(nil, "container not known", "get-container-data", "nope", "greeting")
	s.cfails(nil, "container not known", "get-container-data-size", "cimg", "greeting")
	s.cfails(nil, "container not known", "get-container-data-digest", "nope", "greeting")
	s.cfails(nil, "container not known", "list-container-data", "cimg")
	s.cfails([]byte("x"), "container not known", "set-container-data", "nope", "key")
	s.cfails([]byte("x"), "not a valid name for a big data item", "set-container-data", "w1", "")
	s.cfails(nil, "no such file", "set-container-data", "-f", filepath.Join(dir, "missing"), "w1", "key")
	s.cfails(nil, "get-container-data: more arguments required", "get-container-data", "w1")
	s.expect(0, "config\ngreeting\n", "list-container-data", "w1")
	if out := s.ok("containers"); !strings.Contains(out, c1+"\n\tname: w1\n\tname: w2\n\tdata: config\n\tdata: greeting\n") || !strings.Contains(out, jID+"\n\tname: j1\n\tdata: greeting\n") {
		t.Errorf("containers: %q", out)
	}

	// The container's directories, counted in its size.
	cdir := strings.TrimSuffix(s.ok("get-container-dir", "w1"), "\n")
	rdir := strings.TrimSuffix(s.ok("getcontainerrundir", c1), "\n")
	if !strings.HasPrefix(cdir, s.graph+"/") || !strings.HasPrefix(rdir, s.run+"/") || !strings.Contains(cdir, c1) || !strings.Contains(rdir, c1) {
		t.Errorf("get-container-dir %q, get-container-run-dir %q: want them under %s and %s", cdir, rdir, s.graph, s.run)
	}
	s.expect(0, cdir+"\n", "getcontainerdir", c1)
	s.expect(0, rdir+"\n", "get-container-run-dir", "w2")
	writeIn := func(d, name, body string) {
		if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeIn(cdir, "dirfile", "0123456789")
	writeIn(rdir, "runfile", "01234")
	if !strings.Contains(s.ok("container", "w1"), "\nSize: 29\n") { // 6 + 8 of data, 10 + 5 of files
		t.Errorf("container w1: %s", s.ok("container", "w1"))
	}
	s.cfails(nil, "container not known", "get-container-dir", "nope")
	s.cfails(nil, "container not known", "get-container-run-dir", "cimg")
	s.cfails(nil, "get-container-dir: too many arguments", "get-container-dir", "w1", "w2")

	// exists
	s.expect(0, "w1: true\n", "exists", "-c", "w1")
	s.expect(0, "", "exists", "-q", "--container", c1, "j1")
	s.expect(1, "cimg: true\n", "exists", "-c", "cimg")
	s.expect(1, "ctr-base: true\n", "exists", "-c", "ctr-base")
	s.expect(1, "nope: false\n", "exists", "-c", "nope")
	s.expect(1, "{\"nope\":false,\"w1\":true}\n", "exists", "-j", "-c", "w1", "nope") // keys sorted
	s.expect(1, "w1: true\n", "exists", "-i", "w1")
	s.expect(1, "w1: true\n", "exists", "-l", "w1")
	s.expect(0, l1+": true\n", "exists", "-l", l1)
	// As in containers/storage, a container's layer ID names it too.
	s.expect(0, l1+": true\n", "exists", "-c", l1)
	s.expect(1, l1[:12]+": true\n", "exists", "-c", l1[:12]) // but not a prefix of it
	s.expect(0, s.ok("container", c1), "container", l1)
	s.expect(0, "config\ngreeting\n", "list-container-data", l1)
	s.expect(0, "hello\n", "get-container-data", l1, "greeting")
	s.expect(0, cdir+"\n", "get-container-dir", l1)
	s.expect(0, rdir+"\n", "get-container-run-dir", l1)

	// Names.
	s.expect(0, "w1\nw2\n", "get-names", "w1")
	s.expect(0, "[\"w1\",\"w2\"]\n", "getnames", "-j", c1)
	s.expect(0, "[\"w3\",\"w1\",\"w2\"]\n", "add-names", "-j", "-n", "w3", "w2")
	s.expect(0, "", "remove-names", "-n", "w2", "w1")
	s.expect(0, "w3\nw1\n", "get-names", c1)
	s.expect(0, "[\"n1\",\"j1\"]\n", "set-names", "--json", "-n", "n1", "-n", "j1", "w1") // j1 moves here
	s.expect(0, "", "get-names", jID)
	s.expect(1, "w1: false\n", "exists", "w1")
	s.expect(0, "", "set-names", "-n", "j1", jID) // and back
	s.expect(0, "n1\n", "get-names", "n1")
	s.cfails(nil, "", "get-names", "nope")
	s.cfails(nil, "", "add-names", "-n", "x", "nope")

	// Metadata.
	s.expect(0, c1+": md1\n", "metadata", c1)
	s.expect(0, "", "set-metadata", "-m", "md2", "n1")
	s.expect(0, "md2\n", "metadata", "-q", "n1")
	s.expect(0, "", "setmetadata", "-f", writeFile("md3", []byte("md3\n")), c1)
	s.expect(0, "{\"n1\":\"md3\"}\n", "metadata", "-j", "n1")
	s.expect(0, noimg+": \n", "metadata", noimg)
	if c := s.container("n1"); c.Metadata != "md3\n" {
		t.Errorf("metadata from a file: %q", c.Metadata)
	}

	// Mounting a container mounts its read-write layer.
	mp := strings.TrimSuffix(s.ok("mount", "n1"), "\n")
	if !filepath.IsAbs(mp) {
		t.Fatalf("mount n1: %q", mp)
	}
	writeIn(mp, "in-container", "written\n")
	s.expect(0, "n1 mounted\n", "mounted", "n1")
	s.expect(0, l1+" mounted\n", "mounted", l1)
	s.expect(0, "n1 mountpoint unmounted\n", "unmount", "n1")
	s.expect(0, "", "mounted", c1)
	mp = strings.TrimSuffix(s.ok("mount", c1), "\n")
	if b, err := os.ReadFile(filepath.Join(mp, "in-container")); err != nil || string(b) != "written\n" {
		t.Errorf("the container's file after a remount: %q %v", b, err)
	}
	s.expect(0, c1+" mountpoint unmounted\n[{\"id\":\""+c1+"\",\"error\":\"\"}]\n", "unmount", "-j", c1)
	var mr []idError
	r := s.cs(nil, "mounted", "-j", "nope")
	decodeJSON(t, r.stdout, &mr)
	if r.code != 1 || len(mr) != 1 || !strings.Contains(mr[0].Error, "not known") {
		t.Errorf("mounted -j nope: %s", r)
	}
	s.ok("mount", noimg) // deleted mounted, below

	// status sees the store with containers.
	if r := s.expect(0, "", "status"); !strings.Contains(r.stderr, "Root: "+s.graph+"\n") {
		t.Errorf("status: %s", r)
	}

	// Deleting: the layer and image a container uses stay.
	s.cfails(nil, "layer is in use by a container", "delete-layer", l1)
	before := s.storeState()
	if r := s.expect(1, "", "delete-image", "cimg"); !strings.HasPrefix(r.stderr, "cimg: ") || !strings.Contains(r.stderr, "image is in use by a container") {
		t.Errorf("delete-image cimg: %s", r) // "ARG: error", as containers-storage prints it
	}
	if after := s.storeState(); after != before {
		t.Errorf("delete-image cimg changed the store:\nbefore %s\nafter  %s", before, after)
	}
	r = s.expect(1, "", "delete-container", "nope")
	if r.stderr != "cs-snapshotter: nope: identifier is not a container\n" {
		t.Errorf("delete-container nope: %s", r)
	}
	s.cfails(nil, "identifier is not a container", "delete-container", "cimg")
	s.expect(1, "{\"nope\":\"identifier is not a container\"}\n", "delete-container", "-j", "nope")
	s.expect(0, "", "delete-container", "n1")
	for _, d := range []string{cdir, rdir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s after delete-container: %v", d, err)
		}
	}
	s.expect(1, "n1: false\n", "exists", "n1")
	s.expect(1, l1+": false\n", "exists", l1)
	s.cfails(nil, "container not known", "get-container-data", c1, "greeting")
	s.expect(0, "{\""+noimg+"\":\"\"}\n", "deletecontainer", "-j", noimg) // mounted: unmounted first
	s.expect(0, "", "delete", "j1")
	s.expect(0, "", "containers")
	s.expect(0, "[]\n", "containers", "-j")

	// delete of a container's layer deletes the container.
	c4 := createdContainer(t, s.ok("create-container", "-n", "w4", "cimg"), "w4")
	s.expect(0, "", "delete", s.container(c4).Layer)
	s.expect(1, "w4: false\n", "exists", "w4")

	c6 := createdContainer(t, s.ok("create-container", "cimg"))
	s.expect(0, "", "delete-container", s.container(c6).Layer)
	s.expect(1, c6+": false\n", "exists", c6)

	// wipe takes containers too; then the image and its layer go.
	createdContainer(t, s.ok("create-container", "-n", "w5", "cimg"), "w5")
	s.expect(0, "", "wipe")
	s.expect(0, "", "containers")
	s.expect(0, "", "images")
	s.expect(0, "", "layers")
}

// TestCLIContainerHelp: every container command has --help, with its
// aliases, and the list of commands shows them.
func TestCLIContainerHelp(t *testing.T) {
	for _, c := range []struct {
		name, alias, flag string
	}{
		{"containers", "", "--json, -j"},
		{"container", "", "--json, -j"},
		{"create-container", "createcontainer", "--volatile"},
		{"delete-container", "deletecontainer", "--json, -j"},
		{"list-container-data", "listcontainerdata", "--json, -j"},
		{"get-container-data", "getcontainerdata", "--file, -f"},
		{"get-container-data-size", "getcontainerdatasize", ""},
		{"get-container-data-digest", "getcontainerdatadigest", ""},
		{"set-container-data", "setcontainerdata", "--file, -f"},
		{"get-container-dir", "getcontainerdir", ""},
		{"get-container-run-dir", "getcontainerrundir", ""},
		{"exists", "", "--container, -c"},
	} {
		names := []string{c.name}
		if c.alias != "" {
			names = append(names, c.alias)
		}
		for _, name := range names {
			r := runCLI(t, nil, name, "--help")
			if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: cs-snapshotter "+name+" ") || !strings.Contains(r.stdout, c.flag) {
				t.Errorf("%s --help: %s", name, r)
			}
			if c.alias != "" && !strings.Contains(r.stdout, fmt.Sprintf("Aliases: %s, %s\n", c.name, c.alias)) {
				t.Errorf("%s --help does not give the aliases: %s", name, r)
			}
		}
		if r := runCLI(t, nil, "--help"); !strings.Contains(r.stdout, "\n  "+c.name+" ") {
			t.Errorf("--help does not list %s", c.name)
		}
	}
	r := runCLI(t, nil, "create-container", "-h")
	for _, f := range []string{"--name, -n", "--id, -i", "--metadata, -m", "--metadata-file, -f", "--hostuidmap", "--subgidmap"} {
		if !strings.Contains(r.stdout, f) {
			t.Errorf("create-container -h does not show %s: %s", f, r)
		}
	}
}
