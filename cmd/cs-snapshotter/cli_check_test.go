package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCLICheckEmbedded(t *testing.T) {
	testCheckCommands(t, newCLIStore(t))
}

func TestCLICheckWithDaemon(t *testing.T) {
	s := newCLIStore(t)
	p := s.startDaemon()
	testCheckCommands(t, s)
	select {
	case <-p.exited:
		t.Fatalf("daemon exited: %v\n%s", p.err, p.stderr)
	default:
	}
}

func testCheckCommands(t *testing.T, s *cliStore) {
	t.Run("check", func(t *testing.T) { testCheck(t, s.with(t)) })
	t.Run("gc", func(t *testing.T) { testGC(t, s.with(t)) })
	t.Run("copy", func(t *testing.T) { testCopy(t, s.with(t)) })
	t.Run("parent owners", func(t *testing.T) { testParentOwners(t, s.with(t)) })
	t.Run("help", func(t *testing.T) {
		for _, cmd := range []string{"check", "gc", "copy", "layer-parent-owners", "container-parent-owners"} {
			r := s.cs(nil, cmd, "--help")
			if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: cs-snapshotter "+cmd+" ") || !strings.Contains(r.stdout, "--json, -j") {
				t.Errorf("%s --help: %s", cmd, r)
			}
		}
		r := s.cs(nil, "check", "--help")
		for _, flag := range []string{"--quick, -q", "--repair, -r", "--force, -f", "--max, -m=24h"} {
			if !strings.Contains(r.stdout, flag) {
				t.Errorf("check --help does not list %s: %s", flag, r)
			}
		}
		if r := s.cs(nil, "copy", "--help"); !strings.Contains(r.stdout, "--chown, -o") {
			t.Errorf("copy --help: %s", r)
		}
	})
}

// chkState is every layer, image and container, and what is mounted:
// what a failing command must leave as it was.
func (s *cliStore) chkState() string {
	s.t.Helper()
	state := s.ok("layers", "--json") + s.ok("images", "--json") + s.ok("containers", "--json")
	var layers []struct {
		ID string `json:"id"`
	}
	decodeJSON(s.t, s.ok("layers", "--json"), &layers)
	for _, l := range layers {
		state += s.cs(nil, "mounted", l.ID).stdout
	}
	return state
}

// chkFails runs args, which must exit 1 saying want on stderr, and change
// nothing.
func (s *cliStore) chkFails(want string, args ...string) result {
	s.t.Helper()
	before := s.chkState()
	r := s.cs(nil, args...)
	if r.code != 1 || !strings.Contains(r.stderr, want) {
		s.t.Errorf("%v: %s; want exit 1 saying %q", args, r, want)
	}
	if after := s.chkState(); after != before {
		s.t.Errorf("%v changed the store:\nbefore %s\nafter  %s", args, before, after)
	}
	return r
}

// firstLine is the ID a create command prints first.
func firstLine(t *testing.T, out string) string {
	t.Helper()
	id, _, _ := strings.Cut(out, "\n")
	if !hexID.MatchString(id) {
		t.Fatalf("output %q does not begin with an ID", out)
	}
	return id
}

// layerWith makes a writeable layer named name holding tarball.
func (s *cliStore) layerWith(name string, tarball []byte) string {
	s.t.Helper()
	f := filepath.Join(s.t.TempDir(), "layer.tar")
	if err := os.WriteFile(f, tarball, 0o600); err != nil {
		s.t.Fatal(err)
	}
	id := firstLine(s.t, s.ok("create-layer", "-n", name))
	s.ok("applydiff", "-f", f, id)
	return id
}

func (s *cliStore) blobFile(data string) string {
	return filepath.Join(s.graph, "content", "blobs", "sha256", strings.TrimPrefix(sha([]byte(data)), "sha256:"))
}

func testCheck(t *testing.T, s *cliStore) {
	s.expect(0, "", "check")
	s.expect(0, "", "check", "-q")
	s.expect(0, "", "check", "-r", "-f")
	var report map[string]map[string][]any
	decodeJSON(t, s.expect(0, `{"Layers":{},"ROLayers":{},"Images":{},"ROImages":{},"Containers":{}}`+"\n", "check", "--json").stdout, &report)

	base := s.layerWith("chk-base", buildTar(t, dir("etc/"), file("etc/hello", "hello\n"), file("etc/other", "other\n")))
	img := firstLine(t, s.ok("create-image", "-n", "chk-img", base))
	s.expect(0, "", "check")
	s.chkFails("invalid duration", "check", "-m", "soon")
	s.chkFails("too many arguments", "check", "extra")

	// A mode changed behind the store's back: only the full check sees it.
	mp := strings.TrimSpace(s.ok("mount", base))
	if err := os.Chmod(filepath.Join(mp, "etc", "hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.ok("unmount", base)
	s.expect(0, "", "check", "-q")
	before := s.chkState()
	r := s.cs(nil, "check")
	want := "layer " + base + ":\n layer " + base + ": /etc/hello(mode:0644￫0600), layer content modified\n" +
		"image " + img + ":\n layer " + base + ": /etc/hello(mode:0644￫0600), layer content modified\n"
	if r.code != 1 || r.stdout != want || r.stderr != "cs-snapshotter: 1 layer errors, 0 read-only layer errors, 1 image errors, 0 read-only image errors, 0 container errors\n" {
		t.Errorf("check of a modified layer: %s; want stdout %q", r, want)
	}
	r = s.cs(nil, "check", "--json")
	decodeJSON(t, r.stdout, &report)
	if r.code != 1 || len(report["Layers"][base]) != 1 || len(report["Images"][img]) != 1 || len(report["Containers"]) != 0 {
		t.Errorf("check --json: %s", r)
	}
	if after := s.chkState(); after != before {
		t.Errorf("check changed the store:\nbefore %s\nafter  %s", before, after)
	}
	s.expect(0, want, "check", "-r") // the report, then the repair
	s.expect(0, "", "check")
	s.expect(1, "", "layer", base)
	s.expect(1, "", "image", img)

	// A container whose big data blob went: -r leaves containers alone
	// (and says so), -f removes it.
	l2 := s.layerWith("chk-l2", buildTar(t, dir("etc/"), file("etc/two", "two\n")))
	img2 := firstLine(t, s.ok("create-image", "-n", "chk-img2", l2))
	ctr := firstLine(t, s.ok("create-container", "-n", "chk-ctr", img2))
	s.okIn([]byte("running"), "set-container-data", ctr, "state")
	if err := os.Remove(s.blobFile("running")); err != nil {
		t.Fatal(err)
	}
	r = s.cs(nil, "check")
	wantOut := "container " + ctr + ":\n container " + ctr + ": data item \"state\": blob " + sha([]byte("running")) + ": container data item is missing\n"
	if r.code != 1 || r.stdout != wantOut || !strings.Contains(r.stderr, "0 layer errors, 0 read-only layer errors, 0 image errors, 0 read-only image errors, 1 container errors") {
		t.Errorf("check of a container missing data: %s; want stdout %q", r, wantOut)
	}
	r = s.cs(nil, "check", "-r")
	if r.code != 1 || r.stdout != wantOut || r.stderr != "cs-snapshotter: 0 read-only layer errors, 0 read-only image errors, 1 container errors\n" {
		t.Errorf("check -r: %s", r)
	}
	s.ok("container", ctr)
	s.expect(0, wantOut, "check", "-f")
	s.expect(1, "", "container", ctr)
	s.expect(0, "", "check")

	// An image whose big data blob went.
	s.okIn([]byte(`{"config":2}`), "set-image-data", img2, "config")
	if err := os.Remove(s.blobFile(`{"config":2}`)); err != nil {
		t.Fatal(err)
	}
	r = s.cs(nil, "check")
	if r.code != 1 || !strings.Contains(r.stdout, "image "+img2+":\n image "+img2+": data item \"config\": blob "+sha([]byte(`{"config":2}`))+": image data item is missing\n") {
		t.Errorf("check of an image missing data: %s", r)
	}
	s.ok("check", "--repair")
	s.expect(1, "", "image", img2)
	s.expect(1, "", "layer", l2)

	// An unreferenced layer counts only when older than --max.
	lonely := firstLine(t, s.ok("create-layer", "-n", "chk-lonely"))
	s.expect(0, "", "check")
	want = "layer " + lonely + ":\n layer " + lonely + ": layer not referenced by any images or containers\n"
	s.expect(1, want, "check", "-m", "0s")
	s.expect(0, want, "check", "-m", "0s", "-r")
	s.expect(1, "", "layer", lonely)

	// As containers-storage's, check shuts the store down at the end:
	// every layer is unmounted.
	m := firstLine(t, s.ok("create-layer", "-n", "chk-mounted"))
	s.ok("mount", m)
	s.expect(0, m+" mounted\n", "mounted", m)
	s.expect(0, "", "check")
	s.expect(0, "", "mounted", m)
	s.ok("delete-layer", m)
}

func testGC(t *testing.T, s *cliStore) {
	s.expect(0, "", "gc")
	s.expect(0, "\"\"\n", "gc", "--json")
	s.chkFails("too many arguments", "gc", "extra")

	l := s.layerWith("gc-l", buildTar(t, dir("etc/"), file("etc/gc", "gc\n")))
	img := firstLine(t, s.ok("create-image", "-n", "gc-img", l))
	ctr := firstLine(t, s.ok("create-container", "-n", "gc-ctr", img))
	ctrDir := strings.TrimSpace(s.ok("get-container-dir", ctr))
	runDir := strings.TrimSpace(s.ok("get-container-run-dir", ctr))
	var orphans []string
	for _, root := range []string{s.graph, s.run} {
		d := filepath.Join(root, "overlay-containers", strings.Repeat("d", 64))
		if err := os.MkdirAll(filepath.Join(d, "userdata"), 0o700); err != nil {
			t.Fatal(err)
		}
		orphans = append(orphans, d)
	}
	before := s.chkState()
	s.expect(0, "", "gc")
	for _, d := range orphans {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s survived gc: %v", d, err)
		}
	}
	for _, d := range []string{ctrDir, runDir} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("a live container's directory: %v", err)
		}
	}
	if after := s.chkState(); after != before {
		t.Errorf("gc changed the store:\nbefore %s\nafter  %s", before, after)
	}

	// A mount that went behind the store's back stops counting.
	mp := strings.TrimSpace(s.ok("mount", l))
	if err := unix.Unmount(mp, 0); err != nil {
		t.Fatal(err)
	}
	s.expect(0, "", "gc")
	s.expect(0, "", "mounted", l)
	s.ok("delete-container", ctr)
	s.ok("delete-image", img)
	s.expect(0, "", "check")
}

func testCopy(t *testing.T, s *cliStore) {
	host := t.TempDir()
	for name, body := range map[string]string{"a": "file a\n", "sub/b": "file b\n"} {
		p := filepath.Join(host, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(host, "a"), filepath.Join(host, "alink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(host, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(host, "sub", "b"), 12, 34); err != nil {
		t.Fatal(err)
	}

	dst := firstLine(t, s.ok("create-layer", "-n", "copy-dst"))
	s.expect(0, "", "copy", host, "copy-dst:/copied")
	s.expect(0, "", "copy", "-o", "7:8", filepath.Join(host, "a"), "copy-dst:/files/")
	s.expect(0, "", "copy", "--chown", "9", filepath.Join(host, "sub", "b"), "copy-dst:/files/renamed")
	// From one layer to another, and within one.
	other := s.layerWith("copy-src", buildTar(t, dir("etc/"), file("etc/hello", "hello from a layer\n")))
	s.expect(0, "", "copy", "copy-src:/etc/hello", filepath.Join(host, "sub", "b"), "copy-dst:/two/")
	s.expect(0, "", "copy", "copy-dst:/copied/sub", "copy-dst:/subcopy")

	mp := strings.TrimSpace(s.ok("mount", dst))
	for _, f := range []struct {
		path, body string
		uid, gid   uint32
		mode       os.FileMode
	}{
		{"copied/a", "file a\n", 0, 0, 0o640},
		{"copied/alink", "file a\n", 0, 0, 0o640},
		{"copied/sub/b", "file b\n", 12, 34, 0o640},
		{"files/a", "file a\n", 7, 8, 0o640},
		{"files/renamed", "file b\n", 9, 9, 0o640},
		{"two/hello", "hello from a layer\n", 0, 0, 0o644},
		{"two/b", "file b\n", 12, 34, 0o640},
		{"subcopy/b", "file b\n", 12, 34, 0o640},
	} {
		p := filepath.Join(mp, f.path)
		data, err := os.ReadFile(p)
		fi, serr := os.Lstat(p)
		if err != nil || serr != nil {
			t.Errorf("%s: %v %v", f.path, err, serr)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if string(data) != f.body || st.Uid != f.uid || st.Gid != f.gid || fi.Mode().Perm() != f.mode {
			t.Errorf("%s: %q owned %d:%d mode %v; want %q %d:%d %v", f.path, data, st.Uid, st.Gid, fi.Mode().Perm(), f.body, f.uid, f.gid, f.mode)
		}
	}
	var a, alink unix.Stat_t
	unix.Lstat(filepath.Join(mp, "copied", "a"), &a)
	unix.Lstat(filepath.Join(mp, "copied", "alink"), &alink)
	if a.Ino != alink.Ino {
		t.Error("a hard link was copied as a second file")
	}
	if target, err := os.Readlink(filepath.Join(mp, "copied", "escape")); err != nil || target != "/etc/passwd" {
		t.Errorf("symlink: %q, %v", target, err)
	}
	s.ok("unmount", dst)

	// Errors: nothing changes, nothing stays mounted.
	changes := func() string { return s.ok("changes", dst) }
	was := changes()
	s.chkFails(`error finding layer "nope"`, "copy", "nope:/x", "copy-dst:/y")
	s.chkFails(`error finding layer "nope"`, "copy", host, "nope:/y")
	s.chkFails("error copying", "copy", filepath.Join(host, "missing"), "copy-dst:/y")
	// A symlink in a layer leads somewhere in that layer, never the host.
	s.chkFails("no such file or directory", "copy", "copy-dst:/copied/escape", "copy-dst:/y")
	s.chkFails("cannot overwrite directory", "copy", filepath.Join(host, "a"), "copy-dst:/copied")
	s.chkFails("as a numeric UID", "copy", "-o", "me:you", host, "copy-dst:/y")
	s.chkFails("as a numeric GID", "copy", "-o", "1:you", host, "copy-dst:/y")
	s.chkFails("more arguments required", "copy", host)
	ro := firstLine(t, s.ok("create-layer", "-r", "-n", "copy-ro"))
	s.chkFails("read-only file system", "copy", filepath.Join(host, "a"), "copy-ro:/a")
	if now := changes(); now != was {
		t.Errorf("failed copies changed the layer:\n%s\nnow\n%s", was, now)
	}
	for _, l := range []string{dst, other, ro} {
		s.ok("delete-layer", l)
	}
}

func testParentOwners(t *testing.T, s *cliStore) {
	l := s.layerWith("owners-l", buildTar(t, dir("etc/"), file("etc/owners", "o\n")))
	img := firstLine(t, s.ok("create-image", "-n", "owners-img", l))
	ctr := firstLine(t, s.ok("create-container", "-n", "owners-ctr", img))

	s.expect(0, "ID: "+l+"\n", "layer-parent-owners", "owners-l")
	s.expect(1, "ID: "+l+"\n", "layer-parent-owners", l, "nope")
	s.expect(1, "", "layer-parent-owners", "nope")
	var got struct {
		ID         string
		UIDs, GIDs []int
	}
	r := s.expect(0, `{"ID":"`+l+`","UIDs":null,"GIDs":null}`+"\n", "layer-parent-owners", "--json", l)
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.ID != l {
		t.Errorf("layer-parent-owners --json: %s", r)
	}
	s.chkFails("more arguments required", "layer-parent-owners")

	s.expect(0, "ID: "+ctr+"\nUIDs: []\nGIDs: []\n", "container-parent-owners", "owners-ctr")
	s.expect(1, "", "container-parent-owners", "nope")
	s.expect(1, "", "container-parent-owners", l) // an image's layer is no container
	layerOf := func(id string) string {
		var c []struct {
			Layer string `json:"layer"`
		}
		decodeJSON(t, s.ok("container", "--json", id), &c)
		if len(c) != 1 {
			t.Fatalf("container --json %s: %v", id, c)
		}
		return c[0].Layer
	}
	s.expect(0, "ID: "+ctr+"\nUIDs: []\nGIDs: []\n", "container-parent-owners", layerOf(ctr)) // its own layer names it
	s.expect(0, `{"ID":"`+ctr+`","UIDs":null,"GIDs":null}`+"\n", "container-parent-owners", "-j", ctr)
	s.chkFails("more arguments required", "container-parent-owners")

	s.ok("delete-container", ctr)
	s.ok("delete-image", img)
}
