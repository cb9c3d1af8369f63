// Command rostore measures a read-only image store (issue 8, the daemon's
// additional_image_stores): a "seed" cs-snapshotter + containerd imports N
// images into its root; a "node" cs-snapshotter + containerd has the seed's
// root as its additional image store, once with the seed's daemon running
// (reads go through its socket) and once with it stopped (direct reads).
// Side by side, medians over several rounds:
//
//   - listing: `cs-snapshotter images --json` on the seed (its writable
//     store holds the N images) and on the node (they come from the
//     read-only store);
//   - first start: on the node `cs-snapshotter publish` then `ctr run --rm
//     ... true` of image k (a different image each round), timed
//     separately; on the seed `ctr run --rm ... true` of the same image
//     (already unpacked by the import);
//   - second start: another `ctr run` of the same image;
//   - how much the node's snapshots directory grew per published image
//     (du -sb), to show the layers were not copied.
//
// The N images are built locally (busybox-static, nothing is pulled) as one
// OCI archive: a shared busybox layer plus one small unique layer each, and
// imported with a single `ctr images import --snapshotter cs`.
//
//	go run ./test/bench/rostore -bin /path/to/cs-snapshotter -images 1000 -json out.json
//
// It needs root, containerd, ctr and runc (scripts/install-deps.sh).
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/test/e2e"
	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
	"github.com/cs-snapshotter/cs-snapshotter/test/testproc"
)

const (
	socketTimeout  = 30 * time.Second
	stopTimeout    = 10 * time.Second
	commandTimeout = 2 * time.Minute
	importTimeout  = 60 * time.Minute
	// namePrefix is the repository of the benchmark images; image i is
	// namePrefix:iNNNN.
	namePrefix = "docker.io/library/cs-rostore"
)

// Sample is one measured operation in one setting.
type Sample struct {
	Setting string    `json:"setting"` // seed, node-via-daemon, node-direct, seed-no-daemon
	Op      string    `json:"op"`
	Median  float64   `json:"median_ms"`
	Times   []float64 `json:"times_ms"`
}

// Growth is what one publish (and the runs after it) added to the node's
// root.
type Growth struct {
	Setting          string `json:"setting"`
	Image            string `json:"image"`
	Layers           int    `json:"layers"`
	Shared           int    `json:"shared"`
	SnapshotsPublish int64  `json:"snapshots_bytes_after_publish"`
	SnapshotsRuns    int64  `json:"snapshots_bytes_after_runs"`
	RootPublish      int64  `json:"root_bytes_after_publish"`
	// FilesPublish is what the regular files under snapshots/ grew by
	// (directory entries and symlinks left out): a copied layer would
	// show here.
	FilesPublish int64 `json:"snapshots_file_bytes_after_publish"`
	// LinksPublish is how many symlinks into the seed's root publish
	// added.
	LinksPublish int `json:"links_into_seed_after_publish"`
}

// Report is the JSON output.
type Report struct {
	Images       int       `json:"images"`
	Rounds       int       `json:"rounds"`
	ImportMS     float64   `json:"import_ms"`
	SeedRootSize int64     `json:"seed_root_bytes"`
	Status       []string  `json:"node_status"`
	Samples      []Sample  `json:"samples"`
	Growth       []Growth  `json:"growth"`
	Host         string    `json:"host"`
	When         time.Time `json:"when"`
}

var (
	bin     string
	verbose bool
)

func main() {
	flag.StringVar(&bin, "bin", "", "cs-snapshotter binary (daemons and commands)")
	n := flag.Int("images", 1000, "images the seed imports")
	rounds := flag.Int("rounds", 5, "timed rounds per operation")
	out := flag.String("json", "", "write the results as JSON here too")
	tmp := flag.String("tmpdir", "/var/tmp", "where the environments go")
	keep := flag.Bool("keep", false, "leave the temporary directory (processes are stopped anyway)")
	flag.BoolVar(&verbose, "v", false, "log every command")
	flag.Parse()
	if bin == "" {
		fmt.Fprintln(os.Stderr, "rostore: -bin is required")
		os.Exit(2)
	}
	if *n < *rounds+1 || *rounds < 1 {
		fmt.Fprintln(os.Stderr, "rostore: need -rounds >= 1 and -images > -rounds")
		os.Exit(2)
	}
	var err error
	if bin, err = filepath.Abs(bin); err != nil {
		fatal(err)
	}
	dir, err := os.MkdirTemp(*tmp, "cs-rostore-")
	if err != nil {
		fatal(err)
	}
	cleanup := func() {
		cleanupAll()
		if *keep {
			logf("leaving %s", dir)
			return
		}
		if err := testproc.UnmountUnder(dir); err != nil {
			logf("cleanup: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			logf("cleanup: %v", err)
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("%v: cleaning up", s)
		cleanup()
		os.Exit(130)
	}()
	rep, err := run(dir, *n, *rounds)
	cleanup()
	if err != nil {
		fatal(err)
	}
	printReport(rep)
	if *out != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			fatal(err)
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "rostore:", err)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "rostore: "+format+"\n", args...)
}

func imageName(i int) string { return fmt.Sprintf("%s:i%04d", namePrefix, i) }

// run does the whole benchmark in dir.
func run(dir string, n, rounds int) (*Report, error) {
	host, _ := os.Hostname()
	rep := &Report{Images: n, Rounds: rounds, Host: host, When: time.Now().UTC()}

	archive := filepath.Join(dir, "images.tar")
	t0 := time.Now()
	ids, err := buildArchive(archive, n)
	if err != nil {
		return nil, fmt.Errorf("build archive: %w", err)
	}
	logf("built %d images into %s in %v", n, archive, time.Since(t0).Round(time.Millisecond))

	// Image 0 warms every environment up (the first container of a fresh
	// containerd pays for its shim and runc binaries); rounds use images
	// spread over the store.
	pick := make([]int, rounds)
	for r := range pick {
		pick[r] = (r + 1) * n / (rounds + 1)
	}

	seed, err := newEnv(dir, "seed", "")
	if err != nil {
		return nil, err
	}
	t0 = time.Now()
	if _, err := seed.ctrTimeout(importTimeout, "images", "import", "--snapshotter", "cs", archive); err != nil {
		return nil, err
	}
	rep.ImportMS = ms(time.Since(t0))
	logf("seed imported %d images in %v", n, time.Since(t0).Round(time.Millisecond))
	os.Remove(archive)

	// The seed: listing, first and second start of image k (unpacked by
	// the import).
	if err := seed.checkListing(n, ids); err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	list, err := seed.timeListing(rounds)
	if err != nil {
		return nil, err
	}
	rep.Samples = append(rep.Samples, Sample{Setting: "seed", Op: "images --json", Times: list})
	if _, err := seed.ctrRun(imageName(0)); err != nil {
		return nil, err
	}
	var first, second []float64
	for _, k := range pick {
		d1, err := seed.ctrRun(imageName(k))
		if err != nil {
			return nil, err
		}
		d2, err := seed.ctrRun(imageName(k))
		if err != nil {
			return nil, err
		}
		first, second = append(first, d1), append(second, d2)
	}
	rep.Samples = append(rep.Samples,
		Sample{Setting: "seed", Op: "first ctr run", Times: first},
		Sample{Setting: "seed", Op: "second ctr run", Times: second})

	// The node, reading the seed's root through the seed's daemon.
	if err := measureNode(rep, dir, "node-via-daemon", seed, ids, pick); err != nil {
		return nil, err
	}

	// The seed stops: its root is read directly, by the CLI on the seed
	// root without a daemon and then by a new node.
	seed.stopAll()
	rep.SeedRootSize = duBytes(seed.csRoot)
	list, err = seed.timeListing(rounds)
	if err != nil {
		return nil, fmt.Errorf("seed without daemon: %w", err)
	}
	rep.Samples = append(rep.Samples, Sample{Setting: "seed-no-daemon", Op: "images --json", Times: list})
	if err := measureNode(rep, dir, "node-direct", seed, ids, pick); err != nil {
		return nil, err
	}
	for i := range rep.Samples {
		rep.Samples[i].Median = median(rep.Samples[i].Times)
	}
	return rep, nil
}

// measureNode starts a node whose daemon has the seed's root as its
// additional image store, times listing, publish and the runs, and stops
// it.
func measureNode(rep *Report, dir, setting string, seed *env, ids []string, pick []int) error {
	node, err := newEnv(dir, setting, fmt.Sprintf("additional_image_stores = [%q]\n", seed.csRoot))
	if err != nil {
		return err
	}
	defer node.stopAll()
	// status prints its name: value pairs on stderr.
	b, err := exec.Command(bin, "--graph", node.csRoot, "--run", node.cliRun, "status").CombinedOutput()
	status := string(b)
	if err != nil {
		return fmt.Errorf("%s: status: %w\n%s", setting, err, status)
	}
	want := "Read-only image store: " + seed.csRoot + " (direct)"
	if setting == "node-via-daemon" {
		want = "Read-only image store: " + seed.csRoot + " (daemon " + seed.csSock + ")"
	}
	if !strings.Contains(status, want) {
		return fmt.Errorf("%s: status does not say %q:\n%s", setting, want, status)
	}
	rep.Status = append(rep.Status, setting+": "+want)
	if err := node.checkListing(len(ids), ids); err != nil {
		return fmt.Errorf("%s: %w", setting, err)
	}
	list, err := node.timeListing(len(pick))
	if err != nil {
		return err
	}
	rep.Samples = append(rep.Samples, Sample{Setting: setting, Op: "images --json", Times: list})

	// Warm-up with image 0.
	if _, _, err := node.publish(ids[0], imageName(0)); err != nil {
		return err
	}
	if _, err := node.ctrRun(imageName(0)); err != nil {
		return err
	}
	var pub, first, second []float64
	for _, k := range pick {
		// The previous round's containers' directories go after ctr
		// run returns (removal finishes in the background): wait for
		// the snapshots directory to settle before the baseline.
		settle(node.snapshots())
		snaps, root := duBytes(node.snapshots()), duBytes(node.csRoot)
		files, links := fileBytes(node.snapshots(), seed.csRoot)
		d, res, err := node.publish(ids[k], imageName(k))
		if err != nil {
			return err
		}
		if res.Shared != res.Layers || res.BlobsRecorded != res.Layers {
			return fmt.Errorf("%s: publish %s: %d of %d layers shared, %d blobs recorded; want all", setting, imageName(k), res.Shared, res.Layers, res.BlobsRecorded)
		}
		g := Growth{Setting: setting, Image: imageName(k), Layers: res.Layers, Shared: res.Shared,
			SnapshotsPublish: duBytes(node.snapshots()) - snaps, RootPublish: duBytes(node.csRoot) - root}
		files2, links2 := fileBytes(node.snapshots(), seed.csRoot)
		g.FilesPublish, g.LinksPublish = files2-files, links2-links
		d1, err := node.ctrRun(imageName(k))
		if err != nil {
			return err
		}
		d2, err := node.ctrRun(imageName(k))
		if err != nil {
			return err
		}
		g.SnapshotsRuns = duBytes(node.snapshots()) - snaps
		rep.Growth = append(rep.Growth, g)
		pub, first, second = append(pub, d), append(first, d1), append(second, d2)
	}
	firstTotal := make([]float64, len(pub))
	for i := range pub {
		firstTotal[i] = pub[i] + first[i]
	}
	rep.Samples = append(rep.Samples,
		Sample{Setting: setting, Op: "publish", Times: pub},
		Sample{Setting: setting, Op: "first ctr run", Times: first},
		Sample{Setting: setting, Op: "publish + first ctr run", Times: firstTotal},
		Sample{Setting: setting, Op: "second ctr run", Times: second})
	return nil
}

// ---- environments

// proc is a daemon this command started.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startProc(name, logPath string, args ...string) (*proc, error) {
	cmd, logf, err := testproc.Start(name, logPath, cleanEnv(), false, args...)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, and SIGKILL after stopTimeout.
func (p *proc) stop() {
	if p == nil || p.exited() {
		return
	}
	if _, killed := testproc.Stop(p.cmd, p.done, stopTimeout); killed {
		logf("%s (pid %d) did not exit within %v of SIGTERM; killed it", p.name, p.cmd.Process.Pid, stopTimeout)
	}
}

func waitSocket(p *proc, sock, logPath string) error {
	switch err := testproc.WaitSocket(sock, socketTimeout, 50*time.Millisecond, p.done); {
	case err == nil:
		return nil
	case errors.Is(err, testproc.ErrExited):
		return fmt.Errorf("%s exited before serving %s: %v\n%s", p.name, sock, p.err, tail(logPath, 30))
	default:
		return fmt.Errorf("%s did not serve %s within %v: %v\n%s", p.name, sock, socketTimeout, err, tail(logPath, 30))
	}
}

// cleanEnv drops the caller's CONTAINERD_* variables and makes sure the
// tools install-deps.sh installs are on PATH.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CONTAINERD_") || strings.HasPrefix(kv, "PATH=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:"+os.Getenv("PATH"))
}

// env is one cs-snapshotter daemon and one containerd using it.
type env struct {
	name, dir                                          string
	csRoot, csRun, csSock, csConfig, csLog, cliRun     string
	ctrdRoot, ctrdState, ctrdSock, ctrdConfig, ctrdLog string
	cs, ctrd                                           *proc
	seq                                                int
}

var (
	envsMu sync.Mutex
	envs   []*env
)

// cleanupAll stops every environment's processes (newest first).
func cleanupAll() {
	envsMu.Lock()
	defer envsMu.Unlock()
	for i := len(envs) - 1; i >= 0; i-- {
		envs[i].stopAll()
	}
}

func newEnv(parent, name, daemonConfig string) (*env, error) {
	dir := filepath.Join(parent, name)
	e := &env{
		name: name, dir: dir,
		csRoot: filepath.Join(dir, "cs-root"), csRun: filepath.Join(dir, "cs-run"),
		csSock: filepath.Join(dir, "cs.sock"), csConfig: filepath.Join(dir, "cs-snapshotter.toml"),
		csLog: filepath.Join(dir, "cs-snapshotter.log"), cliRun: filepath.Join(dir, "cli-run"),
		ctrdRoot: filepath.Join(dir, "containerd-root"), ctrdState: filepath.Join(dir, "containerd-state"),
		ctrdSock: filepath.Join(dir, "containerd.sock"), ctrdConfig: filepath.Join(dir, "containerd.toml"),
		ctrdLog: filepath.Join(dir, "containerd.log"),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	envsMu.Lock()
	envs = append(envs, e)
	envsMu.Unlock()
	if err := os.WriteFile(e.csConfig, []byte("# cs-snapshotter rostore benchmark\n"+daemonConfig), 0o644); err != nil {
		return nil, err
	}
	// The e2e suite's containerd config: cs-snapshotter as containerd's
	// snapshotter "cs", its content store and its differ, and the
	// transfer service unpacking through it (`ctr images import
	// --snapshotter cs`).
	text, err := e2e.ContainerdConfig{Root: e.ctrdRoot, State: e.ctrdState, Address: e.ctrdSock,
		CSSocket: e.csSock, CSRoot: e.csRoot}.Render()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(e.ctrdConfig, []byte(text), 0o644); err != nil {
		return nil, err
	}
	if e.cs, err = startProc(name+" cs-snapshotter", e.csLog, bin, "serve", "--config", e.csConfig, "--root", e.csRoot,
		"--run-root", e.csRun, "--address", e.csSock); err != nil {
		return nil, err
	}
	if err := waitSocket(e.cs, e.csSock, e.csLog); err != nil {
		return nil, err
	}
	if e.ctrd, err = startProc(name+" containerd", e.ctrdLog, "containerd", "--config", e.ctrdConfig); err != nil {
		return nil, err
	}
	if err := waitSocket(e.ctrd, e.ctrdSock, e.ctrdLog); err != nil {
		return nil, err
	}
	logf("%s: cs-snapshotter (pid %d) and containerd (pid %d) up in %s", name, e.cs.cmd.Process.Pid, e.ctrd.cmd.Process.Pid, dir)
	return e, nil
}

// stopAll kills the tasks, stops containerd, the shims left over and the
// daemon, and unmounts what is left under the environment's directory.
func (e *env) stopAll() {
	if e.ctrd != nil && !e.ctrd.exited() {
		e.killTasks()
		e.ctrd.stop()
	}
	e.killShims()
	if e.cs != nil {
		e.cs.stop()
	}
	if err := testproc.UnmountUnder(e.dir); err != nil {
		logf("%s: %v", e.name, err)
	}
}

func (e *env) killTasks() {
	out, err := e.ctrTimeout(20*time.Second, "tasks", "ls", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(out) {
		_, _ = e.ctrTimeout(20*time.Second, "tasks", "kill", "-s", "SIGKILL", id)
		_, _ = e.ctrTimeout(20*time.Second, "tasks", "rm", "-f", id)
	}
}

// killShims kills shims of this environment's containerd that outlived it
// (they have its socket or directory on their command line), with their
// children.
func (e *env) killShims() {
	procs := testproc.List()
	for _, p := range testproc.Shims(procs, e.ctrdSock, e.dir) {
		logf("%s: killing leftover shim pid %d", e.name, p.PID)
		testproc.KillWithChildren(procs, p.PID)
	}
}

func (e *env) snapshots() string { return filepath.Join(e.csRoot, "snapshots") }

// command runs a command with a timeout and returns its stdout and how
// long it took.
func command(timeout time.Duration, args ...string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = cleanEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if verbose {
		logf("$ %s (%v)", strings.Join(args, " "), took.Round(time.Millisecond))
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("timed out after %v: %w", timeout, err)
		}
		return stdout.String(), took, fmt.Errorf("%s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), took, nil
}

func (e *env) ctrTimeout(timeout time.Duration, args ...string) (string, error) {
	out, _, err := command(timeout, append([]string{"ctr", "--address", e.ctrdSock, "-n", "default"}, args...)...)
	return out, err
}

// ctrRun runs a container from ref that runs `true`, and returns how long
// `ctr run --rm` took.
func (e *env) ctrRun(ref string) (float64, error) {
	e.seq++
	id := fmt.Sprintf("%s-%s-%d", filepath.Base(filepath.Dir(e.dir)), e.name, e.seq)
	_, d, err := command(commandTimeout, "ctr", "--address", e.ctrdSock, "-n", "default", "run", "--rm", "--snapshotter", "cs", ref, id, "true")
	if err != nil {
		return 0, fmt.Errorf("%s: %w\ncontainerd log:\n%s\ncs-snapshotter log:\n%s", e.name, err, tail(e.ctrdLog, 20), tail(e.csLog, 20))
	}
	return ms(d), nil
}

// cli runs `cs-snapshotter --graph ROOT --run RUN ARGS...` (through the
// daemon while it runs, as a host's CLI does).
func (e *env) cli(args ...string) (string, error) {
	out, _, err := e.timedCLI(args...)
	return out, err
}

func (e *env) timedCLI(args ...string) (string, time.Duration, error) {
	return command(commandTimeout, append([]string{bin, "--graph", e.csRoot, "--run", e.cliRun}, args...)...)
}

type listed struct {
	ID    string   `json:"id"`
	Names []string `json:"names"`
}

// checkListing makes sure the store lists exactly the n benchmark images.
func (e *env) checkListing(n int, ids []string) error {
	out, err := e.cli("images", "--json")
	if err != nil {
		return err
	}
	var imgs []listed
	if err := json.Unmarshal([]byte(out), &imgs); err != nil {
		return fmt.Errorf("images --json: %w", err)
	}
	got := map[string]bool{}
	for _, im := range imgs {
		got[im.ID] = true
	}
	for i, id := range ids {
		if !got[id] {
			return fmt.Errorf("images --json lists %d images, not image %d (%s)", len(imgs), i, id)
		}
	}
	if len(imgs) != n {
		return fmt.Errorf("images --json lists %d images, want %d", len(imgs), n)
	}
	return nil
}

func (e *env) timeListing(rounds int) ([]float64, error) {
	if _, _, err := e.timedCLI("images", "--json"); err != nil { // warm-up
		return nil, err
	}
	var times []float64
	for range rounds {
		_, d, err := e.timedCLI("images", "--json")
		if err != nil {
			return nil, err
		}
		times = append(times, ms(d))
	}
	return times, nil
}

type publishResult struct {
	Layers        int `json:"layers"`
	Shared        int `json:"shared"`
	BlobsRecorded int `json:"blobs_recorded"`
}

func (e *env) publish(id, name string) (float64, publishResult, error) {
	var res publishResult
	out, d, err := e.timedCLI("publish", "--address", e.ctrdSock, "--name", name, "--json", id)
	if err != nil {
		return 0, res, err
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, res, fmt.Errorf("publish --json: %w\n%s", err, out)
	}
	return ms(d), res, nil
}

// ---- the archive

// buildArchive writes an OCI image-layout archive holding n images: the
// busybox layer of test/imagebuild (one layer) shared by all, plus one
// small layer of its own each (/etc/cs-rostore.txt saying which image it
// is). index.json names image i imageName(i). It returns the store image
// IDs (config digests), by i.
func buildArchive(path string, n int) ([]string, error) {
	base, err := imagebuild.Build(io.Discard, imagebuild.Options{Layers: 1})
	if err != nil {
		return nil, err
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(w)
	add := func(name string, data []byte) error {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: imagebuild.Epoch, Size: int64(len(data)), Format: tar.FormatUSTAR}
		if strings.HasSuffix(name, "/") {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	blob := func(b []byte) (ocispec.Descriptor, error) {
		d := ocispec.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))}
		return d, add("blobs/sha256/"+d.Digest.Encoded(), b)
	}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	for _, e := range []struct {
		name string
		data []byte
	}{{ocispec.ImageLayoutFile, layout}, {"blobs/", nil}, {"blobs/sha256/", nil}} {
		if err := add(e.name, e.data); err != nil {
			return nil, err
		}
	}
	baseLayer := base.Layers[0]
	if _, err := blob(base.Blobs[baseLayer.Descriptor.Digest]); err != nil {
		return nil, err
	}
	var baseCfg ocispec.Image
	if err := json.Unmarshal(base.Blobs[base.Config.Digest], &baseCfg); err != nil {
		return nil, err
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	ids := make([]string, n)
	for i := range n {
		layer, diffID, err := uniqueLayer(i)
		if err != nil {
			return nil, err
		}
		ldesc, err := blob(layer)
		if err != nil {
			return nil, err
		}
		ldesc.MediaType = ocispec.MediaTypeImageLayerGzip
		cfg := baseCfg
		cfg.RootFS = ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{baseLayer.DiffID, diffID}}
		cfg.History = append(append([]ocispec.History(nil), baseCfg.History...),
			ocispec.History{Created: &imagebuild.Epoch, CreatedBy: fmt.Sprintf("rostore: image %d", i)})
		cb, err := json.Marshal(cfg)
		if err != nil {
			return nil, err
		}
		cdesc, err := blob(cb)
		if err != nil {
			return nil, err
		}
		cdesc.MediaType = ocispec.MediaTypeImageConfig
		ids[i] = cdesc.Digest.Encoded()
		mf := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
			Config: cdesc, Layers: []ocispec.Descriptor{baseLayer.Descriptor, ldesc}}
		mb, err := json.Marshal(mf)
		if err != nil {
			return nil, err
		}
		mdesc, err := blob(mb)
		if err != nil {
			return nil, err
		}
		mdesc.MediaType = ocispec.MediaTypeImageManifest
		mdesc.Platform = &ocispec.Platform{Architecture: cfg.Architecture, OS: "linux"}
		mdesc.Annotations = map[string]string{
			imagebuild.AnnotationImageName: imageName(i),
			ocispec.AnnotationRefName:      imagebuild.RefName(imageName(i)),
		}
		idx.Manifests = append(idx.Manifests, mdesc)
	}
	ib, err := json.Marshal(idx)
	if err != nil {
		return nil, err
	}
	if err := add(ocispec.ImageIndexFile, ib); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return ids, f.Close()
}

// uniqueLayer returns the gzip blob and diff ID of image i's own layer.
func uniqueLayer(i int) ([]byte, digest.Digest, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, h := range []struct {
		name string
		data []byte
	}{{"etc/", nil}, {"etc/cs-rostore.txt", fmt.Appendf(nil, "rostore image %d\n", i)}} {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: h.name, Mode: 0o644, ModTime: imagebuild.Epoch, Size: int64(len(h.data)), Format: tar.FormatUSTAR}
		if h.data == nil {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(h.data); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Header = gzip.Header{OS: 255}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), digest.FromBytes(raw.Bytes()), nil
}

// ---- helpers

// duBytes is `du -sb path` (apparent size; symlinks count as the link).
func duBytes(path string) int64 {
	out, err := exec.Command("du", "-sb", path).Output()
	if err != nil {
		return -1
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return -1
	}
	v, _ := strconv.ParseInt(f[0], 10, 64)
	return v
}

// settle waits (up to 5 s) until du of dir stops changing.
func settle(dir string) {
	last := duBytes(dir)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(250 * time.Millisecond)
		v := duBytes(dir)
		if v == last {
			return
		}
		last = v
	}
}

// fileBytes sums the sizes of the regular files under dir and counts the
// symlinks that point into target.
func fileBytes(dir, target string) (int64, int) {
	var n int64
	links := 0
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		switch {
		case fi.Mode().IsRegular():
			n += fi.Size()
		case fi.Mode()&os.ModeSymlink != 0:
			if dest, err := os.Readlink(p); err == nil && strings.HasPrefix(dest, target+"/") {
				links++
			}
		}
		return nil
	})
	return n, links
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ---- the table

func printReport(r *Report) {
	med := map[[2]string]float64{}
	for _, s := range r.Samples {
		med[[2]string{s.Setting, s.Op}] = s.Median
	}
	get := func(setting, op string) (float64, bool) {
		v, ok := med[[2]string{setting, op}]
		return v, ok
	}
	fmt.Printf("%d images, %d rounds, medians in ms; import took %.1f s\n\n", r.Images, r.Rounds, r.ImportMS/1000)
	fmt.Printf("%-30s %10s %12s %8s %12s %8s\n", "operation", "seed", "node/daemon", "ratio", "node/direct", "ratio")
	row := func(label, seedOp, nodeOp string) {
		sv, sok := get("seed", seedOp)
		cell := func(setting string) string {
			v, ok := get(setting, nodeOp)
			if !ok {
				return fmt.Sprintf("%12s %8s", "-", "")
			}
			ratio := ""
			if sok && sv > 0 {
				ratio = fmt.Sprintf("%.2fx", v/sv)
			}
			return fmt.Sprintf("%12.1f %8s", v, ratio)
		}
		seedCell := "-"
		if sok {
			seedCell = fmt.Sprintf("%.1f", sv)
		}
		fmt.Printf("%-30s %10s %s %s\n", label, seedCell, cell("node-via-daemon"), cell("node-direct"))
	}
	row("images --json", "images --json", "images --json")
	row("publish", "", "publish")
	row("first ctr run", "first ctr run", "first ctr run")
	row("publish + first ctr run", "first ctr run", "publish + first ctr run")
	row("second ctr run", "second ctr run", "second ctr run")
	if v, ok := get("seed-no-daemon", "images --json"); ok {
		fmt.Printf("\nimages --json on the seed's root without its daemon (in-process store): %.1f ms\n", v)
	}
	fmt.Println("\nnode root growth per published image (du -sb):")
	for _, g := range r.Growth {
		fmt.Printf("  %-16s %s: %d/%d layers shared, %d links into the seed; snapshots/ du %+d B (files %+d B) after publish, du %+d B after 2 runs; root du %+d B after publish\n",
			g.Setting, g.Image, g.Shared, g.Layers, g.LinksPublish, g.SnapshotsPublish, g.FilesPublish, g.SnapshotsRuns, g.RootPublish)
	}
	fmt.Printf("seed root: %d B\n", r.SeedRootSize)
}
