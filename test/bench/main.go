// Command bench is cs-snapshotter's side-by-side benchmark (test/bench/run
// runs it as root): in one run on one machine it builds the test images,
// then measures import+unpack through containerd with its builtin
// overlayfs snapshotter and content store and with cs-snapshotter's
// snapshot, content and diff proxies (interleaved rounds, cold page cache,
// fresh roots), the same as a pull from a registry on 127.0.0.1, `tar
// -xzf` of the same layers as the floor, container start
// latency, snapshot operation latency in-process and over the socket, and
// Diff reconstruction throughput. It prints a table, writes JSON and draws
// a PNG chart. See docs/benchmarks.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
	"github.com/cs-snapshotter/cs-snapshotter/test/testproc"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func envInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s=%q: not a number\n", name, v)
			os.Exit(2)
		}
		return n
	}
	return def
}

func envStr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Results is what results.json holds.
type Results struct {
	Started   time.Time `json:"started"`
	Host      string    `json:"host"`
	CPUs      int       `json:"cpus"`
	Commit    string    `json:"commit"`
	Rounds    int       `json:"rounds"`
	Image     *bigImage `json:"image"`
	Import    ImportRes `json:"import"`
	Pull      ImportRes `json:"pull"`
	PullMBps  int       `json:"pull_mbps,omitempty"` // the registry's bound, 0: none
	CSConfig  string    `json:"cs_config,omitempty"` // CS_TOML: what the cs daemon's config adds
	Start     StartRes  `json:"container_start"`
	SnapOps   []opResult
	Diff      DiffRes `json:"diff"`
	Durations map[string]float64
}

// ImportRes: seconds per round per subject (tar, overlayfs, cs).
type ImportRes struct {
	Seconds map[string][]float64 `json:"seconds"`
	Median  map[string]float64   `json:"median"`
	// same-round ratios, per round and their median
	CSOverOverlay      []float64 `json:"cs_over_overlayfs"`
	CSOverTar          []float64 `json:"cs_over_tar"`
	OverlayOverTar     []float64 `json:"overlayfs_over_tar"`
	MedianCSOverlay    float64   `json:"median_cs_over_overlayfs"`
	MedianCSTar        float64   `json:"median_cs_over_tar"`
	MedianOverlayOvTar float64   `json:"median_overlayfs_over_tar"`
}

type StartRes struct {
	Runs   int                  `json:"runs"`
	MS     map[string][]float64 `json:"ms"`
	Median map[string]float64   `json:"median_ms"`
	P90    map[string]float64   `json:"p90_ms"`
	Ratio  float64              `json:"median_cs_over_overlayfs"`
}

type DiffRes struct {
	Bytes   int64     `json:"bytes"`
	Seconds []float64 `json:"seconds"`
	MBps    float64   `json:"median_mb_per_s"`
}

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root (containerd, overlay mounts, drop_caches)")
		os.Exit(2)
	}
	rounds := envInt("ROUNDS", 3)
	bigMB := envInt("BIG_MB", 500)
	starts := envInt("STARTS", 20)
	work := envStr("WORK", "/var/tmp/cs-bench")
	dirs := strings.Fields(envStr("DIRS", "/usr/include /usr/local/go /usr/share"))
	snapCounts := strings.Fields(envStr("SNAPSHOTS", "1000 10000"))
	png, ok := os.LookupEnv("PNG") // empty: no chart
	if !ok {
		png = "docs/bench.png"
	}
	skip := map[string]bool{}
	for _, s := range strings.Fields(envStr("SKIP", "")) {
		skip[s] = true
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		fatal(err)
	}
	ctx := context.Background()
	t0 := time.Now()
	host, _ := os.Hostname()
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	res := &Results{CSConfig: os.Getenv("CS_TOML"), Started: t0, Host: host, CPUs: runtime.NumCPU(), Commit: strings.TrimSpace(string(commit)), Rounds: rounds,
		Durations: map[string]float64{}}
	phase := func(name string, since time.Time) { res.Durations[name] = time.Since(since).Seconds() }

	// 1. binaries and images
	ts := time.Now()
	csBin := filepath.Join(work, "bin", "cs-snapshotter")
	logf("building %s", csBin)
	if err := run("go", "build", "-o", csBin, "./cmd/cs-snapshotter"); err != nil {
		fatal(err)
	}
	logf("building the big image from %v, %d MB of file contents", dirs, bigMB)
	im, err := buildBigImage(work, "docker.io/library/cs-bench-big:latest", dirs, int64(bigMB)<<20)
	if err != nil {
		fatal(err)
	}
	res.Image = im
	logf("big image: %d layers, %d entries, %.0f MB uncompressed, %.0f MB compressed", len(im.Layers), im.entries(),
		float64(im.tarSize())/1e6, float64(im.compressed())/1e6)
	bbArchive := filepath.Join(work, "busybox.oci.tar")
	if _, err := imagebuild.BuildFile(bbArchive, imagebuild.Options{Name: imagebuild.DefaultName}); err != nil {
		fatal(err)
	}
	phase("images", ts)

	// 2. import+unpack, interleaved rounds
	if !skip["import"] {
		ts = time.Now()
		res.Import = importRounds(ctx, work, csBin, im, rounds, "import", "")
		phase("import", ts)
		writeJSON(work, res)
	}
	// 2b. the same image pulled from a registry on 127.0.0.1: a pull
	// unpacks layers in parallel, an import one at a time
	if !skip["pull"] {
		ts = time.Now()
		res.PullMBps = envInt("PULL_MBPS", 0)
		reg, err := serveRegistry(im.Archive, float64(res.PullMBps))
		if err != nil {
			fatal(err)
		}
		res.Pull = importRounds(ctx, work, csBin, im, rounds, "pull", reg.ref())
		reg.close()
		phase("pull", ts)
		writeJSON(work, res)
	}
	// 3. container start
	if !skip["start"] {
		ts = time.Now()
		res.Start = startLatency(ctx, work, csBin, bbArchive, starts)
		phase("start", ts)
		writeJSON(work, res)
	}
	// 4. snapshot ops
	if !skip["snapops"] {
		ts = time.Now()
		for _, s := range snapCounts {
			n, err := strconv.Atoi(s)
			if err != nil {
				fatal(err)
			}
			r, err := snapOps(ctx, work, csBin, n)
			if err != nil {
				fatal(err)
			}
			res.SnapOps = append(res.SnapOps, r...)
		}
		phase("snapops", ts)
		writeJSON(work, res)
	}
	// 5. Diff reconstruction
	if !skip["diff"] {
		ts = time.Now()
		res.Diff = diffThroughput(work, csBin, im, max(rounds, 3))
		phase("diff", ts)
	}
	res.Durations["total"] = time.Since(t0).Seconds()
	writeJSON(work, res)
	printTable(os.Stdout, res)
	if png != "" {
		if err := drawChart(res, png); err != nil {
			logf("chart: %v", err)
		} else {
			logf("chart: %s", png)
		}
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	os.Exit(1)
}

func writeJSON(work string, res *Results) {
	b, _ := json.MarshalIndent(res, "", "  ")
	p := filepath.Join(work, "results.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		logf("write %s: %v", p, err)
	}
}

// importRounds measures getting im into containerd, by how: "import" of
// its archive, or "pull" of ref.
func importRounds(ctx context.Context, work, csBin string, im *bigImage, rounds int, how, ref string) ImportRes {
	r := ImportRes{Seconds: map[string][]float64{}, Median: map[string]float64{}}
	subjects := []string{"tar", "overlayfs", "cs"}
	for round := 1; round <= rounds; round++ {
		// rotate the order so no subject always goes first
		order := slices.Clone(subjects)
		for range (round - 1) % len(order) {
			order = append(order[1:], order[0])
		}
		got := map[string]float64{}
		for _, subj := range order {
			dir := filepath.Join(work, "rounds", fmt.Sprintf("%s%d-%s", how, round, subj))
			var secs float64
			var err error
			if subj == "tar" {
				secs, err = tarRound(dir, im)
			} else {
				secs, err = importRound(ctx, subj, dir, csBin, im, ref)
			}
			if err != nil {
				fatal(fmt.Errorf("round %d %s: %w", round, subj, err))
			}
			got[subj] = secs
			r.Seconds[subj] = append(r.Seconds[subj], secs)
			logf("%s round %d %-9s %6.2f s", how, round, subj, secs)
		}
		r.CSOverOverlay = append(r.CSOverOverlay, got["cs"]/got["overlayfs"])
		r.CSOverTar = append(r.CSOverTar, got["cs"]/got["tar"])
		r.OverlayOverTar = append(r.OverlayOverTar, got["overlayfs"]/got["tar"])
		logf("%s round %d: cs/overlayfs %.2f× cs/tar %.2f×", how, round, got["cs"]/got["overlayfs"], got["cs"]/got["tar"])
	}
	for _, s := range subjects {
		r.Median[s] = median(r.Seconds[s])
	}
	r.MedianCSOverlay = median(r.CSOverOverlay)
	r.MedianCSTar = median(r.CSOverTar)
	r.MedianOverlayOvTar = median(r.OverlayOverTar)
	return r
}

// tarRound extracts the layers in order with tar -xzf into a fresh
// directory, cold cache. (Whiteouts: these layers have none.)
func tarRound(dir string, im *bigImage) (float64, error) {
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if err := dropCaches(); err != nil {
		return 0, err
	}
	t0 := time.Now()
	for _, l := range im.Layers {
		if err := run("tar", "-xzf", l.Path, "-C", dir); err != nil {
			return 0, err
		}
	}
	return time.Since(t0).Seconds(), nil
}

// importRound imports im's archive into a fresh containerd with snapshotter
// kind, or pulls ref when it is set.
func importRound(ctx context.Context, kind, dir, csBin string, im *bigImage, ref string) (float64, error) {
	e, err := newEnv(ctx, kind, dir, csBin)
	if err != nil {
		return 0, err
	}
	defer e.close()
	if err := dropCaches(); err != nil {
		return 0, err
	}
	args := []string{"images", "import", "--snapshotter", e.snapshotter, im.Archive}
	if ref != "" {
		args = []string{"images", "pull", "--plain-http", "--snapshotter", e.snapshotter, ref}
	}
	t0 := time.Now()
	if err := e.ctr(args...); err != nil {
		return 0, err
	}
	secs := time.Since(t0).Seconds()
	// the image must be unpacked in that snapshotter
	if err := e.ctr("images", "check"); err != nil {
		return 0, err
	}
	if err := e.ctr("snapshots", "--snapshotter", e.snapshotter, "info", chainID(im)); err != nil {
		return 0, fmt.Errorf("image not unpacked: %w", err)
	}
	return secs, nil
}

// chainID of the image's top layer.
func chainID(im *bigImage) string {
	var ids []string
	for _, l := range im.Layers {
		ids = append(ids, string(l.DiffID))
	}
	cur := ids[0]
	for _, id := range ids[1:] {
		cur = digestOf(cur + " " + id)
	}
	return cur
}

func startLatency(ctx context.Context, work, csBin, archive string, runs int) StartRes {
	r := StartRes{Runs: runs, MS: map[string][]float64{}, Median: map[string]float64{}, P90: map[string]float64{}}
	kinds := []string{"overlayfs", "cs"}
	envs := map[string]*ctrdEnv{}
	for _, k := range kinds {
		e, err := newEnv(ctx, k, filepath.Join(work, "start-"+k), csBin)
		if err != nil {
			fatal(err)
		}
		defer e.close()
		if err := e.ctr("images", "import", "--snapshotter", e.snapshotter, archive); err != nil {
			fatal(err)
		}
		// one untimed run each: shim binaries and runc in the page cache
		if err := e.ctr("run", "--rm", "--snapshotter", e.snapshotter, imagebuild.DefaultName, "warm", "/bin/true"); err != nil {
			fatal(err)
		}
		envs[k] = e
	}
	for i := 0; i < runs; i++ {
		for j := range kinds {
			k := kinds[(i+j)%len(kinds)]
			e := envs[k]
			t0 := time.Now()
			if err := e.ctr("run", "--rm", "--snapshotter", e.snapshotter, imagebuild.DefaultName, fmt.Sprintf("t%d", i), "/bin/true"); err != nil {
				fatal(err)
			}
			r.MS[k] = append(r.MS[k], float64(time.Since(t0).Microseconds())/1e3)
		}
	}
	for _, k := range kinds {
		r.Median[k] = median(r.MS[k])
		r.P90[k] = percentileF(r.MS[k], 90)
		logf("container start %-9s median %.1f ms p90 %.1f ms", k, r.Median[k], r.P90[k])
	}
	r.Ratio = r.Median["cs"] / r.Median["overlayfs"]
	return r
}

// diffThroughput applies each big layer with the embedded CLI, then times
// `cs-snapshotter diff -u` of it (stdout counted, not stored) with a warm
// cache: one untimed diff first, whose output is checked against the
// layer's DiffID.
func diffThroughput(work, csBin string, im *bigImage, reps int) DiffRes {
	dir := filepath.Join(work, "diff-store")
	_ = os.RemoveAll(dir)
	defer func() { _ = testproc.UnmountUnder(dir); _ = os.RemoveAll(dir) }()
	cli := []string{"--graph", filepath.Join(dir, "graph"), "--run", filepath.Join(dir, "run")}
	var ids []string
	for _, l := range im.Layers {
		out, err := exec.Command(csBin, append(cli, "create-layer")...).Output()
		if err != nil {
			fatal(fmt.Errorf("create-layer: %v", err))
		}
		f := strings.Fields(string(out))
		id := f[len(f)-1]
		if err := run(csBin, append(cli, "applydiff", "-f", l.Path, id)...); err != nil {
			fatal(err)
		}
		ids = append(ids, id)
		// warm + check
		n, d, err := diffOnce(csBin, cli, id, true)
		if err != nil {
			fatal(err)
		}
		if d != string(l.DiffID) {
			fatal(fmt.Errorf("diff of %s: %d bytes %s, want %d bytes %s", l.Dir, n, d, l.TarSize, l.DiffID))
		}
	}
	r := DiffRes{}
	for rep := 0; rep < reps; rep++ {
		var total int64
		t0 := time.Now()
		for _, id := range ids {
			n, _, err := diffOnce(csBin, cli, id, false)
			if err != nil {
				fatal(err)
			}
			total += n
		}
		s := time.Since(t0).Seconds()
		r.Bytes = total
		r.Seconds = append(r.Seconds, s)
		logf("diff -u (warm) %d bytes in %.2f s: %.0f MB/s", total, s, float64(total)/s/1e6)
	}
	r.MBps = float64(r.Bytes) / median(r.Seconds) / 1e6
	_ = run(csBin, append(cli, "shutdown")...)
	return r
}

func diffOnce(csBin string, cli []string, id string, hash bool) (int64, string, error) {
	cmd := exec.Command(csBin, append(cli, "diff", "-u", id)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, "", err
	}
	if err := cmd.Start(); err != nil {
		return 0, "", err
	}
	var n int64
	var d string
	if hash {
		n, d, err = hashCopy(out)
	} else {
		n, err = countCopy(out)
	}
	if werr := cmd.Wait(); err == nil {
		err = werr
	}
	return n, d, err
}
