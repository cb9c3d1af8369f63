package e2e

// TestDocs keeps the operator documentation in docs/ honest:
//
//   - links: every relative link names a file of the repository, and every
//     #anchor a heading of the page it points to (GitHub's slugs);
//   - toml: every ```toml block starts with a comment naming its file.
//     containerd's (/etc/containerd/config.toml) must be a verbatim excerpt
//     of deploy/containerd-cs.toml, deploy/kubernetes/containerd-config.toml
//     or the e2e template, and loads with containerd's own config loader;
//     the daemon's (/etc/cs-snapshotter/config.toml) parses with the
//     daemon's strict loader;
//   - commands: migrating.md's command table covers every command of
//     `cs-snapshotter --help` and every containers-storage command, and its
//     aliases and missing commands are what the CLI says;
//   - sh: every ```sh block (benchmarks.md excepted, see docsNotRun) runs,
//     page after page in docsFirst order, as one bash script with
//     `set -euo pipefail`, in a sandbox that looks like a node: a copy of
//     the repository as the working directory, and the host paths the docs
//     use (docsHostPaths) moved under the sandbox directory. systemctl and
//     journalctl are stand-ins that run the units the docs install (the
//     daemon from the unit's ExecStart with Type=notify readiness, socket
//     activation from the socket unit, containerd from the config the docs
//     install) with this package's harness; `cs-snapshotter serve` runs in
//     the foreground until it serves, then gets SIGTERM and must exit 0;
//     nerdctl, ctr and the CLI reach the sandbox's containerd and daemon.
//     A command the sandbox cannot run (its name is not in docsRunnable) is
//     accepted only if the line appears verbatim in a test or a script of
//     the repository, and is then skipped; anything else fails the test,
//     naming the command. Placeholders the docs use: busybox.tar (an image
//     archive of docker.io/library/busybox:latest), layer.tar and
//     layer.tar.gz (layer diffs) in the working directory, $LAYER (a
//     mounted layer of the store), 127.0.0.1:9100 (a free port).

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/coreos/go-systemd/v22/unit"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

// docsFirst are the pages whose blocks run first, in this order (each
// builds on the state the previous ones leave); the other pages follow in
// name order.
var docsFirst = []string{"install.md", "containerd.md", "kubernetes.md", "migrating.md", "troubleshooting.md"}

// docsNotRun are pages whose sh blocks are not run, and why.
var docsNotRun = map[string]string{
	"benchmarks.md": "its commands are the benchmark runs (minutes each, scripts/bench.sh)",
}

// docsRunnable are the commands the sandbox runs.
var docsRunnable = []string{
	"cs-snapshotter", "ctr", "nerdctl", "go", "systemctl", "journalctl",
	"install", "mkdir", "cat", "echo", "cmp", "curl", "grep", "awk", "sed",
	"du", "df", "stat", "ls", "export", "head", "tail",
}

// docsHostPaths are the host paths the docs use; in the sandbox each is
// the same path under the sandbox directory.
var docsHostPaths = []string{
	"/var/lib/cs-snapshotter", "/run/cs-snapshotter",
	"/var/lib/containerd", "/run/containerd",
	"/var/lib/nerdctl",
	"/etc/cs-snapshotter", "/etc/containerd", "/etc/systemd/system", "/etc/nerdctl",
	"/usr/local/bin",
	"/srv",
}

// docsMetricsAddress is the metrics address the docs use; the sandbox
// serves on a free port instead.
const docsMetricsAddress = "127.0.0.1:9100"

// The image the docs' busybox.tar holds.
const docsImageName = "docker.io/library/busybox:latest"

type docPage struct {
	name string // e.g. install.md
	text string
}

type docFence struct {
	page string
	line int // of the opening fence, 1-based
	lang string
	body string
}

func (f docFence) where() string { return fmt.Sprintf("docs/%s:%d", f.page, f.line) }

func loadDocPages(t *testing.T, root string) []docPage {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no docs/*.md in %s: %v", root, err)
	}
	order := map[string]int{}
	for i, n := range docsFirst {
		order[n] = i + 1
	}
	var pages []docPage
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		pages = append(pages, docPage{name: filepath.Base(p), text: string(b)})
	}
	for _, n := range docsFirst {
		if !slices.ContainsFunc(pages, func(p docPage) bool { return p.name == n }) {
			t.Errorf("docs/%s is missing", n)
		}
	}
	sort.SliceStable(pages, func(i, j int) bool {
		oi, oj := order[pages[i].name], order[pages[j].name]
		if oi == 0 {
			oi = len(docsFirst) + 1
		}
		if oj == 0 {
			oj = len(docsFirst) + 1
		}
		if oi != oj {
			return oi < oj
		}
		return pages[i].name < pages[j].name
	})
	return pages
}

// fences returns the fenced code blocks of a page.
func (p docPage) fences() []docFence {
	var out []docFence
	var cur *docFence
	for i, line := range strings.Split(p.text, "\n") {
		if cur == nil {
			if lang, ok := strings.CutPrefix(line, "```"); ok {
				cur = &docFence{page: p.name, line: i + 1, lang: strings.TrimSpace(lang)}
			}
			continue
		}
		if strings.TrimSpace(line) == "```" {
			out = append(out, *cur)
			cur = nil
			continue
		}
		cur.body += line + "\n"
	}
	return out
}

// prose returns the page's lines outside code blocks, with their numbers.
func (p docPage) prose() map[int]string {
	out := map[int]string{}
	in := false
	for i, line := range strings.Split(p.text, "\n") {
		if strings.HasPrefix(line, "```") {
			in = !in
			continue
		}
		if !in {
			out[i+1] = line
		}
	}
	return out
}

// githubSlug is the anchor GitHub gives a heading.
func githubSlug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

func markdownAnchors(text string) map[string]bool {
	anchors := map[string]bool{}
	in := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "```") {
			in = !in
			continue
		}
		if in || !strings.HasPrefix(line, "#") {
			continue
		}
		anchors[githubSlug(strings.TrimLeft(line, "#"))] = true
	}
	return anchors
}

var markdownLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

func TestDocs(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	pages := loadDocPages(t, root)
	t.Run("links", func(t *testing.T) { checkDocLinks(t, root, pages) })
	t.Run("toml", func(t *testing.T) { checkDocTOML(t, root, pages) })
	t.Run("commands", func(t *testing.T) {
		requireSetup(t)
		requireDaemon(t)
		for _, p := range pages {
			if p.name == "migrating.md" {
				checkCommandTable(t, p)
			}
		}
	})
	t.Run("sh", func(t *testing.T) {
		requireSetup(t)
		requireDaemon(t)
		runDocBlocks(t, root, pages)
	})
}

func checkDocLinks(t *testing.T, root string, pages []docPage) {
	anchorsOf := map[string]map[string]bool{}
	anchors := func(path string) map[string]bool {
		if a, ok := anchorsOf[path]; ok {
			return a
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		anchorsOf[path] = markdownAnchors(string(b))
		return anchorsOf[path]
	}
	for _, p := range pages {
		self := filepath.Join(root, "docs", p.name)
		for n, line := range p.prose() {
			for _, m := range markdownLink.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, anchor, _ := strings.Cut(target, "#")
				path := self
				if file != "" {
					path = filepath.Join(root, "docs", file)
					if _, err := os.Stat(path); err != nil {
						t.Errorf("docs/%s:%d: link %s: no such file in the repository", p.name, n, target)
						continue
					}
				}
				if anchor != "" && strings.HasSuffix(path, ".md") && !anchors(path)[anchor] {
					t.Errorf("docs/%s:%d: link %s: %s has no heading with anchor #%s", p.name, n, target, filepath.Base(path), anchor)
				}
			}
		}
	}
}

// The files containerd excerpts in the docs may come from.
var containerdConfigSources = []string{
	"deploy/containerd-cs.toml",
	"deploy/kubernetes/containerd-config.toml",
	"test/e2e/testdata/containerd.toml.tmpl",
}

func checkDocTOML(t *testing.T, root string, pages []docPage) {
	var sources []string
	for _, s := range containerdConfigSources {
		b, err := os.ReadFile(filepath.Join(root, s))
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, string(b))
	}
	versionLine := regexp.MustCompile(`(?m)^version\s*=`)
	for _, p := range pages {
		for _, f := range p.fences() {
			if f.lang != "toml" {
				continue
			}
			head, body, _ := strings.Cut(f.body, "\n")
			switch strings.TrimSpace(head) {
			case "# /etc/containerd/config.toml":
				if !slices.ContainsFunc(sources, func(s string) bool { return strings.Contains(s, body) }) {
					t.Errorf("%s: this containerd configuration is not a verbatim excerpt of %s:\n%s", f.where(), strings.Join(containerdConfigSources, ", "), body)
				}
				text := body
				if !versionLine.MatchString(text) {
					text = "version = 3\n" + text
				}
				path := filepath.Join(t.TempDir(), "config.toml")
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
				var cfg srvconfig.Config
				if err := srvconfig.LoadConfig(context.Background(), path, &cfg); err != nil {
					t.Errorf("%s: containerd cannot load this configuration: %v\n%s", f.where(), err, text)
				}
			case "# /etc/cs-snapshotter/config.toml":
				c := config.Default()
				if err := config.Parse([]byte(body), &c); err != nil {
					t.Errorf("%s: the daemon refuses this configuration: %v\n%s", f.where(), err, body)
				}
			default:
				t.Errorf("%s: a toml block must begin with a comment naming its file (# /etc/containerd/config.toml or # /etc/cs-snapshotter/config.toml), not %q", f.where(), head)
			}
		}
	}
}

// checkCommandTable checks migrating.md's "Command mapping" table against
// the CLI (and containers/storage's source, when the module cache has it).
func checkCommandTable(t *testing.T, p docPage) {
	_, section, ok := strings.Cut(p.text, "\n## Command mapping\n")
	if !ok {
		t.Fatal("docs/migrating.md has no \"## Command mapping\" section")
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	out, err := exec.Command(csBin, "--help").Output()
	if err != nil {
		t.Fatalf("cs-snapshotter --help: %v", err)
	}
	_, cmds, _ := strings.Cut(string(out), "Commands:\n")
	cmds, _, _ = strings.Cut(cmds, "\nGlobal options:")
	helpCommands := map[string]bool{}
	for _, line := range strings.Split(cmds, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			helpCommands[f[0]] = true
		}
	}
	names := regexp.MustCompile("`([^`]+)`")
	listed := map[string]bool{}
	var storageRows [][]string
	rows := 0
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| containers-storage") {
			continue
		}
		rows++
		var left, right []string
		for _, m := range names.FindAllStringSubmatch(cells[1], -1) {
			left = append(left, m[1])
		}
		for _, m := range names.FindAllStringSubmatch(cells[2], -1) {
			right = append(right, m[1])
		}
		if len(left) > 0 {
			storageRows = append(storageRows, left)
		}
		switch {
		case len(right) == 1:
			cmd := right[0]
			if !helpCommands[cmd] {
				t.Errorf("migrating.md: %q is not a command of cs-snapshotter --help", cmd)
				continue
			}
			if listed[cmd] {
				t.Errorf("migrating.md: %q is listed twice", cmd)
			}
			listed[cmd] = true
			if len(left) == 0 {
				continue
			}
			if left[0] != cmd {
				t.Errorf("migrating.md: containers-storage's %q maps to %q; the names are the same", left[0], cmd)
			}
			help, err := exec.Command(csBin, cmd, "--help").CombinedOutput()
			if err != nil {
				t.Errorf("cs-snapshotter %s --help: %v\n%s", cmd, err, help)
				continue
			}
			var aliases []string
			for _, l := range strings.Split(string(help), "\n") {
				if a, ok := strings.CutPrefix(l, "Aliases: "); ok {
					aliases = strings.Split(a, ", ")
				}
			}
			if len(aliases) == 0 {
				aliases = []string{cmd}
			}
			if !slices.Equal(aliases, left) {
				t.Errorf("migrating.md: %s is listed with names %v; cs-snapshotter %s --help says %v", cmd, left, cmd, aliases)
			}
		case len(right) == 0 && len(left) > 0:
			// Not available: the CLI must say so.
			out, err := exec.Command(csBin, left[0]).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "unrecognized command") {
				t.Errorf("migrating.md says containers-storage's %q has no counterpart, but cs-snapshotter %s says: %v %s", left[0], left[0], err, out)
			}
		default:
			t.Errorf("migrating.md: cannot read the row %q", line)
		}
	}
	if rows == 0 {
		t.Fatal("migrating.md's command table has no rows")
	}
	for cmd := range helpCommands {
		if !listed[cmd] {
			t.Errorf("migrating.md's command table lacks cs-snapshotter's %q", cmd)
		}
	}

	// containers-storage's own commands, from its source when at hand.
	gomodcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Logf("go env GOMODCACHE: %v; containers-storage's side of the table not checked", err)
		return
	}
	src := filepath.Join(strings.TrimSpace(string(gomodcache)), "github.com/containers/storage@v1.50.2/cmd/containers-storage")
	files, _ := filepath.Glob(filepath.Join(src, "*.go"))
	if len(files) == 0 {
		t.Logf("%s is not in the module cache; containers-storage's side of the table not checked", src)
		return
	}
	namesDecl := regexp.MustCompile(`names:\s*\[\]string\{([^}]*)\}`)
	quoted := regexp.MustCompile(`"([^"]+)"`)
	var want []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range namesDecl.FindAllStringSubmatch(string(b), -1) {
			var ns []string
			for _, q := range quoted.FindAllStringSubmatch(m[1], -1) {
				ns = append(ns, q[1])
			}
			want = append(want, strings.Join(ns, " "))
		}
	}
	var got []string
	for _, r := range storageRows {
		got = append(got, strings.Join(r, " "))
	}
	sort.Strings(want)
	sort.Strings(got)
	if !slices.Equal(want, got) {
		t.Errorf("migrating.md's containers-storage column (names and aliases):\n  %v\ncontainers-storage v1.50.2 has:\n  %v", got, want)
	}
}

// docsSandbox is the node the sh blocks run on.
type docsSandbox struct {
	t       *testing.T
	e       *Env
	root    string // the repository
	dir     string // the sandbox: host paths the docs use are under it
	src     string // the working directory: a copy of the repository
	fakebin string
	ns      string // containerd namespace of the docs' commands
	metrics string // the address standing in for docsMetricsAddress
	env     []string

	ctl net.Listener
	mu  sync.Mutex // one stand-in command at a time

	notify     *net.UnixConn // the running daemon's NOTIFY_SOCKET
	notifyMsgs chan string
	sockL      *net.UnixListener // cs-snapshotter.socket, when started
	sockF      *os.File
	sockPath   string
	seq        int
}

func runDocBlocks(t *testing.T, root string, pages []docPage) {
	var missing []string
	for _, c := range docsRunnable {
		switch c {
		case "cs-snapshotter", "systemctl", "journalctl", "export":
			continue // stand-ins, a builtin
		}
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the docs' commands need %s on PATH; install them (apt-get install curl diffutils ...)", strings.Join(missing, ", "))
	}
	sb := newDocsSandbox(t, root)
	verbatim := verbatimLines(t, root)
	ran, skipped := 0, 0
	for _, p := range pages {
		if why, ok := docsNotRun[p.name]; ok {
			t.Logf("docs/%s: sh blocks not run: %s", p.name, why)
			continue
		}
		for _, f := range p.fences() {
			if f.lang != "sh" {
				continue
			}
			script, n := sb.prepare(t, f, verbatim)
			skipped += n
			if strings.Contains(f.body, "$LAYER") {
				sb.placeLayer(t)
			}
			sb.run(t, f, script)
			ran++
		}
	}
	t.Logf("%d sh blocks run; %d lines skipped as found verbatim in tests or scripts", ran, skipped)
}

func newDocsSandbox(t *testing.T, root string) *docsSandbox {
	dir, err := os.MkdirTemp(os.Getenv("CS_E2E_TMPDIR"), "csdoc-")
	if err != nil {
		t.Fatal(err)
	}
	sb := &docsSandbox{t: t, root: root, dir: dir, src: filepath.Join(dir, "src"), fakebin: filepath.Join(dir, "fakebin")}
	sb.ns = "docs-" + strings.TrimPrefix(filepath.Base(dir), "csdoc-")
	e := &Env{
		t:           t,
		Dir:         dir,
		CSRoot:      sb.path("/var/lib/cs-snapshotter"),
		CSRunRoot:   sb.path("/run/cs-snapshotter"),
		CSSocket:    sb.path("/run/cs-snapshotter/cs-snapshotter.sock"),
		CSLog:       filepath.Join(dir, "log", "cs-snapshotter.log"),
		CSConfig:    sb.path("/etc/cs-snapshotter/config.toml"),
		CtrdRoot:    sb.path("/var/lib/containerd"),
		CtrdState:   sb.path("/run/containerd"),
		CtrdSocket:  sb.path("/run/containerd/containerd.sock"),
		CtrdConfig:  sb.path("/etc/containerd/config.toml"),
		CtrdLog:     filepath.Join(dir, "log", "containerd.log"),
		NerdctlRoot: sb.path("/var/lib/nerdctl"),
		NerdctlTOML: sb.path("/etc/nerdctl/nerdctl.toml"),
		Snapshotter: "cs",
	}
	sb.e = e
	t.Cleanup(e.cleanup)
	t.Cleanup(sb.close)

	// What a node has before the docs' commands run.
	for _, d := range []string{"log", "tmp", "fakebin", "src", "etc/systemd/system", "etc/containerd", "usr/local/bin", "var/lib", "run", "srv"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sb.copyRepository(t)
	if _, err := imagebuild.BuildFile(filepath.Join(sb.src, "busybox.tar"), imagebuild.Options{Name: docsImageName}); err != nil {
		t.Fatalf("building busybox.tar: %v", err)
	}
	sb.seedSharedStore(t)
	layer := docsLayerTar(t)
	if err := os.WriteFile(filepath.Join(sb.src, "layer.tar"), layer, 0o644); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layer)
	zw.Close()
	if err := os.WriteFile(filepath.Join(sb.src, "layer.tar.gz"), gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	// A free port for the metrics endpoint.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sb.metrics = l.Addr().String()
	l.Close()

	// The stand-ins call back here.
	if sb.ctl, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	go sb.serveControl()
	sb.writeFakes(t)

	env := []string{}
	for _, kv := range cleanEnv() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH", "TMPDIR", "XDG_RUNTIME_DIR", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
			"STORAGE_DRIVER", "STORAGE_OPTS", "LAYER":
			continue
		}
		env = append(env, kv)
	}
	sb.env = append(env,
		"PATH="+sb.fakebin+":"+os.Getenv("PATH"),
		"TMPDIR="+filepath.Join(dir, "tmp"),
		"CONTAINERD_ADDRESS="+e.CtrdSocket,
		"CONTAINERD_NAMESPACE="+sb.ns,
		"NERDCTL_TOML="+e.NerdctlTOML,
	)
	t.Logf("docs sandbox in %s (containerd namespace %s)", dir, sb.ns)
	return sb
}

// docsSharedImage is the image in the shared store at /srv/shared.
const docsSharedImage = "docker.io/library/shared-app:1"

// seedSharedStore makes /srv/shared a cs-snapshotter root holding
// docsSharedImage, as another host would have filled it (containerd's
// import into its cs snapshotter), for the docs on shared image stores.
func (sb *docsSandbox) seedSharedStore(t *testing.T) {
	archive := filepath.Join(sb.dir, "tmp", "shared-app.tar")
	if _, err := imagebuild.BuildFile(archive, imagebuild.Options{Name: docsSharedImage, Layers: 2, Hello: "hello from the shared store\n"}); err != nil {
		t.Fatalf("building the shared store's image: %v", err)
	}
	seed := NewEnv(t)
	// --index-name keeps the archive's index, whose annotation names the
	// image in the store (containerd discards it otherwise).
	seed.MustCtr("images", "import", "--snapshotter", "cs", "--index-name", "docker.io/library/shared-app:index", archive)
	seed.StopDaemon()
	if err := os.Rename(seed.CSRoot, sb.path("/srv/shared")); err != nil {
		t.Fatalf("moving the seeded root to /srv/shared: %v", err)
	}
	os.Remove(archive)
}

// path is where host path p is in the sandbox.
func (sb *docsSandbox) path(p string) string { return sb.dir + p }

// paths moves the host paths in s into the sandbox.
func (sb *docsSandbox) paths(s string) string {
	for _, p := range docsHostPaths {
		s = replaceHostPath(s, p, sb.dir+p)
	}
	return strings.ReplaceAll(s, docsMetricsAddress, sb.metrics)
}

// replaceHostPath replaces old in s where it stands as a path of its own:
// not in the middle of a word or of a longer path.
func replaceHostPath(s, old, repl string) string {
	var b strings.Builder
	prev := byte(' ')
	for {
		i := strings.Index(s, old)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		before := prev
		if i > 0 {
			before = s[i-1]
		}
		after := byte(' ')
		if i+len(old) < len(s) {
			after = s[i+len(old)]
		}
		b.WriteString(s[:i])
		if strings.IndexByte(" \t\n'\"=(^<>,:[", before) >= 0 && strings.IndexByte(" \t\n'\"/),:;|&<>]}", after) >= 0 {
			b.WriteString(repl)
		} else {
			b.WriteString(old)
		}
		prev = old[len(old)-1]
		s = s[i+len(old):]
	}
}

var unmappedHostPath = regexp.MustCompile(`(^|[\s'"=(^<>,:\[])(/(var/lib|run|usr/local|etc/(systemd|containerd|cs-snapshotter|nerdctl))(/[^\s'"]*)?)`)

// copyRepository copies the repository's files (tracked, and untracked
// but not ignored) into the working directory.
func (sb *docsSandbox) copyRepository(t *testing.T) {
	cmd := exec.Command("git", "ls-files", "-z", "-c", "-o", "--exclude-standard")
	cmd.Dir = sb.root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files in %s: %v", sb.root, err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		src := filepath.Join(sb.root, name)
		st, err := os.Lstat(src)
		if err != nil || !st.Mode().IsRegular() {
			continue // deleted in the working tree, or not a file
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(sb.src, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// docsLayerTar is a small layer diff: a directory, files, a symlink.
func docsLayerTar(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "app/hello.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 6},
		{Name: "app/run.sh", Typeflag: tar.TypeReg, Mode: 0o755, Size: 22},
		{Name: "app/current", Typeflag: tar.TypeSymlink, Linkname: "hello.txt", Mode: 0o777},
	} {
		h.ModTime = imagebuild.Epoch
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		switch h.Name {
		case "app/hello.txt":
			tw.Write([]byte("hello\n"))
		case "app/run.sh":
			tw.Write([]byte("#!/bin/sh\necho running\n"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writeFakes writes the stand-ins: systemctl, journalctl and the serve
// command of cs-snapshotter call back into the test; cs-snapshotter's other
// commands and nerdctl run for real, on the sandbox's roots.
func (sb *docsSandbox) writeFakes(t *testing.T) {
	port := sb.ctl.Addr().(*net.TCPAddr).Port
	ctl := fmt.Sprintf(`ctl() {
  exec 3<>/dev/tcp/127.0.0.1/%d || exit 70
  { printf '%%s\n' "$PWD" "$#"; printf '%%s\n' "$@"; } >&3
  local rc=1 line
  while IFS= read -r line <&3; do
    case $line in
      $'\x01EXIT '*) rc=${line#$'\x01EXIT '} ;;
      *) printf '%%s\n' "$line" ;;
    esac
  done
  exit "$rc"
}
`, port)
	nerdctl, err := exec.LookPath("nerdctl")
	if err != nil {
		t.Fatal(err)
	}
	fakes := map[string]string{
		"systemctl":  ctl + "ctl systemctl \"$@\"\n",
		"journalctl": ctl + "ctl journalctl \"$@\"\n",
		"cs-snapshotter": ctl + fmt.Sprintf(`bin=%s
[ -x "$bin" ] || bin=%s
if [ "${1:-}" = serve ]; then shift; ctl serve "$@"; fi
exec "$bin" --graph %s --run %s "$@"
`, sb.path("/usr/local/bin/cs-snapshotter"), csBin, sb.e.CSRoot, sb.e.CSRunRoot),
		"nerdctl": fmt.Sprintf("exec %s --data-root %s --cgroup-manager cgroupfs \"$@\"\n", nerdctl, sb.e.NerdctlRoot),
	}
	for name, body := range fakes {
		if err := os.WriteFile(filepath.Join(sb.fakebin, name), []byte("#!/bin/bash\n# docs sandbox stand-in (test/e2e/docs_test.go)\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func (sb *docsSandbox) close() {
	if sb.ctl != nil {
		sb.ctl.Close()
	}
	sb.stopSocket()
	if sb.notify != nil {
		sb.notify.Close()
	}
}

// verbatimLines are the lines of the repository's tests and scripts.
func verbatimLines(t *testing.T, root string) map[string]string {
	lines := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if rel == ".git" || rel == "bin" || rel == "docs" {
				return filepath.SkipDir
			}
			return nil
		}
		if !(strings.HasSuffix(p, "_test.go") || strings.HasSuffix(p, ".sh")) || rel == "test/e2e/docs_test.go" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				if _, ok := lines[l]; !ok {
					lines[l] = rel
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

var heredocStart = regexp.MustCompile(`<<-?\s*['"]?([A-Za-z_][A-Za-z0-9_]*)['"]?`)

// prepare turns a block into the script the sandbox runs: host paths moved
// into the sandbox; each line whose commands the sandbox cannot run
// replaced by a no-op if it appears verbatim in a test or script (it fails
// the test otherwise). It returns how many lines it replaced.
func (sb *docsSandbox) prepare(t *testing.T, f docFence, verbatim map[string]string) (string, int) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(f.body, "\n"), "\n")
	var out []string
	skipped := 0
	for i := 0; i < len(lines); i++ {
		start := i
		logical := lines[i]
		raw := []string{lines[i]}
		for strings.HasSuffix(logical, "\\") && i+1 < len(lines) {
			i++
			logical = strings.TrimSuffix(logical, "\\") + " " + strings.TrimSpace(lines[i])
			raw = append(raw, lines[i])
		}
		var body []string
		if m := heredocStart.FindStringSubmatch(logical); m != nil {
			for i+1 < len(lines) {
				i++
				body = append(body, lines[i])
				if strings.TrimSpace(lines[i]) == m[1] {
					break
				}
			}
		}
		var unknown []string
		for _, w := range shellCommands(logical) {
			if !slices.Contains(docsRunnable, w) {
				unknown = append(unknown, w)
			}
		}
		if len(unknown) > 0 {
			code := strings.TrimSpace(stripShellComment(logical))
			if src, ok := verbatim[code]; ok && len(body) == 0 {
				out = append(out, fmt.Sprintf(": # not run: found verbatim in %s: %s", src, shellQuote(code)))
				skipped++
				continue
			}
			t.Fatalf("docs/%s:%d: %q runs %s, which the docs sandbox does not run, and the line appears verbatim in no test or script",
				f.page, f.line+1+start, code, strings.Join(unknown, ", "))
		}
		out = append(out, raw...)
		out = append(out, body...)
	}
	script := sb.paths(strings.Join(out, "\n"))
	if m := unmappedHostPath.FindStringSubmatch(strings.ReplaceAll(script, sb.dir, "@SANDBOX")); m != nil {
		t.Fatalf("%s: the block uses host path %s, which the docs sandbox does not map (docsHostPaths)", f.where(), m[2])
	}
	return script, skipped
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// stripShellComment drops a # comment that is not inside quotes.
func stripShellComment(s string) string {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else if c == '\\' && quote == '"' {
				i++
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '\\':
			i++
		case c == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return s[:i]
		}
	}
	return s
}

// shellCommands returns the names of the commands a shell line runs: the
// first word of each pipeline element and list item (after VAR=value
// assignments), also inside $(...).
func shellCommands(line string) []string {
	line = stripShellComment(line)
	var cmds []string
	var cur strings.Builder
	var segments []string
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		if quote == '\'' {
			cur.WriteByte(c)
			if c == '\'' {
				quote = 0
			}
			continue
		}
		if c == '$' && i+1 < len(line) && line[i+1] == '(' {
			depth, j := 1, i+2
			for ; j < len(line) && depth > 0; j++ {
				switch line[j] {
				case '(':
					depth++
				case ')':
					depth--
				}
			}
			cmds = append(cmds, shellCommands(line[i+2:j-1])...)
			cur.WriteString("X")
			i = j - 1
			continue
		}
		if quote == '"' {
			cur.WriteByte(c)
			if c == '"' {
				quote = 0
			}
			continue
		}
		switch c {
		case '\'', '"':
			quote = c
			cur.WriteByte(c)
		case '|', ';', '&':
			if c == '&' && i > 0 && (line[i-1] == '>' || line[i-1] == '<') {
				cur.WriteByte(c) // 2>&1
				continue
			}
			segments = append(segments, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	segments = append(segments, cur.String())
	assignment := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	for _, seg := range segments {
		for _, w := range strings.Fields(seg) {
			if w == "!" || assignment.MatchString(w) {
				continue
			}
			cmds = append(cmds, w)
			break
		}
	}
	return cmds
}

// placeLayer defines $LAYER: a layer of the store, mounted.
func (sb *docsSandbox) placeLayer(t *testing.T) {
	for _, kv := range sb.env {
		if strings.HasPrefix(kv, "LAYER=") {
			return
		}
	}
	for _, args := range [][]string{{"create-layer", "-n", "docs-layer"}, {"mount", "docs-layer"}} {
		cmd := exec.Command(filepath.Join(sb.fakebin, "cs-snapshotter"), args...)
		cmd.Env = sb.env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("placing $LAYER: cs-snapshotter %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	sb.env = append(sb.env, "LAYER=docs-layer")
}

// run runs one block's script in the sandbox; a failure ends the test
// (the next blocks build on this one).
func (sb *docsSandbox) run(t *testing.T, f docFence, script string) {
	t.Helper()
	sb.seq++
	path := filepath.Join(sb.dir, "tmp", fmt.Sprintf("block-%02d.sh", sb.seq))
	text := fmt.Sprintf("# %s\nset -euo pipefail\ntrap 'echo \"docs test: failed (exit $?): $BASH_COMMAND\" >&2' ERR\n%s\n", f.where(), script)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", path)
	cmd.Dir = sb.src
	cmd.Env = sb.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("%s (%v):\n%s\n--- output:\n%s", f.where(), time.Since(start).Round(time.Millisecond), script, out)
	if err != nil {
		t.Fatalf("%s: the sh block failed: %v\n%s", f.where(), err, out)
	}
}

// serveControl answers the stand-ins: the working directory, the number of
// arguments and the arguments, one per line; the answer is the output and
// a last line "\x01EXIT <status>".
func (sb *docsSandbox) serveControl() {
	for {
		c, err := sb.ctl.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			readLine := func() string {
				l, _ := r.ReadString('\n')
				return strings.TrimSuffix(l, "\n")
			}
			readLine() // the working directory
			n, _ := strconv.Atoi(readLine())
			args := make([]string, n)
			for i := range args {
				args[i] = readLine()
			}
			sb.mu.Lock()
			out, code := sb.dispatch(args)
			sb.mu.Unlock()
			if out != "" && !strings.HasSuffix(out, "\n") {
				out += "\n"
			}
			fmt.Fprintf(c, "%s\x01EXIT %d\n", out, code)
		}()
	}
}

func (sb *docsSandbox) dispatch(args []string) (string, int) {
	if len(args) == 0 {
		return "no command", 2
	}
	sb.e.t.Logf("docs sandbox stand-in: %s", strings.Join(args, " "))
	switch args[0] {
	case "systemctl":
		return sb.systemctl(args[1:])
	case "journalctl":
		return sb.journalctl(args[1:])
	case "serve":
		return sb.foregroundServe(args[1:])
	}
	return "unknown stand-in " + args[0], 2
}

const (
	unitDaemon     = "cs-snapshotter.service"
	unitSocket     = "cs-snapshotter.socket"
	unitContainerd = "containerd.service"
)

func unitName(u string) string {
	if !strings.Contains(u, ".") {
		return u + ".service"
	}
	return u
}

// systemctl stands in for systemd: the verbs the docs use, on the units
// they install (and containerd's, which a containerd package installs).
func (sb *docsSandbox) systemctl(args []string) (string, int) {
	var verb string
	var units []string
	now := false
	for _, a := range args {
		switch {
		case a == "--now":
			now = true
		case a == "--no-pager" || a == "-q" || a == "--quiet" || a == "--no-block":
		case strings.HasPrefix(a, "-"):
			return "systemctl stand-in: option " + a + " is not emulated by the docs sandbox", 1
		case verb == "":
			verb = a
		default:
			units = append(units, unitName(a))
		}
	}
	for _, u := range units {
		if u != unitDaemon && u != unitSocket && u != unitContainerd {
			return "Unit " + u + " not found.", 5
		}
	}
	var out strings.Builder
	each := func(f func(string) (string, int)) (string, int) {
		for _, u := range units {
			o, code := f(u)
			out.WriteString(o)
			if code != 0 {
				return out.String(), code
			}
		}
		return out.String(), 0
	}
	switch verb {
	case "daemon-reload":
		return "", 0
	case "enable":
		return each(func(u string) (string, int) {
			o, code := sb.enable(u)
			if code == 0 && now {
				o2, code2 := sb.start(u)
				return o + o2, code2
			}
			return o, code
		})
	case "start":
		return each(sb.start)
	case "stop":
		return each(sb.stop)
	case "restart":
		return each(func(u string) (string, int) {
			if o, code := sb.stop(u); code != 0 {
				return o, code
			}
			return sb.start(u)
		})
	case "status", "is-active":
		return each(func(u string) (string, int) {
			pid, active := sb.active(u)
			if !active {
				return fmt.Sprintf("○ %s\n     Active: inactive (dead)\n", u), 3
			}
			if verb == "is-active" {
				return "active\n", 0
			}
			return fmt.Sprintf("● %s\n     Active: active (running)\n   Main PID: %d\n", u, pid), 0
		})
	}
	return "systemctl stand-in: verb " + strconv.Quote(verb) + " is not emulated by the docs sandbox", 1
}

func (sb *docsSandbox) unitFile(u string) (map[string]map[string][]string, error) {
	f, err := os.Open(sb.path("/etc/systemd/system/" + u))
	if err != nil {
		return nil, fmt.Errorf("Unit %s not found (not installed in /etc/systemd/system).", u)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", u, err)
	}
	m := map[string]map[string][]string{}
	for _, o := range opts {
		if m[o.Section] == nil {
			m[o.Section] = map[string][]string{}
		}
		if o.Value == "" {
			m[o.Section][o.Name] = nil // an empty assignment resets
			continue
		}
		m[o.Section][o.Name] = append(m[o.Section][o.Name], o.Value)
	}
	return m, nil
}

func (sb *docsSandbox) enable(u string) (string, int) {
	if u == unitContainerd {
		return "", 0 // the containerd package's unit
	}
	m, err := sb.unitFile(u)
	if err != nil {
		return err.Error(), 1
	}
	wanted := m["Install"]["WantedBy"]
	if len(wanted) == 0 {
		return u + " has no [Install] WantedBy=: enabling it does nothing", 1
	}
	var out strings.Builder
	for _, w := range wanted {
		dir := sb.path("/etc/systemd/system/" + w + ".wants")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err.Error(), 1
		}
		link := filepath.Join(dir, u)
		os.Remove(link)
		if err := os.Symlink("/etc/systemd/system/"+u, link); err != nil {
			return err.Error(), 1
		}
		fmt.Fprintf(&out, "Created symlink /etc/systemd/system/%s.wants/%s → /etc/systemd/system/%s.\n", w, u, u)
	}
	return out.String(), 0
}

func (sb *docsSandbox) active(u string) (int, bool) {
	switch u {
	case unitDaemon:
		if sb.e.cs != nil && !sb.e.cs.exited() {
			return sb.e.cs.cmd.Process.Pid, true
		}
	case unitContainerd:
		if sb.e.ctrd != nil && !sb.e.ctrd.exited() {
			return sb.e.ctrd.cmd.Process.Pid, true
		}
	case unitSocket:
		return 0, sb.sockL != nil
	}
	return 0, false
}

func (sb *docsSandbox) start(u string) (string, int) {
	if _, active := sb.active(u); active {
		return "", 0
	}
	var err error
	switch u {
	case unitDaemon:
		err = sb.startDaemon()
	case unitSocket:
		err = sb.startSocket()
	case unitContainerd:
		err = sb.startContainerd()
	}
	if err != nil {
		return fmt.Sprintf("Job for %s failed: %v\n", u, err), 1
	}
	return "", 0
}

func (sb *docsSandbox) stop(u string) (string, int) {
	if _, active := sb.active(u); !active {
		return "", 0
	}
	switch u {
	case unitDaemon:
		sb.e.csStopped = true
		sb.e.daemonDown = append(sb.e.daemonDown, window{from: time.Now()})
		_, err := sb.e.cs.stop(stopTimeout)
		if sb.notify != nil {
			// The daemon said STOPPING=1 before it exited; the reader may
			// not have passed it on yet.
			stopping := false
			for wait := time.After(2 * time.Second); !stopping; {
				select {
				case msg := <-sb.notifyMsgs:
					stopping = strings.Contains(msg, "STOPPING=1")
					continue
				case <-wait:
				}
				break
			}
			sb.notify.Close()
			sb.notify = nil
			if err == nil && !stopping {
				err = errors.New("the daemon did not tell systemd STOPPING=1")
			}
		}
		if err != nil {
			return fmt.Sprintf("stopping %s: %v\n%s\n", u, err, tailFile(sb.e.CSLog, 20)), 1
		}
	case unitSocket:
		sb.stopSocket()
	case unitContainerd:
		if _, err := sb.e.ctrd.stop(stopTimeout); err != nil {
			return fmt.Sprintf("stopping %s: %v\n", u, err), 1
		}
	}
	return "", 0
}

// startProcWith is startProc with more environment and inherited files
// (fd 3 on).
func startProcWith(name, logPath string, env []string, files []*os.File, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "\n===== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	for _, kv := range cleanEnv() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "NOTIFY_SOCKET" || strings.HasPrefix(k, "LISTEN_") {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, args: args, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	live.Store(cmd.Process.Pid, p)
	go func() {
		p.err = cmd.Wait()
		live.Delete(cmd.Process.Pid)
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// csBinary is the binary the docs installed, else the one under test.
func (sb *docsSandbox) csBinary() string {
	if st, err := os.Stat(sb.path("/usr/local/bin/cs-snapshotter")); err == nil && st.Mode()&0o111 != 0 {
		return sb.path("/usr/local/bin/cs-snapshotter")
	}
	return csBin
}

// daemonConfig writes the daemon's configuration file as the sandbox sees
// it (host paths moved) and returns its path; an empty file when the docs
// installed none (the daemon's defaults).
func (sb *docsSandbox) daemonConfig() (string, error) {
	data, err := os.ReadFile(sb.e.CSConfig)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	path := filepath.Join(sb.dir, "tmp", "cs-snapshotter-config.toml")
	return path, os.WriteFile(path, []byte(sb.paths(string(data))), 0o644)
}

// startDaemon starts cs-snapshotter.service as systemd would: the unit's
// ExecStart (with the sandbox's configuration and roots), the socket of
// cs-snapshotter.socket when that is started, ready when the daemon sends
// READY=1 (Type=notify).
func (sb *docsSandbox) startDaemon() error {
	m, err := sb.unitFile(unitDaemon)
	if err != nil {
		return err
	}
	execStart := m["Service"]["ExecStart"]
	if len(execStart) != 1 {
		return fmt.Errorf("ExecStart=%q: want one command", execStart)
	}
	argv := strings.Fields(sb.paths(execStart[0]))
	if st, err := os.Stat(argv[0]); err != nil || st.Mode()&0o111 == 0 {
		return fmt.Errorf("ExecStart: %s is not an installed executable (%v)", strings.ReplaceAll(argv[0], sb.dir, ""), err)
	}
	if typ := m["Service"]["Type"]; len(typ) != 1 || typ[0] != "notify" {
		return fmt.Errorf("Type=%q: the docs sandbox emulates Type=notify only", typ)
	}
	cfg, err := sb.daemonConfig()
	if err != nil {
		return err
	}
	argv = append(argv, "--config", cfg, "--root", sb.e.CSRoot, "--run-root", sb.e.CSRunRoot)

	notifyPath := filepath.Join(sb.dir, "tmp", fmt.Sprintf("notify-%d", time.Now().UnixNano()))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		return err
	}
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			select {
			case msgs <- string(buf[:n]):
			default:
			}
		}
	}()
	env := []string{"NOTIFY_SOCKET=" + notifyPath}
	var files []*os.File
	if sb.sockF != nil {
		// LISTEN_PID must be the daemon's pid: a shell sets it and execs.
		argv = append([]string{"/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`}, argv...)
		files = []*os.File{sb.sockF}
	}
	p, err := startProcWith("cs-snapshotter", sb.e.CSLog, env, files, argv...)
	if err != nil {
		conn.Close()
		return err
	}
	deadline := time.After(socketTimeout)
	for ready := false; !ready; {
		select {
		case msg := <-msgs:
			ready = strings.Contains(msg, "READY=1")
		case <-p.done:
			conn.Close()
			return fmt.Errorf("the daemon exited before it was ready: %v\n%s", p.err, tailFile(sb.e.CSLog, 20))
		case <-deadline:
			p.stop(stopTimeout)
			conn.Close()
			return fmt.Errorf("the daemon sent no READY=1 within %v\n%s", socketTimeout, tailFile(sb.e.CSLog, 20))
		}
	}
	sb.e.cs, sb.e.csStopped = p, false
	sb.notify, sb.notifyMsgs = conn, msgs
	if n := len(sb.e.daemonDown); n > 0 && sb.e.daemonDown[n-1].to.IsZero() {
		sb.e.daemonDown[n-1].to = time.Now().Add(reconnectGrace)
	}
	return nil
}

// startSocket listens as cs-snapshotter.socket says. Like systemd, it
// replaces a socket file that is in the way.
func (sb *docsSandbox) startSocket() error {
	m, err := sb.unitFile(unitSocket)
	if err != nil {
		return err
	}
	listen := m["Socket"]["ListenStream"]
	if len(listen) != 1 || !strings.HasPrefix(listen[0], "/") {
		return fmt.Errorf("ListenStream=%q: the docs sandbox emulates one unix socket path", listen)
	}
	octal := func(key, def string) (os.FileMode, error) {
		v := def
		if vs := m["Socket"][key]; len(vs) == 1 {
			v = vs[0]
		}
		n, err := strconv.ParseUint(v, 8, 32)
		return os.FileMode(n), err
	}
	mode, err := octal("SocketMode", "0666")
	if err != nil {
		return err
	}
	dirMode, err := octal("DirectoryMode", "0755")
	if err != nil {
		return err
	}
	path := sb.paths(listen[0])
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return err
	}
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	l, err := net.ListenUnix("unix", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		os.Remove(path)
		l, err = net.ListenUnix("unix", addr)
	}
	if err != nil {
		return err
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return err
	}
	f, err := l.File()
	if err != nil {
		l.Close()
		return err
	}
	sb.sockL, sb.sockF, sb.sockPath = l, f, path
	return nil
}

// stopSocket closes the socket and removes it (RemoveOnStop=yes).
func (sb *docsSandbox) stopSocket() {
	if sb.sockL == nil {
		return
	}
	sb.sockL.Close()
	sb.sockF.Close()
	os.Remove(sb.sockPath)
	sb.sockL, sb.sockF = nil, nil
}

// startContainerd starts containerd with the configuration the docs
// installed (host paths moved into the sandbox), and checks that it loaded
// the three proxy plugins.
func (sb *docsSandbox) startContainerd() error {
	data, err := os.ReadFile(sb.e.CtrdConfig)
	if errors.Is(err, os.ErrNotExist) {
		data, err = []byte("version = 3\n"), nil
	}
	if err != nil {
		return err
	}
	cfg := filepath.Join(sb.dir, "tmp", "containerd-config.toml")
	if err := os.WriteFile(cfg, []byte(sb.paths(string(data))), 0o644); err != nil {
		return err
	}
	p, err := startProcWith("containerd", sb.e.CtrdLog, nil, nil, "containerd", "--config", cfg,
		"--root", sb.e.CtrdRoot, "--state", sb.e.CtrdState, "--address", sb.e.CtrdSocket)
	if err != nil {
		return err
	}
	if err := waitSocket(p, sb.e.CtrdSocket, socketTimeout); err != nil {
		p.stop(stopTimeout)
		return fmt.Errorf("%v\n%s", err, tailFile(sb.e.CtrdLog, 40))
	}
	sb.e.ctrd = p
	r := sb.e.Ctr("plugins", "ls")
	if r.Err != nil {
		return fmt.Errorf("ctr plugins ls: %v\n%s", r.Err, r.Stderr)
	}
	status := map[string]string{}
	for _, line := range strings.Split(r.Stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 4 {
			status[f[0]+"."+f[1]] = f[len(f)-1]
		}
	}
	for _, want := range []string{"io.containerd.snapshotter.v1.cs", "io.containerd.content.v1.cs-content", "io.containerd.differ.v1.cs-diff"} {
		if status[want] != "ok" {
			return fmt.Errorf("containerd's plugin %s has status %q, want ok", want, status[want])
		}
	}
	return nil
}

// journalctl prints a unit's log; the sandbox keeps each daemon's output
// in a file.
func (sb *docsSandbox) journalctl(args []string) (string, int) {
	var u string
	lines := -1
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-u" || a == "--unit":
			if i+1 < len(args) {
				i++
				u = unitName(args[i])
			}
		case strings.HasPrefix(a, "--unit="):
			u = unitName(strings.TrimPrefix(a, "--unit="))
		case a == "-n" || a == "--lines":
			if i+1 < len(args) {
				i++
				lines, _ = strconv.Atoi(args[i])
			}
		case strings.HasPrefix(a, "--lines="):
			lines, _ = strconv.Atoi(strings.TrimPrefix(a, "--lines="))
		case a == "--no-pager" || a == "-b" || a == "-e" || a == "-x" || a == "-q":
		default:
			return "journalctl stand-in: " + a + " is not emulated by the docs sandbox (no -f: it would never end)", 1
		}
	}
	var path string
	switch u {
	case unitDaemon:
		path = sb.e.CSLog
	case unitContainerd:
		path = sb.e.CtrdLog
	default:
		return "journalctl stand-in: the docs sandbox has no log of unit " + strconv.Quote(u), 1
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "-- No entries --", 0
	}
	text := strings.TrimRight(string(b), "\n")
	if lines >= 0 {
		ls := strings.Split(text, "\n")
		if len(ls) > lines {
			ls = ls[len(ls)-lines:]
		}
		text = strings.Join(ls, "\n")
	}
	return text, 0
}

// foregroundServe runs `cs-snapshotter serve ARGS` as a terminal would
// until it serves, then stops it as Ctrl-C would; the daemon must exit 0.
func (sb *docsSandbox) foregroundServe(args []string) (string, int) {
	cfg, err := sb.daemonConfig()
	if err != nil {
		return err.Error(), 1
	}
	logPath := filepath.Join(sb.dir, "log", fmt.Sprintf("serve-%d.log", time.Now().UnixNano()))
	argv := append([]string{sb.csBinary(), "--graph", sb.e.CSRoot, "--run", sb.e.CSRunRoot, "serve", "--config", cfg}, args...)
	p, err := startProcWith("cs-snapshotter serve (foreground)", logPath, nil, nil, argv...)
	if err != nil {
		return err.Error(), 1
	}
	deadline := time.Now().Add(socketTimeout)
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte("msg=serving")) {
			break
		}
		if p.exited() {
			code := 1
			if ee, ok := p.err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			return string(b), code
		}
		if time.Now().After(deadline) {
			p.stop(stopTimeout)
			return string(b) + "\ndocs sandbox: serve did not serve within " + socketTimeout.String(), 1
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = p.stop(stopTimeout)
	b, _ := os.ReadFile(logPath)
	if err != nil {
		return fmt.Sprintf("%s\ndocs sandbox: after SIGTERM: %v", b, err), 1
	}
	return string(b), 0
}
