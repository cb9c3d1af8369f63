package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// cliStore runs the CLI binary against one store.
type cliStore struct {
	t          *testing.T
	graph, run string
}

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// with returns s for subtest t.
func (s *cliStore) with(t *testing.T) *cliStore {
	c := *s
	c.t = t
	return &c
}

func newCLIStore(t *testing.T) *cliStore {
	d := t.TempDir()
	return &cliStore{t: t, graph: filepath.Join(d, "graph"), run: filepath.Join(d, "run")}
}

// startDaemon serves the store with `cs-snapshotter serve`; the CLI then
// talks to it.
func (s *cliStore) startDaemon() *proc {
	return start(s.t, filepath.Join(s.run, "cs-snapshotter.sock"), "--root", s.graph, "--run-root", s.run)
}

// cs runs `cs-snapshotter --graph G --run R args...` with stdin.
func (s *cliStore) cs(stdin []byte, args ...string) result {
	s.t.Helper()
	return runCLI(s.t, stdin, append([]string{"--graph", s.graph, "--run", s.run}, args...)...)
}

func runCLI(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%v: %v", args, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

// ok runs args and fails the test unless they succeed; it returns stdout.
func (s *cliStore) ok(args ...string) string {
	s.t.Helper()
	r := s.cs(nil, args...)
	if r.code != 0 {
		s.t.Fatalf("%v: %s", args, r)
	}
	return r.stdout
}

func (s *cliStore) okIn(stdin []byte, args ...string) string {
	s.t.Helper()
	r := s.cs(stdin, args...)
	if r.code != 0 {
		s.t.Fatalf("%v: %s", args, r)
	}
	return r.stdout
}

// want checks a run's exit status and stdout.
func (s *cliStore) want(r result, code int, stdout string, args ...string) {
	s.t.Helper()
	if r.code != code || r.stdout != stdout {
		s.t.Errorf("%v: %s; want exit %d, stdout %q", args, r, code, stdout)
	}
}

// expect runs args and checks the exit status and stdout.
func (s *cliStore) expect(code int, stdout string, args ...string) result {
	s.t.Helper()
	r := s.cs(nil, args...)
	s.want(r, code, stdout, args...)
	return r
}

// fails runs args, which must fail with exit 1 and a one-line error on
// stderr saying want, and leave every layer as it was.
func (s *cliStore) fails(stdin []byte, want string, args ...string) result {
	s.t.Helper()
	before := s.ok("layers", "--json")
	r := s.cs(stdin, args...)
	if r.code != 1 {
		s.t.Errorf("%v: %s; want exit 1", args, r)
	}
	if !strings.Contains(r.stderr, want) || !strings.HasPrefix(r.stderr, "cs-snapshotter: ") {
		s.t.Errorf("%v: stderr %q does not say %q", args, r.stderr, want)
	}
	if after := s.ok("layers", "--json"); after != before {
		s.t.Errorf("%v changed the store:\nbefore %s\nafter  %s", args, before, after)
	}
	return r
}

type tarEntry struct {
	hdr  tar.Header
	body string
}

var epoch = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

func dir(name string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch}}
}

func file(name, body string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: epoch}, body: body}
}

func buildTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gunzip(t *testing.T, data []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sha(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// baseTar is a layer with the kinds of entries a base image has.
func baseTar(t *testing.T) []byte {
	long := strings.Repeat("long-directory-name/", 8) + "file-with-a-long-name.txt"
	busybox := strings.Repeat("\x7fELF busybox ", 8000)
	xattr := file("etc/xattr", "has an xattr\n")
	xattr.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.comment": "cs-snapshotter"}
	owned := file("home/user/.profile", "export PS1='$ '\n")
	owned.hdr.Uid, owned.hdr.Gid = 1000, 1000
	return buildTar(t,
		dir("etc/"),
		file("etc/hello", "hello\n"),
		file("etc/os-release", "NAME=test\n"),
		xattr,
		dir("home/"), dir("home/user/"), owned,
		dir("usr/"), dir("usr/bin/"),
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/busybox", Mode: 0o755, Size: int64(len(busybox)), ModTime: epoch}, body: busybox},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/sh", Linkname: "busybox", Mode: 0o777, ModTime: epoch}},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "usr/bin/ls", Linkname: "usr/bin/busybox", Mode: 0o755, ModTime: epoch}},
		dir(strings.Repeat("long-directory-name/", 1)),
		file(long, "deep\n"),
	)
}

// topTar changes baseTar: a whiteout, a changed file, a new file.
func topTar(t *testing.T) []byte {
	return buildTar(t,
		dir("etc/"),
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/.wh.hello", Mode: 0o644, ModTime: epoch}},
		file("etc/os-release", "NAME=changed\n"),
		file("new.txt", "new file\n"),
	)
}

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// createdID checks create-layer's text output (the ID, then each name
// after a tab) and returns the ID.
func createdID(t *testing.T, out string, names ...string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 1+len(names) || !hexID.MatchString(lines[0]) {
		t.Fatalf("create output %q: want an ID and names %q", out, names)
	}
	for i, n := range names {
		if lines[1+i] != "\t"+n {
			t.Errorf("create output %q: line %d is %q, want %q", out, i+1, lines[1+i], "\t"+n)
		}
	}
	return lines[0]
}

type jsonLayer struct {
	ID                 string   `json:"id"`
	Names              []string `json:"names"`
	Parent             string   `json:"parent"`
	Metadata           string   `json:"metadata"`
	Created            string   `json:"created"`
	CompressedDigest   string   `json:"compressed-diff-digest"`
	CompressedSize     int64    `json:"compressed-size"`
	UncompressedDigest string   `json:"diff-digest"`
	UncompressedSize   int64    `json:"diff-size"`
	Compression        int      `json:"compression"`
	UIDs               []uint32 `json:"uidset"`
	GIDs               []uint32 `json:"gidset"`
	BigDataNames       []string `json:"big-data-names"`
}

func decodeJSON(t *testing.T, out string, v any) {
	t.Helper()
	if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		t.Errorf("JSON output %q: want one line", out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("JSON output %q: %v", out, err)
	}
}

func TestCLIEmbedded(t *testing.T) {
	s := newCLIStore(t)
	testLayerCommands(t, s, "embedded")
	t.Run("images", func(t *testing.T) { testImageCommands(t, s) })
}

func TestCLIWithDaemon(t *testing.T) {
	s := newCLIStore(t)
	p := s.startDaemon()
	testLayerCommands(t, s, "daemon")
	t.Run("images", func(t *testing.T) { testImageCommands(t, s) })
	select {
	case <-p.exited:
		t.Fatalf("daemon exited: %v\n%s", p.err, p.stderr)
	default:
	}
}

// testLayerCommands runs the layer commands through one store, checking
// output formats, exit statuses, and that failing commands change nothing.
func testLayerCommands(t *testing.T, s *cliStore, mode string) {
	base1, top1 := baseTar(t), topTar(t)
	base1gz := gzipped(t, base1)
	dataDir := t.TempDir()
	writeFile := func(name string, data []byte) string {
		p := filepath.Join(dataDir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	topFile := writeFile("top.tar", top1)

	// An empty store.
	s.expect(0, "", "layers")
	s.expect(0, "null\n", "layers", "--json") // as containers-storage

	// Layers: an empty one, a base imported from a gzipped tar on stdin, a
	// writeable top with a diff applied from a file.
	empty := createdID(t, s.ok("create-layer", "-r", "-n", "empty", "--name", "vacant"), "empty", "vacant")
	base := createdID(t, s.okIn(base1gz, "import-layer", "-r", "--name", "base", "empty"), "base")
	var topLayer jsonLayer
	decodeJSON(t, s.ok("create-layer", "--json", "-n", "top", base), &topLayer)
	top := topLayer.ID
	if !hexID.MatchString(top) || !reflect.DeepEqual(topLayer.Names, []string{"top"}) || topLayer.Parent != base {
		t.Errorf("create-layer --json: %+v", topLayer)
	}
	s.expect(0, "", "applydiff", "-f", topFile, "top")

	t.Run("layers", func(t *testing.T) {
		s := s.with(t)
		s.expect(0, fmt.Sprintf("%s\n\tname: empty\n\tname: vacant\n%s\n\tname: base\n%s\n\tname: top\n", empty, base, top), "layers")
		s.expect(0, fmt.Sprintf("%s\n%s\n%s\n", empty, base, top), "layers", "-q")
		s.expect(0, fmt.Sprintf("%s\n%s\n%s\n", empty, base, top), "layers", "--quick")
		tree := fmt.Sprintf("(base)\n└─%s\n  name: empty\n  name: vacant\n  └─%s\n    name: base\n    └─%s\n      name: top\n", empty, base, top)
		s.expect(0, tree, "layers", "-t")
		s.expect(0, tree, "layers", "--tree", "-q") // the tree wins, as in containers-storage

		var layers []jsonLayer
		decodeJSON(t, s.ok("layers", "--json"), &layers)
		if len(layers) != 3 {
			t.Fatalf("layers --json: %d layers", len(layers))
		}
		if l := layers[0]; l.ID != empty || !reflect.DeepEqual(l.Names, []string{"empty", "vacant"}) || l.Parent != "" || l.Created == "" {
			t.Errorf("empty layer: %+v", l)
		}
		if l := layers[1]; l.ID != base || l.Parent != empty ||
			l.CompressedDigest != sha(base1gz) || l.CompressedSize != int64(len(base1gz)) ||
			l.UncompressedDigest != sha(base1) || l.UncompressedSize != int64(len(base1)) ||
			l.Compression != 2 || !reflect.DeepEqual(l.UIDs, []uint32{0, 1000}) || !reflect.DeepEqual(l.GIDs, []uint32{0, 1000}) {
			t.Errorf("base layer: %+v", l)
		}
		if l := layers[2]; l.ID != top || l.Parent != base || l.UncompressedDigest != sha(top1) || l.Compression != 0 {
			t.Errorf("top layer: %+v", l)
		}
		s.expect(0, s.ok("layers", "--json"), "layers", "-j")

		// Global flags after the command, short forms, no prefix.
		r := runCLI(t, nil, "layers", "-q", "-g", s.graph, "--run="+s.run)
		s.want(r, 0, fmt.Sprintf("%s\n%s\n%s\n", empty, base, top), "layers -q -g G --run=R")
	})

	t.Run("layer", func(t *testing.T) {
		s := s.with(t)
		s.expect(0, fmt.Sprintf("ID: %s\nParent: %s\nName: top\n", top, base), "layer", "top")
		s.expect(0, fmt.Sprintf("ID: %s\nName: empty\nName: vacant\nID: %s\nParent: %s\nName: base\n", empty, base, empty), "layer", "vacant", base[:12])
		var ls []jsonLayer
		decodeJSON(t, s.ok("layer", "-j", "base"), &ls)
		if len(ls) != 1 || ls[0].ID != base {
			t.Errorf("layer -j base: %+v", ls)
		}
		r := s.expect(1, fmt.Sprintf("ID: %s\nParent: %s\nName: base\n", base, empty), "layer", "base", "nope")
		if !strings.Contains(r.stderr, "nope") {
			t.Errorf("layer base nope: stderr %q does not name nope", r.stderr)
		}
		s.expect(1, "[]\n", "layer", "--json", "nope")
	})

	t.Run("diff", func(t *testing.T) {
		s := s.with(t)
		// The applied tars come back byte for byte.
		if out := s.ok("diff", "-u", "top"); sha([]byte(out)) != sha(top1) {
			t.Errorf("diff -u top: %d bytes %s, want %d bytes %s", len(out), sha([]byte(out)), len(top1), sha(top1))
		}
		if out := s.ok("diff", "--uncompressed", base); sha([]byte(out)) != sha(base1) {
			t.Errorf("diff -u base: %d bytes, want %d", len(out), len(base1))
		}
		out := filepath.Join(dataDir, "out.tar")
		s.expect(0, "", "diff", "-u", "-f", out, "top", "base")
		if got, _ := os.ReadFile(out); !bytes.Equal(got, top1) {
			t.Errorf("diff -u -f: %d bytes, want the applied %d", len(got), len(top1))
		}
		// Without a flag, a layer's diff has its own compression.
		if out := s.ok("diff", "top"); out != string(top1) {
			t.Errorf("diff top (uncompressed layer): %d bytes, want %d", len(out), len(top1))
		}
		if out := s.ok("diff", "base"); !bytes.Equal(gunzip(t, []byte(out)), base1) {
			t.Error("diff base (gzip layer): not the applied tar, gzipped")
		}
		if out := s.ok("diff", "-c", "top"); !bytes.Equal(gunzip(t, []byte(out)), top1) {
			t.Error("diff -c top: not the applied tar, gzipped")
		}
		s.expect(0, s.ok("diffsize", "base"), "diff-size", "base", "empty")
		// The number is the store's; containers/storage's overlay driver
		// counts the bytes of the files in the layer's directory.
		for _, l := range []string{"empty", "base", "top"} {
			if r := s.expect(0, s.ok("diffsize", l), "diffsize", l); !regexp.MustCompile(`^[0-9]+\n$`).MatchString(r.stdout) {
				t.Errorf("diffsize %s: %q", l, r.stdout)
			}
		}

		r := s.expect(0, s.ok("changes", "top"), "changes", "top", "base")
		for _, want := range []string{`Delete "/etc/hello"`, `Modify "/etc/os-release"`, `Add "/new.txt"`} {
			if !strings.Contains(r.stdout, want+"\n") {
				t.Errorf("changes top: %q lacks %q", r.stdout, want)
			}
		}
		var changes []struct {
			Path string
			Kind int
		}
		decodeJSON(t, s.ok("changes", "--json", "top"), &changes)
		kinds := map[string]int{}
		for _, c := range changes {
			kinds[c.Path] = c.Kind
		}
		if kinds["/etc/hello"] != 2 || kinds["/new.txt"] != 1 || kinds["/etc/os-release"] != 0 {
			t.Errorf("changes --json: %+v", changes)
		}
	})

	t.Run("names", func(t *testing.T) {
		s := s.with(t)
		s.expect(0, "empty\nvacant\n", "get-names", "empty")
		s.expect(0, "[\"empty\",\"vacant\"]\n", "getnames", "-j", empty)
		s.expect(0, "", "add-names", "-n", "extra", "--name", "more", "empty")
		s.expect(0, "extra\nmore\nempty\nvacant\n", "get-names", empty) // added names first, as containers/storage
		s.expect(0, "[\"x\",\"top\"]\n", "add-names", "-j", "-n", "x", "top")
		s.expect(0, "", "remove-names", "-n", "vacant", "-n", "more", "-n", "never-was", "empty")
		s.expect(0, "extra\nempty\n", "get-names", "extra")
		s.expect(0, "", "set-names", "-n", "e1", "-n", "e2", empty)
		s.expect(0, "e1\ne2\n", "get-names", empty)
		// A name another layer has moves, as in containers/storage.
		s.expect(0, "", "add-names", "-n", "x", empty)
		s.expect(0, "top\n", "get-names", top)
		s.expect(0, "x\ne1\ne2\n", "get-names", "x")
		s.expect(0, "[\"x\",\"top\"]\n", "add-names", "--json", "-n", "x", top)
		s.expect(0, "[\"top\"]\n", "set-names", "--json", "-n", "top", top)
		s.expect(0, "[\"e1\",\"e2\"]\n", "removenames", "-j", "-n", "x", "e1")
		s.fails(nil, "layer not known", "get-names", "nope")
		s.fails(nil, "layer not known", "add-names", "-n", "x", "nope")
		s.expect(0, "e1\ne2\n", "get-names", empty)
	})

	t.Run("metadata", func(t *testing.T) {
		s := s.with(t)
		s.expect(0, "", "set-metadata", "-m", "hello world", "top")
		s.expect(0, "top: hello world\n", "metadata", "top")
		s.expect(0, "hello world\n", "metadata", "-q", "top")
		s.expect(0, "{\"top\":\"hello world\"}\n", "metadata", "--json", "top")
		s.expect(1, "top: hello world\nnope: \n", "metadata", "top", "nope")
		mdFile := writeFile("metadata", []byte("{\"from\": \"a file\"}\n"))
		s.expect(0, "", "setmetadata", "--metadata-file", mdFile, "base")
		s.expect(0, "{\"from\": \"a file\"}\n", "metadata", "-q", base) // the trailing newline is trimmed once
		s.fails(nil, "no new metadata provided", "set-metadata", "top")
		s.fails(nil, "identifier is not a layer, image, or container", "set-metadata", "-m", "x", "nope")
	})

	t.Run("layer data", func(t *testing.T) {
		s := s.with(t)
		s.expect(0, "", "list-layer-data", "top")
		s.expect(0, "null\n", "list-layer-data", "-j", "top") // as containers-storage
		r := s.cs([]byte("data one"), "set-layer-data", "top", "key1")
		s.want(r, 0, "", "set-layer-data top key1")
		big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10)
		s.expect(0, "", "setlayerdata", "-f", writeFile("big", big), "top", "key2")
		listing := s.ok("list-layer-data", "top")
		if lines := strings.Fields(listing); !reflect.DeepEqual(sortedCopy(lines), []string{"key1", "key2"}) {
			t.Errorf("list-layer-data: %q", listing)
		}
		var keys []string
		decodeJSON(t, s.ok("listlayerdata", "--json", "top"), &keys)
		if !reflect.DeepEqual(sortedCopy(keys), []string{"key1", "key2"}) {
			t.Errorf("list-layer-data --json: %q", keys)
		}
		s.expect(0, "data one", "get-layer-data", "top", "key1")
		out := filepath.Join(dataDir, "key2.out")
		s.expect(0, "", "getlayerdata", "--file", out, top, "key2")
		if got, _ := os.ReadFile(out); !bytes.Equal(got, big) {
			t.Errorf("get-layer-data -f: %d bytes, want %d", len(got), len(big))
		}
		s.fails(nil, "", "get-layer-data", "top", "no-such-key")
		s.fails([]byte("x"), "layer not known", "set-layer-data", "nope", "key")
		s.fails(nil, "layer not known", "list-layer-data", "nope")
	})

	t.Run("mount", func(t *testing.T) {
		s := s.with(t)
		mp := strings.TrimSuffix(s.ok("mount", "top"), "\n")
		if !filepath.IsAbs(mp) {
			t.Fatalf("mount top: %q is not a path", mp)
		}
		if got, err := os.ReadFile(filepath.Join(mp, "new.txt")); err != nil || string(got) != "new file\n" {
			t.Errorf("mounted top: new.txt %q %v", got, err)
		}
		if _, err := os.Lstat(filepath.Join(mp, "etc/hello")); !os.IsNotExist(err) {
			t.Errorf("mounted top: the whited-out etc/hello: %v", err)
		}
		if got, err := os.ReadFile(filepath.Join(mp, "usr/bin/busybox")); err != nil || len(got) != 8000*len("\x7fELF busybox ") {
			t.Errorf("mounted top: busybox from the base: %d bytes, %v", len(got), err)
		}
		s.expect(0, "top mounted\n", "mounted", "top")
		s.expect(0, mp+"\n", "mount", "top") // counted
		if tree := s.ok("layers", "-t"); !strings.Contains(tree, "      name: top\n      mount: "+mp+"\n") {
			t.Errorf("layers -t does not show the mount:\n%s", tree)
		}
		s.expect(0, "", "unmount", "top") // still mounted once
		s.expect(0, "top mounted\n", "mounted", "top")
		s.expect(0, "top mountpoint unmounted\n", "umount", "top")
		s.expect(0, "", "mounted", "top")
		s.expect(0, "[{\"id\":\"top\",\"error\":\"\"}]\n", "mounted", "-j", "top")

		// A read-only layer mounts too.
		bmp := strings.TrimSuffix(s.ok("mount", "base"), "\n")
		if got, err := os.ReadFile(filepath.Join(bmp, "etc/hello")); err != nil || string(got) != "hello\n" {
			t.Errorf("mounted base: etc/hello %q %v", got, err)
		}
		// With --json, the line before the JSON, as containers-storage prints it.
		s.expect(0, "base mountpoint unmounted\n[{\"id\":\"base\",\"error\":\"\"}]\n", "unmount", "--json", "base")

		// Failures: an empty line (text) or an error field (JSON), exit 1.
		r := s.expect(1, "\n", "mount", "nope")
		if !strings.Contains(r.stderr, "while mounting nope") {
			t.Errorf("mount nope: stderr %q", r.stderr)
		}
		var mr []mountResult
		r = s.cs(nil, "mount", "-j", "nope")
		decodeJSON(t, r.stdout, &mr)
		if r.code != 1 || len(mr) != 1 || mr[0].ID != "nope" || mr[0].MountPoint != "" || !strings.Contains(mr[0].Error, "layer not known") {
			t.Errorf("mount -j nope: %s", r)
		}
		s.expect(1, "", "unmount", "nope")
		s.expect(1, "", "mounted", "nope")
		// Not mounted: nothing to do, said as containers-storage says it.
		s.expect(0, "top mountpoint unmounted\nbase mountpoint unmounted\n", "unmount", "top", "base")
	})

	t.Run("exists", func(t *testing.T) {
		s := s.with(t)
		s.expect(0, "base: true\n", "exists", "base")
		s.expect(0, "", "exists", "-q", base)
		s.expect(1, "base: true\nnope: false\n", "exists", "base", "nope")
		s.expect(1, "", "exists", "-q", "nope")
		s.expect(0, "top: true\n", "exists", "-l", "top")
		s.expect(1, "top: true\n", "exists", "-i", "top") // no images
		s.expect(1, "top: true\n", "exists", "--container", "top")
		s.expect(1, "{\"base\":true,\"nope\":false}\n", "exists", "-j", "base", "nope")
	})

	t.Run("status and version", func(t *testing.T) {
		s := s.with(t)
		r := s.expect(0, "", "status")
		prefix := fmt.Sprintf("Root: %s\nRun Root: %s\nDriver Name: overlay\nDriver Options: []\n", s.graph, s.run)
		if !strings.HasPrefix(r.stderr, prefix) {
			t.Errorf("status: %q, want it to begin %q", r.stderr, prefix)
		}
		if !strings.Contains(r.stderr, "\nStore: "+mode+"\n") {
			t.Errorf("status: %q does not say Store: %s", r.stderr, mode)
		}
		var status [][2]string
		decodeJSON(t, s.ok("status", "--json"), &status)
		if len(status) < 4 || status[0] != [2]string{"Root", s.graph} || status[2] != [2]string{"Driver Name", "overlay"} {
			t.Errorf("status --json: %q", status)
		}
		r = s.expect(0, "", "version")
		if !strings.Contains(r.stderr, "Version: ") {
			t.Errorf("version: %q", r.stderr)
		}
		var version [][2]string
		decodeJSON(t, s.ok("version", "-j"), &version)
		if len(version) == 0 {
			t.Errorf("version -j: empty")
		}
	})

	t.Run("bad input", func(t *testing.T) {
		s := s.with(t)
		s.fails(nil, "that name is already in use", "create-layer", "-n", "top")
		s.fails(nil, "that ID is already in use", "create-layer", "-i", top)
		s.fails(nil, "layer not known", "create-layer", "-n", "orphan", "nope")
		s.fails(nil, "ID mappings are not supported", "create-layer", "--uidmap", "0:1000:1")
		corrupt := append(append([]byte(nil), base1gz[:len(base1gz)/2]...), bytes.Repeat([]byte{0xff}, 100)...)
		s.fails(corrupt, "", "import-layer", "-r", "-n", "corrupt")
		s.fails(base1gz[:len(base1gz)/2], "", "import-layer", "-n", "truncated", "base")
		// An entry above the root: containers-storage refuses it; the
		// store's layerdiff keeps it inside the layer. Either way nothing
		// lands outside.
		escape := buildTar(t, file("../escape", "out\n"), file("../../escape", "out\n"))
		if r := s.cs(escape, "import-layer", "-r", "-n", "escape"); r.code == 0 {
			t.Logf("import-layer of a tar with ../escape succeeded (contained, not refused): %s", r)
			s.ok("delete-layer", "escape")
		}
		for _, p := range []string{filepath.Join(filepath.Dir(s.graph), "escape"), filepath.Join(filepath.Dir(filepath.Dir(s.graph)), "escape")} {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("a tar entry escaped to %s", p)
			}
		}
		s.fails(nil, "", "import-layer", "-n", "missing-file", "-f", filepath.Join(dataDir, "missing"))
		s.fails(nil, "layer not known", "applydiff", "-f", topFile, "nope")
		s.fails(nil, "layer not known", "diff", "nope")
		s.fails(nil, "layer not known", "diffsize", "nope")
		s.fails(nil, "layer not known", "changes", "nope")
		s.fails(nil, `storage driver "vfs" is not supported`, "-s", "vfs", "layers")
		s.fails(nil, `storage driver "btrfs" is not supported`, "layers", "--storage-driver=btrfs")
		before := s.ok("layers")
		os.Setenv("STORAGE_DRIVER", "vfs")
		if r := s.cs(nil, "layers"); r.code != 1 || !strings.Contains(r.stderr, `storage driver "vfs" is not supported`) {
			t.Errorf("STORAGE_DRIVER=vfs layers: %s", r)
		}
		r := s.cs(nil, "layers", "-s", "overlay") // the flag wins
		os.Unsetenv("STORAGE_DRIVER")
		s.want(r, 0, before, "STORAGE_DRIVER=vfs layers -s overlay")
		s.fails(nil, "bogus: unrecognized command", "bogus")
		s.fails(nil, "layers: flag provided but not defined: --bogus", "layers", "--bogus")
		s.fails(nil, "layer: more arguments required", "layer")
		s.fails(nil, "layers: too many arguments (extra)", "layers", "extra")
		s.fails(nil, "get-layer-data: more arguments required", "get-layer-data", "top")
		s.fails(nil, "flag needs an argument: -n", "create-layer", "-n")
		for _, name := range []string{"corrupt", "truncated", "escape", "missing-file", "orphan"} {
			s.expect(1, name+": false\n", "exists", name)
		}
		for _, r := range []result{s.cs(nil, "bogus"), s.cs(nil, "layers", "--bogus")} {
			if strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("error is not one line: %q", r.stderr)
			}
		}
	})

	t.Run("delete", func(t *testing.T) {
		s := s.with(t)
		r := s.fails(nil, "layer has children", "delete-layer", "base")
		if !strings.HasPrefix(r.stderr, "cs-snapshotter: base: ") {
			t.Errorf("delete-layer base: stderr %q does not name base", r.stderr)
		}
		r = s.cs(nil, "delete-layer", "-j", base)
		var res map[string]string
		decodeJSON(t, r.stdout, &res)
		if r.code != 1 || len(res) != 1 || !strings.Contains(res[base], "layer has children") {
			t.Errorf("delete-layer -j base: %s", r)
		}
		s.fails(nil, "nope: ", "deletelayer", "nope")
		s.ok("mount", "top")
		s.expect(0, "", "delete-layer", "top") // unmounts it first, as containers-storage does
		s.expect(0, "{\""+base+"\":\"\"}\n", "delete-layer", "--json", base)
		s.expect(0, "", "delete", "e1")
		s.expect(0, "", "layers")
	})

	t.Run("wipe and shutdown", func(t *testing.T) {
		s := s.with(t)
		a := createdID(t, s.ok("create-layer", "-r"))
		s.ok("create-layer", "-n", "child", a)
		s.expect(0, "", "wipe")
		s.expect(0, "", "layers")
		s.ok("create-layer")
		s.expect(0, "\"\"\n", "wipe", "-j")
		s.expect(0, "", "layers")
		s.expect(0, "", "shutdown")
		s.expect(0, "\"\"\n", "shutdown", "--json")
		s.ok("mount", createdID(t, s.ok("create-layer", "-n", "m"), "m"))
		r := s.expect(1, "", "shutdown")
		if !strings.Contains(r.stderr, "cs-snapshotter: shutdown: a layer is mounted") {
			t.Errorf("shutdown with a mounted layer: %s", r)
		}
		s.expect(1, "{}\n", "shutdown", "-j")
		s.expect(0, "m mounted\n", "mounted", "m")
		s.expect(0, "", "shutdown", "-f")
		s.expect(0, "", "mounted", "m")
		s.expect(0, "", "wipe")
	})
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

// TestCLIUsage: help, the defaults, serve and config keep working.
func TestCLIUsage(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		r := runCLI(t, nil, args...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: cs-snapshotter") || !strings.Contains(r.stdout, "  create-layer ") || !strings.Contains(r.stdout, "--graph, -g=") {
			t.Errorf("%v: %s", args, r)
		}
	}
	r := runCLI(t, nil)
	if r.code != 1 || !strings.Contains(r.stderr, "Usage: cs-snapshotter") {
		t.Errorf("no arguments: %s", r)
	}
	r = runCLI(t, nil, "layers", "--help")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: cs-snapshotter layers [options [...]]\n\nList layers\n") || !strings.Contains(r.stdout, "--tree, -t") {
		t.Errorf("layers --help: %s", r)
	}
	r = runCLI(t, nil, "getnames", "-h")
	if r.code != 0 || !strings.Contains(r.stdout, "Aliases: get-names, getnames") {
		t.Errorf("getnames -h: %s", r)
	}
	r = runCLI(t, nil, "config", "default")
	if r.code != 0 || !strings.Contains(r.stdout, "/var/lib/cs-snapshotter") {
		t.Errorf("config default: %s", r)
	}
	r = runCLI(t, nil, "config")
	if r.code != 1 || !strings.Contains(r.stderr, "usage: cs-snapshotter config default") {
		t.Errorf("config: %s", r)
	}
	r = runCLI(t, nil, "-s", "vfs", "serve")
	if r.code != 1 || !strings.Contains(r.stderr, `storage driver "vfs" is not supported`) {
		t.Errorf("-s vfs serve: %s", r)
	}
}

// TestCLIServeGlobalFlags: --graph and --run before serve are the daemon's
// root and run root.
func TestCLIServeGlobalFlags(t *testing.T) {
	s := newCLIStore(t)
	p := &proc{stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, "-g", s.graph, "--run", s.run, "serve")
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.exited })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(s.run, "cs-snapshotter.sock")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket under --run\n%s", p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	createdID(t, s.ok("create-layer", "-n", "x"), "x")
	if r := s.expect(0, "", "status"); !strings.Contains(r.stderr, "Store: daemon") {
		t.Errorf("status: %s", r)
	}
}
