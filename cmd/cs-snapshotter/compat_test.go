package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The script-compatibility test runs one command sequence through the real
// containers-storage command (containers/storage v1.50.2, built from the
// module proxy) and through cs-snapshotter, and compares exit statuses and
// the shape of the output: IDs, paths and times replaced, JSON reduced to
// its keys and value types where values legitimately differ.

const containersStorageModule = "github.com/containers/storage/cmd/containers-storage@v1.50.2"

// buildContainersStorage builds the containers-storage command into dir,
// or skips the test when it cannot (no module proxy).
func buildContainersStorage(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("CS_CONTAINERS_STORAGE"); bin != "" {
		return bin // a prebuilt binary
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "install", "-tags", "exclude_graphdriver_btrfs exclude_graphdriver_devicemapper", containersStorageModule)
	cmd.Dir = dir // outside this module
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cannot build %s (needs the Go module proxy): %v\n%s", containersStorageModule, err, out)
	}
	return filepath.Join(dir, "containers-storage")
}

// A step of the script. args may hold {name}, the ID the tool gave the
// layer created as name; files are in the test's data directory as {data}.
type compatStep struct {
	args []string
	// compare: "exact" (normalized stdout), "sha" (stdout's digest),
	// "lines" (normalized stdout's lines in any order), "json" (the
	// JSON's shape),
	// "status" (exit status only), "stderr4" (the first four stderr lines:
	// status).
	compare string
	// capture: the step creates layer capture; its ID is stdout's first
	// line.
	capture string
	// known: a difference here is a known gap of the store, logged
	// rather than failed.
	known string
}

type compatTool struct {
	name   string
	bin    string
	prefix []string // global flags
	graph  string
	run    string
	ids    map[string]string
}

func (tool *compatTool) exec(t *testing.T, data string, step compatStep) result {
	t.Helper()
	args := append([]string(nil), tool.prefix...)
	for _, a := range step.args {
		a = strings.ReplaceAll(a, "{data}", data)
		for name, id := range tool.ids {
			a = strings.ReplaceAll(a, "{"+name+"}", id)
		}
		args = append(args, a)
	}
	cmd := exec.Command(tool.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", tool.name, args, err)
	}
	if step.capture != "" && r.code == 0 {
		tool.ids[step.capture] = strings.SplitN(r.stdout, "\n", 2)[0]
	}
	return r
}

var (
	anyID      = regexp.MustCompile(`[0-9a-f]{64}`)
	createdRE  = regexp.MustCompile(`"created":"[^"]*"`)
	sha256Text = regexp.MustCompile(`sha256:[0-9a-f]{64}`)
)

// normalize replaces the tool's IDs by the names they were created as,
// other IDs by <ID>, paths under the tool's roots by <PATH>, times by
// <TIME>.
func (tool *compatTool) normalize(s string) string {
	for name, id := range tool.ids {
		s = strings.ReplaceAll(s, id, "{"+name+"}")
	}
	s = sha256Text.ReplaceAllString(s, "<DIGEST>")
	s = anyID.ReplaceAllString(s, "<ID>")
	s = createdRE.ReplaceAllString(s, `"created":"<TIME>"`)
	for _, root := range []string{tool.graph, tool.run} {
		s = regexp.MustCompile(regexp.QuoteMeta(root)+`[^\s"]*`).ReplaceAllString(s, "<PATH>")
	}
	return s
}

// jsonShape reduces JSON to its structure: object keys with the shapes
// of their values, arrays to the shapes of their elements, scalars to
// their type.
func jsonShape(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := map[string]any{}
		for k, e := range v {
			m[k] = jsonShape(e)
		}
		return m
	case []any:
		var a []any
		for _, e := range v {
			a = append(a, jsonShape(e))
		}
		return a
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

func shapeOf(out string) string {
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return "not JSON: " + out
	}
	b, _ := json.Marshal(jsonShape(v))
	return string(b)
}

func TestCompatContainersStorage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds containers-storage from the module proxy")
	}
	csBin := buildContainersStorage(t)

	data := t.TempDir()
	base1, top1 := baseTar(t), topTar(t)
	for name, content := range map[string][]byte{
		"base.tar.gz": gzipped(t, base1),
		"top.tar":     top1,
		"data":        []byte("layer data\n"),
	} {
		if err := os.WriteFile(filepath.Join(data, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	newTool := func(name, bin string, extra ...string) *compatTool {
		d := t.TempDir()
		tool := &compatTool{name: name, bin: bin, graph: filepath.Join(d, "graph"), run: filepath.Join(d, "run"), ids: map[string]string{}}
		tool.prefix = append([]string{"--graph", tool.graph, "--run", tool.run}, extra...)
		return tool
	}
	ref := newTool("containers-storage", csBin, "--storage-driver", "overlay")
	ours := newTool("cs-snapshotter", binary)
	t.Cleanup(func() {
		// containers-storage leaves its overlay home mounted.
		ref.exec(t, data, compatStep{args: []string{"shutdown", "-f"}})
		unix.Unmount(filepath.Join(ref.graph, "overlay"), unix.MNT_DETACH)
	})

	steps := []compatStep{
		{args: []string{"layers"}, compare: "exact"},
		{args: []string{"layers", "--json"}, compare: "exact"},
		{args: []string{"create-layer", "-r", "-n", "empty", "-n", "vacant"}, compare: "exact", capture: "empty"},
		{args: []string{"import-layer", "-r", "-n", "base", "-f", "{data}/base.tar.gz", "empty"}, compare: "exact", capture: "base"},
		{args: []string{"create-layer", "-n", "top", "base"}, compare: "exact", capture: "top"},
		{args: []string{"applydiff", "-f", "{data}/top.tar", "top"}, compare: "exact"},
		{args: []string{"create-layer", "--json", "-r", "-n", "json"}, compare: "json", capture: "json"},
		{args: []string{"delete-layer", "json"}, compare: "exact"},
		{args: []string{"layers"}, compare: "exact"},
		{args: []string{"layers", "-q"}, compare: "exact"},
		{args: []string{"layers", "-t"}, compare: "exact"},
		{args: []string{"layers", "--json"}, compare: "json"},
		{args: []string{"layer", "top"}, compare: "exact"},
		{args: []string{"layer", "empty", "{base}"}, compare: "exact"},
		{args: []string{"layer", "-j", "base"}, compare: "json"},
		{args: []string{"layer", "base", "nope"}, compare: "exact"},
		{args: []string{"diff", "-u", "top"}, compare: "sha"},
		{args: []string{"diff", "-u", "base"}, compare: "sha"},
		{args: []string{"diffsize", "top"}, compare: "exact"},
		{args: []string{"diffsize", "empty"}, compare: "exact"},
		{args: []string{"changes", "top"}, compare: "exact"},
		{args: []string{"changes", "-j", "top"}, compare: "json"},
		{args: []string{"get-names", "empty"}, compare: "exact"},
		{args: []string{"get-names", "-j", "{empty}"}, compare: "exact"},
		{args: []string{"add-names", "-n", "extra", "empty"}, compare: "exact"},
		{args: []string{"add-names", "-j", "-n", "x", "top"}, compare: "exact"},
		{args: []string{"add-names", "-n", "x", "empty"}, compare: "exact"},
		{args: []string{"get-names", "top"}, compare: "exact"},
		{args: []string{"remove-names", "-n", "vacant", "empty"}, compare: "exact"},
		{args: []string{"set-names", "-n", "e1", "-n", "e2", "empty"}, compare: "exact"},
		{args: []string{"get-names", "e1"}, compare: "exact"},
		{args: []string{"get-names", "nope"}, compare: "status"},
		{args: []string{"set-metadata", "-m", "hello world", "top"}, compare: "exact"},
		{args: []string{"metadata", "top"}, compare: "exact"},
		{args: []string{"metadata", "-q", "top"}, compare: "exact"},
		{args: []string{"metadata", "-j", "top"}, compare: "exact"},
		{args: []string{"metadata", "top", "nope"}, compare: "exact"},
		{args: []string{"set-metadata", "top"}, compare: "status"},
		{args: []string{"set-layer-data", "-f", "{data}/data", "top", "key1"}, compare: "exact"},
		{args: []string{"list-layer-data", "top"}, compare: "exact"},
		{args: []string{"list-layer-data", "-j", "base"}, compare: "exact"},
		{args: []string{"get-layer-data", "top", "key1"}, compare: "exact"},
		{args: []string{"get-layer-data", "top", "nokey"}, compare: "status"},
		// By ID: containers-storage v1.50 mounts a layer named by a name
		// at the wrong path.
		{args: []string{"mount", "{top}"}, compare: "exact"},
		{args: []string{"mounted", "{top}"}, compare: "exact"},
		{args: []string{"mount", "{top}"}, compare: "exact"},
		{args: []string{"layers", "-t"}, compare: "exact"},
		{args: []string{"unmount", "{top}"}, compare: "exact"},
		{args: []string{"mounted", "{top}"}, compare: "exact"},
		{args: []string{"unmount", "{top}"}, compare: "exact"},
		{args: []string{"mounted", "{top}"}, compare: "exact"},
		{args: []string{"mounted", "-j", "{top}"}, compare: "exact"},
		{args: []string{"mount", "{base}"}, compare: "exact"},
		{args: []string{"unmount", "-j", "{base}"}, compare: "exact"},
		{args: []string{"mount", "-j", "nope"}, compare: "json"},
		{args: []string{"mount", "nope"}, compare: "exact"},
		{args: []string{"exists", "top"}, compare: "exact"},
		{args: []string{"exists", "top", "nope"}, compare: "lines"}, // containers-storage: in map order
		{args: []string{"exists", "-q", "nope"}, compare: "exact"},
		{args: []string{"exists", "-l", "top"}, compare: "exact"},
		{args: []string{"exists", "-j", "top", "nope"}, compare: "exact"},
		// Images.
		{args: []string{"images"}, compare: "exact"},
		{args: []string{"images", "--json"}, compare: "exact"},
		{args: []string{"create-image", "-n", "img1", "-n", "img2", "-m", "image md", "base"}, compare: "exact", capture: "img"},
		{args: []string{"create-image", "--json", "-n", "jimg", "empty"}, compare: "json"},
		{args: []string{"create-image", "-n", "img1", "empty"}, compare: "status"},
		{args: []string{"create-image", "-n", "x", "nope"}, compare: "status"},
		{args: []string{"images"}, compare: "lines"},
		{args: []string{"images", "-q"}, compare: "lines"},
		{args: []string{"images", "-j"}, compare: "json"},
		{args: []string{"set-image-data", "-f", "{data}/data", "img1", "manifest"}, compare: "exact"},
		{args: []string{"list-image-data", "img1"}, compare: "exact"},
		{args: []string{"list-image-data", "-j", "{img}"}, compare: "exact"},
		{args: []string{"list-image-data", "jimg"}, compare: "exact"},
		{args: []string{"list-image-data", "nope"}, compare: "status"},
		{args: []string{"get-image-data", "img2", "manifest"}, compare: "exact"},
		{args: []string{"get-image-data", "img2", "nokey"}, compare: "status"},
		{args: []string{"get-image-data-size", "img1", "manifest"}, compare: "exact"},
		{args: []string{"get-image-data-digest", "img1", "manifest"}, compare: "exact"},
		{args: []string{"get-image-data-digest", "img1", "nokey"}, compare: "status"},
		{args: []string{"image", "img1"}, compare: "exact"},
		{args: []string{"image", "-j", "img1"}, compare: "json"},
		{args: []string{"image", "nope"}, compare: "exact"},
		{args: []string{"images-by-digest", sha([]byte("layer data\n"))}, compare: "exact"},
		{args: []string{"images-by-digest", "-q", sha([]byte("layer data\n"))}, compare: "exact"},
		{args: []string{"images-by-digest", "bad"}, compare: "status"},
		{args: []string{"exists", "-i", "img1"}, compare: "exact"},
		{args: []string{"exists", "-i", "top"}, compare: "exact"},
		{args: []string{"get-names", "img1"}, compare: "exact"},
		{args: []string{"add-names", "-j", "-n", "img3", "img1"}, compare: "exact"},
		{args: []string{"remove-names", "-n", "img2", "img1"}, compare: "exact"},
		{args: []string{"set-names", "-j", "-n", "i1", "-n", "i2", "img1"}, compare: "exact"},
		{args: []string{"metadata", "i1"}, compare: "exact"},
		{args: []string{"set-metadata", "-m", "new", "i1"}, compare: "exact"},
		{args: []string{"metadata", "-q", "{img}"}, compare: "exact"},
		// Containers, on image i1 (base) and on no image.
		{args: []string{"containers"}, compare: "exact"},
		{args: []string{"containers", "--json"}, compare: "exact"},
		{args: []string{"create-container", "-n", "ctr1", "-n", "ctr2", "-m", "ctr md", "i1"}, compare: "exact", capture: "ctr"},
		{args: []string{"create-container", "--json", "-n", "jctr", "{img}"}, compare: "json"},
		{args: []string{"createcontainer", "--volatile", ""}, compare: "exact", capture: "noimg"},
		{args: []string{"create-container", "-n", "ctr1", "i1"}, compare: "status"},
		{args: []string{"create-container", "-n", "x", "nope"}, compare: "status"},
		{args: []string{"create-container"}, compare: "status"},
		{args: []string{"create-container", "i1", "i2"}, compare: "status"},
		{args: []string{"create-container", "--hostuidmap", "--uidmap", "0:1000:1", "i1"}, compare: "status"},
		{args: []string{"create-container", "--uidmap", "0:1000:1", "-n", "mapped", "i1"}, compare: "status",
			known: "ID mappings: the store keeps files unmapped and refuses them"},
		{args: []string{"delete-container", "mapped"}, compare: "status",
			known: "ID mappings: containers-storage made the mapped container"},
		{args: []string{"containers"}, compare: "lines"},
		{args: []string{"containers", "-j"}, compare: "json"},
		{args: []string{"containers", "extra"}, compare: "status"},
		{args: []string{"container", "ctr1"}, compare: "exact"},
		{args: []string{"container", "-j", "ctr2"}, compare: "json"},
		{args: []string{"container", "{noimg}"}, compare: "exact"},
		{args: []string{"container", "-j", "{noimg}"}, compare: "json"}, // flags.Volatile
		{args: []string{"container", "ctr1", "nope"}, compare: "exact"},
		{args: []string{"container", "-j", "nope"}, compare: "exact"},
		{args: []string{"container", "i1"}, compare: "exact"},
		{args: []string{"set-container-data", "-f", "{data}/data", "ctr1", "key1"}, compare: "exact"},
		{args: []string{"setcontainerdata", "-f", "{data}/base.tar.gz", "{ctr}", "key2"}, compare: "exact"},
		{args: []string{"set-container-data", "-f", "{data}/data", "nope", "key1"}, compare: "status"},
		{args: []string{"set-container-data", "-f", "{data}/data", "ctr1", ""}, compare: "status"},
		{args: []string{"list-container-data", "ctr1"}, compare: "exact"},
		{args: []string{"list-container-data", "-j", "{ctr}"}, compare: "exact"},
		{args: []string{"list-container-data", "jctr"}, compare: "exact"},
		{args: []string{"list-container-data", "nope"}, compare: "status"},
		{args: []string{"list-container-data", "i1"}, compare: "status"},
		{args: []string{"get-container-data", "ctr2", "key1"}, compare: "exact"},
		{args: []string{"getcontainerdata", "ctr2", "key2"}, compare: "sha"},
		{args: []string{"get-container-data", "ctr2", "nokey"}, compare: "status"},
		{args: []string{"get-container-data", "nope", "key1"}, compare: "status"},
		{args: []string{"get-container-data-size", "ctr1", "key1"}, compare: "exact"},
		{args: []string{"get-container-data-size", "ctr1", "nokey"}, compare: "status"},
		{args: []string{"get-container-data-digest", "ctr1", "key1"}, compare: "exact"},
		{args: []string{"get-container-data-digest", "ctr1", "nokey"}, compare: "status"},
		{args: []string{"container", "ctr1"}, compare: "exact"}, // the size counts the data
		{args: []string{"containers"}, compare: "lines"},
		{args: []string{"get-container-dir", "ctr1"}, compare: "exact"},
		{args: []string{"get-container-run-dir", "{ctr}"}, compare: "exact"},
		{args: []string{"get-container-dir", "nope"}, compare: "status"},
		{args: []string{"get-container-run-dir", "i1"}, compare: "status"},
		{args: []string{"exists", "-c", "ctr1"}, compare: "exact"},
		{args: []string{"exists", "-c", "i1"}, compare: "exact"},
		{args: []string{"exists", "--container", "nope"}, compare: "exact"},
		{args: []string{"exists", "-j", "-c", "ctr1", "nope"}, compare: "exact"},
		{args: []string{"exists", "-i", "ctr1"}, compare: "exact"},
		{args: []string{"get-names", "ctr1"}, compare: "exact"},
		{args: []string{"add-names", "-j", "-n", "ctr3", "ctr1"}, compare: "exact"},
		{args: []string{"remove-names", "-n", "ctr2", "ctr1"}, compare: "exact"},
		{args: []string{"set-names", "-j", "-n", "k1", "-n", "k2", "ctr1"}, compare: "exact"},
		{args: []string{"set-names", "-n", "k2", "-n", "jctr", "jctr"}, compare: "exact"}, // k2 moves
		{args: []string{"get-names", "{ctr}"}, compare: "exact"},
		{args: []string{"get-names", "jctr"}, compare: "exact"},
		{args: []string{"metadata", "{ctr}"}, compare: "exact"},
		{args: []string{"set-metadata", "-m", "new", "k1"}, compare: "exact"},
		{args: []string{"metadata", "-q", "{ctr}"}, compare: "exact"},
		{args: []string{"metadata", "-j", "jctr"}, compare: "exact"},
		{args: []string{"mount", "{ctr}"}, compare: "exact"},
		{args: []string{"mounted", "{ctr}"}, compare: "exact"},
		{args: []string{"unmount", "{ctr}"}, compare: "exact"},
		{args: []string{"mounted", "{ctr}"}, compare: "exact"},
		{args: []string{"mount", "-j", "k1"}, compare: "json"},
		{args: []string{"mounted", "k1"}, compare: "exact"},
		{args: []string{"unmount", "-j", "k1"}, compare: "exact"},
		{args: []string{"delete-image", "i1"}, compare: "status"}, // used by containers
		{args: []string{"delete-container", "-j", "nope"}, compare: "exact"},
		{args: []string{"delete-container", "i1"}, compare: "status"},
		{args: []string{"delete-container", "{ctr}"}, compare: "exact"},
		{args: []string{"deletecontainer", "-j", "{noimg}"}, compare: "exact"},
		{args: []string{"delete", "jctr"}, compare: "exact"},
		{args: []string{"exists", "-c", "{ctr}"}, compare: "exact"},
		{args: []string{"containers"}, compare: "exact"},
		{args: []string{"containers", "-j"}, compare: "exact"},
		{args: []string{"delete-image", "-t", "i1"}, compare: "exact"},
		{args: []string{"delete-image", "-j", "nope"}, compare: "exact"},
		{args: []string{"delete-image", "jimg"}, compare: "exact"},
		{args: []string{"delete-image", "-j", "i1"}, compare: "exact"},
		{args: []string{"images"}, compare: "exact"},
		{args: []string{"layers", "-q"}, compare: "lines"},
		{args: []string{"delete-layer", "{base}"}, compare: "status"},
		{args: []string{"delete-layer", "-j", "{base}"}, compare: "json"},
		{args: []string{"status"}, compare: "stderr4"},
		{args: []string{"status", "--json"}, compare: "status"},
		{args: []string{"version", "--json"}, compare: "status"},
		{args: []string{"delete-layer", "top"}, compare: "exact"},
		{args: []string{"delete-layer", "-j", "{base}"}, compare: "exact"},
		{args: []string{"delete", "e1"}, compare: "exact"},
		{args: []string{"layers"}, compare: "exact"},
		{args: []string{"create-layer", "-n", "w"}, compare: "exact", capture: "w"},
		{args: []string{"create-layer", "-n", "wchild", "w"}, compare: "exact", capture: "wchild"},
		{args: []string{"wipe"}, compare: "exact"},
		{args: []string{"layers"}, compare: "exact"},
		{args: []string{"wipe", "-j"}, compare: "exact"},
		{args: []string{"layers", "bogus"}, compare: "status"},
		{args: []string{"bogus"}, compare: "status"},
		{args: []string{"shutdown"}, compare: "exact"},
	}
	var known []string
	for _, step := range steps {
		r1 := ref.exec(t, data, step)
		r2 := ours.exec(t, data, step)
		var a, b string
		switch step.compare {
		case "exact":
			a, b = ref.normalize(r1.stdout), ours.normalize(r2.stdout)
		case "json":
			a, b = shapeOf(ref.normalize(r1.stdout)), shapeOf(ours.normalize(r2.stdout))
		case "lines":
			a, b = sortedLines(ref.normalize(r1.stdout)), sortedLines(ours.normalize(r2.stdout))
		case "sha":
			a, b = sha([]byte(r1.stdout)), sha([]byte(r2.stdout))
		case "stderr4":
			a, b = firstLines(ref.normalize(r1.stderr), 4), firstLines(ours.normalize(r2.stderr), 4)
		}
		if r1.code == r2.code && a == b {
			continue
		}
		msg := fmt.Sprintf("%v (%s):\n  containers-storage: exit %d, %q\n  cs-snapshotter:     exit %d, %q\n  stderr: %q / %q",
			step.args, step.compare, r1.code, a, r2.code, b, r1.stderr, r2.stderr)
		if step.known != "" {
			known = append(known, msg+"\n  known: "+step.known)
			continue
		}
		t.Error(msg)
	}
	sort.Strings(known)
	for _, k := range known {
		t.Logf("known difference: %s", k)
	}
}

func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "")
}

func sortedLines(s string) string {
	lines := strings.SplitAfter(s, "\n")
	sort.Strings(lines)
	return strings.Join(lines, "")
}
