// Command scale measures how the store's listings and lookups grow with the
// number of images and containers: it fills a store to each size in turn
// (images sharing a few layers, one manifest item each, and as many
// containers), then times Images, Containers, Lookup and ImagesByDigest in
// this process (medians, bytes allocated per call) and the `images` and
// `containers` commands as separate processes (medians, peak RSS), with the
// store embedded and served by a daemon.
//
//	go run ./test/bench/scale -bin /path/to/cs-snapshotter -sizes 100,1000,10000
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

type result struct {
	Mode   string  `json:"mode"`
	Size   int     `json:"size"`
	Op     string  `json:"op"`
	Median float64 `json:"median_ms"`
	// Memory is bytes allocated per call in-process, peak RSS (KiB) for a
	// command.
	Memory int64  `json:"memory"`
	Unit   string `json:"memory_unit"`
}

func main() {
	bin := flag.String("bin", "", "cs-snapshotter binary (for the daemon and the commands)")
	sizes := flag.String("sizes", "100,1000,10000", "store sizes to measure at (images = containers = size)")
	rounds := flag.Int("rounds", 5, "timed rounds per operation")
	out := flag.String("json", "", "write the results as JSON here too")
	modes := flag.String("modes", "embedded,daemon", "store modes")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "scale: -bin is required")
		os.Exit(2)
	}
	var all []result
	for _, mode := range strings.Split(*modes, ",") {
		rs, err := runMode(mode, *bin, *sizes, *rounds)
		if err != nil {
			fmt.Fprintf(os.Stderr, "scale: %s: %v\n", mode, err)
			os.Exit(1)
		}
		all = append(all, rs...)
	}
	print(all)
	if *out != "" {
		b, _ := json.MarshalIndent(all, "", "  ")
		if err := os.WriteFile(*out, b, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "scale:", err)
			os.Exit(1)
		}
	}
}

func runMode(mode, bin, sizes string, rounds int) ([]result, error) {
	dir, err := os.MkdirTemp("/var/tmp", "cs-scale-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	opts := storage.StoreOptions{GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run")}
	if mode == "daemon" {
		sock := filepath.Join(dir, "cs.sock")
		d := exec.Command(bin, "serve", "--root", opts.GraphRoot, "--run-root", filepath.Join(dir, "daemon-run"), "--address", sock)
		d.Stderr = os.Stderr
		if err := d.Start(); err != nil {
			return nil, err
		}
		defer func() { d.Process.Signal(syscall.SIGTERM); d.Wait() }()
		for i := 0; i < 100; i++ {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	s, err := storage.GetStore(opts)
	if err != nil {
		return nil, err
	}
	defer func() { s.Shutdown(true) }()

	var layers []string
	for i := 0; i < 10; i++ {
		l, err := s.CreateLayer("", "", nil, "", false, nil)
		if err != nil {
			return nil, err
		}
		layers = append(layers, l.ID)
	}
	var res []result
	have := 0
	for _, f := range strings.Split(sizes, ",") {
		size, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("size %q: %w", f, err)
		}
		start := time.Now()
		for ; have < size; have++ {
			manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"n":%d}`, have))
			img, err := s.CreateImage("", []string{fmt.Sprintf("image-%d", have)}, layers[have%len(layers)], "", &storage.ImageOptions{
				BigData: []storage.ImageBigDataOption{{Key: storage.ImageDigestBigDataKey, Data: manifest}},
			})
			if err != nil {
				return nil, err
			}
			if _, err := s.CreateContainer("", []string{fmt.Sprintf("container-%d", have)}, img.ID, "", "", nil); err != nil {
				return nil, err
			}
		}
		fmt.Fprintf(os.Stderr, "%s: filled to %d images and containers in %s\n", mode, size, time.Since(start).Round(time.Millisecond))
		mid := size / 2
		wantDigest := digest.FromBytes([]byte(fmt.Sprintf(`{"schemaVersion":2,"n":%d}`, mid)))
		calls := []struct {
			op string
			fn func() error
		}{
			{"Images()", func() error { _, err := s.Images(); return err }},
			{"Containers()", func() error { _, err := s.Containers(); return err }},
			{"Lookup(image name)", func() error { _, err := s.Lookup(fmt.Sprintf("image-%d", mid)); return err }},
			{"Lookup(container name)", func() error { _, err := s.Lookup(fmt.Sprintf("container-%d", mid)); return err }},
			{"ImagesByDigest", func() error {
				imgs, err := s.ImagesByDigest(wantDigest)
				if err == nil && len(imgs) != 1 {
					err = fmt.Errorf("ImagesByDigest found %d images", len(imgs))
				}
				return err
			}},
		}
		for _, c := range calls {
			var times []float64
			var alloc uint64
			for r := 0; r < rounds; r++ {
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				t0 := time.Now()
				if err := c.fn(); err != nil {
					return nil, fmt.Errorf("%s: %w", c.op, err)
				}
				times = append(times, ms(time.Since(t0)))
				runtime.ReadMemStats(&after)
				alloc += after.TotalAlloc - before.TotalAlloc
			}
			res = append(res, result{mode, size, c.op, median(times), int64(alloc) / int64(rounds), "B/call"})
		}
		if mode == "embedded" { // the commands open the root themselves
			s.Shutdown(true)
		}
		for _, cmd := range [][]string{{"images"}, {"containers"}, {"image", fmt.Sprintf("image-%d", mid)}} {
			var times []float64
			var rss int64
			for r := 0; r < rounds; r++ {
				// GNU time reports the command's own peak RSS: a child
				// of this (large) process would inherit its high-water
				// mark through fork and exec.
				c := exec.Command("/usr/bin/time", append([]string{"-f", "%M", bin, "--graph", opts.GraphRoot, "--run", opts.RunRoot}, cmd...)...)
				var stderr strings.Builder
				c.Stderr = &stderr
				t0 := time.Now()
				if err := c.Run(); err != nil {
					return nil, fmt.Errorf("%s: %w: %s", strings.Join(cmd, " "), err, stderr.String())
				}
				times = append(times, ms(time.Since(t0)))
				lines := strings.Fields(stderr.String())
				if len(lines) == 0 {
					return nil, fmt.Errorf("%s: no peak RSS from /usr/bin/time", strings.Join(cmd, " "))
				}
				kib, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
				if err != nil {
					return nil, fmt.Errorf("%s: peak RSS %q: %w", strings.Join(cmd, " "), lines[len(lines)-1], err)
				}
				rss = max(rss, kib)
			}
			res = append(res, result{mode, size, "cs-snapshotter " + strings.Join(cmd[:1], " "), median(times), rss, "KiB peak RSS"})
		}
		if mode == "embedded" {
			if s, err = storage.GetStore(opts); err != nil {
				return nil, err
			}
		}
	}
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func print(rs []result) {
	fmt.Printf("%-8s %7s  %-28s %12s %14s\n", "mode", "size", "operation", "median ms", "memory")
	for _, r := range rs {
		mem := fmt.Sprintf("%d %s", r.Memory, r.Unit)
		if r.Unit == "B/call" {
			mem = fmt.Sprintf("%.1f MiB/call", float64(r.Memory)/(1<<20))
		} else {
			mem = fmt.Sprintf("%.1f MiB RSS", float64(r.Memory)/1024)
		}
		fmt.Printf("%-8s %7d  %-28s %12.2f %14s\n", r.Mode, r.Size, r.Op, r.Median, mem)
	}
}
