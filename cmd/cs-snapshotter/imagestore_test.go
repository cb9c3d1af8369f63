package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The separate image store (--image-store, storage.conf imagestore): new
// layers and images go there, the graph root's stay readable and
// writable, containers go to the graph root on the image store's layers,
// what a container stacks on cannot be deleted, status names both roots,
// wipe empties both. Each root alone (--graph) shows where things went.
func TestImageStoreCLI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("must run as root")
	}
	g := newCLIStore(t)
	oldID := createdID(t, g.okIn(gzipped(t, baseTar(t)), "import-layer", "-r", "--name", "old-base", ""), "old-base")
	g.ok("create-image", "-n", "old:1", "-n", "shared:latest", "old-base")
	oldImg := strings.TrimSpace(g.ok("images", "-q"))

	images := filepath.Join(t.TempDir(), "images")
	is := &cliStore{t: t, graph: images, run: g.run} // the image store alone
	run := func(stdin []byte, args ...string) result {
		t.Helper()
		return g.cs(stdin, append([]string{"--image-store", images}, args...)...)
	}
	ok := func(stdin []byte, args ...string) string {
		t.Helper()
		r := run(stdin, args...)
		if r.code != 0 {
			t.Fatalf("%v: %s", args, r)
		}
		return r.stdout
	}
	newID := createdID(t, ok(gzipped(t, baseTar(t)), "import-layer", "-r", "--name", "new-base", ""), "new-base")
	topID := createdID(t, ok(gzipped(t, topTar(t)), "import-layer", "-r", "--name", "new-top", "new-base"), "new-top")
	ok(nil, "create-image", "-n", "new:1", "-n", "shared:latest", "new-top")
	ok([]byte(`{"schemaVersion":2}`), "set-image-data", "new:1", "manifest")
	newImg := strings.TrimSpace(is.ok("images", "-q"))
	if !hexID.MatchString(newImg) {
		t.Fatalf("image store images: %q", newImg)
	}
	// The union, the image store first.
	if out := ok(nil, "layers", "-q"); !strings.Contains(out, oldID) || !strings.Contains(out, newID) || !strings.Contains(out, topID) {
		t.Errorf("layers -q: %q", out)
	}
	if out := ok(nil, "image", "shared:latest"); !strings.Contains(out, newImg) {
		t.Errorf("shared:latest: %q, want the image store's %s", out, newImg)
	}
	// The graph root's image is still writable.
	ok(nil, "add-names", "-n", "old:renamed", "old:1")
	ok(nil, "set-metadata", "-m", "old-meta", "old:1")
	if out := g.ok("image", "old:renamed"); !strings.Contains(out, oldImg) {
		t.Errorf("old:renamed in the graph root: %q", out)
	}
	// A container: in the graph root, on the image store's image.
	ok(nil, "create-container", "-n", "c1", "new:1")
	mp := strings.TrimSpace(ok(nil, "mount", "c1"))
	if data, err := os.ReadFile(filepath.Join(mp, "etc/os-release")); err != nil || string(data) != "NAME=changed\n" {
		t.Errorf("etc/os-release in the container: %q %v", data, err)
	}
	if err := os.WriteFile(filepath.Join(mp, "written"), []byte("x"), 0o644); err != nil {
		t.Errorf("write in the container: %v", err)
	}
	ok(nil, "unmount", "c1")
	if out := g.ok("containers", "--json"); strings.Count(out, `"id"`) != 1 || !strings.Contains(out, newImg) {
		t.Errorf("graph root containers: %q", out)
	}
	if out := is.ok("containers", "--json"); strings.Contains(out, `"id"`) {
		t.Errorf("image store containers: %q", out)
	}
	if out := g.ok("images", "-q"); out != oldImg+"\n" {
		t.Errorf("graph root images: %q", out)
	}
	// What the container stacks on stays.
	before := ok(nil, "layers", "--json") + ok(nil, "images", "--json")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"delete-layer", "new-base"}, "layer is in use by a container"},
		{[]string{"delete-layer", "new-top"}, "layer is in use by a container"},
		{[]string{"delete-image", "new:1"}, "image is in use by a container"},
		{[]string{"delete", "new-top"}, "layer is in use by a container"},
	} {
		if r := run(nil, tc.args...); r.code != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: %s; want exit 1 and %q", tc.args, r, tc.want)
		}
	}
	if after := ok(nil, "layers", "--json") + ok(nil, "images", "--json"); after != before {
		t.Errorf("refused deletions changed the stores:\n%s\n%s", before, after)
	}
	if r := run(nil, "status"); r.code != 0 || !strings.Contains(r.stderr, "\nImage Store: "+images+"\n") || !strings.Contains(r.stderr, "Root: "+g.graph+"\n") {
		t.Errorf("status: %s", r)
	}
	// Through a daemon serving the graph root, the same.
	g.with(t).startDaemon()
	if out := ok(nil, "images", "-q"); !strings.Contains(out, oldImg) || !strings.Contains(out, newImg) {
		t.Errorf("images through the daemon: %q", out)
	}
	ok(nil, "wipe")
	if out := g.ok("layers", "-q") + g.ok("images", "-q"); out != "" || strings.Contains(g.ok("containers", "--json"), `"id"`) {
		t.Errorf("graph root after wipe: %q", out)
	}
	if out := is.ok("layers", "-q") + is.ok("images", "-q"); out != "" {
		t.Errorf("image store after wipe: %q", out)
	}
}
