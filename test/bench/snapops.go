package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
)

// opResult is one operation's latency distribution for one subject.
type opResult struct {
	Snapshots int     `json:"snapshots"`
	Subject   string  `json:"subject"` // inproc, socket, process or overlay
	Op        string  `json:"op"`
	Samples   int     `json:"samples"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
}

const chainDepth = 20

type population struct {
	all, tips, actives []string
}

// populateStore makes n snapshots as daemon/bench_test.go does: chains of
// 19 committed layers with an active snapshot on top, each labelled
// bench.group=<chain mod 100>.
func populateStore(ctx context.Context, sn snapshots.Snapshotter, n int) (*population, error) {
	p := &population{}
	for chain := 0; chain*chainDepth < n; chain++ {
		depth := min(chainDepth, n-chain*chainDepth)
		lbl := snapshots.WithLabels(map[string]string{"bench.group": strconv.Itoa(chain % 100)})
		parent := ""
		for layer := 0; layer < depth-1; layer++ {
			name := fmt.Sprintf("chain%d/layer%d", chain, layer)
			key := name + "-extract"
			if _, err := sn.Prepare(ctx, key, parent, lbl); err != nil {
				return nil, err
			}
			if err := sn.Commit(ctx, name, key, lbl); err != nil {
				return nil, err
			}
			p.all = append(p.all, name)
			parent = name
		}
		key := fmt.Sprintf("chain%d/container", chain)
		if _, err := sn.Prepare(ctx, key, parent, lbl); err != nil {
			return nil, err
		}
		p.all = append(p.all, key)
		p.actives = append(p.actives, key)
		if parent != "" {
			p.tips = append(p.tips, parent)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	r.Shuffle(len(p.all), func(i, j int) { p.all[i], p.all[j] = p.all[j], p.all[i] })
	return p, nil
}

// snapOps measures each operation on stores of n snapshots (the daemon's
// default config: a Remove leaves the files to Cleanup, as containerd's
// overlayfs snapshotter does by default), alternating call by call, three
// ways: "inproc", a daemon root opened in this process (d.Snapshotter());
// "socket", the same root over a unix socket served from this process,
// through containerd's proxy client (daemon.Dial); "process", over the
// socket of a `cs-snapshotter serve` process on a root of its own,
// populated alike, as containerd (another process) reaches the daemon. A
// fourth, "overlay", is containerd's overlayfs snapshotter in this process
// (asynchronous remove, as containerd's plugin by default) on the same
// disk: the floor the disk's fsyncs and containerd's record format set.
func snapOps(ctx context.Context, work, csBin string, n int) ([]opResult, error) {
	base := filepath.Join(work, fmt.Sprintf("snapops-%d", n))
	_ = os.RemoveAll(base)
	defer os.RemoveAll(base)
	open := func(name string) (*daemon.Daemon, config.Config, error) {
		cfg := config.Default()
		cfg.Root = filepath.Join(base, name)
		cfg.RunRoot = filepath.Join(base, name+"-run")
		d, err := daemon.Open(ctx, cfg, daemon.Holder{What: "cs bench"})
		return d, cfg, err
	}
	d, dcfg, err := open("inproc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	inAddr := dcfg.Address()
	l, err := daemon.Listen(inAddr, dcfg.GRPC)
	if err != nil {
		return nil, err
	}
	srv := d.NewServer()
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	inClient, err := daemon.Dial(inAddr)
	if err != nil {
		return nil, err
	}
	defer inClient.Close()
	inproc := snapshots.Snapshotter(d.Snapshotter())
	start := time.Now()
	pop, err := populateStore(ctx, inproc, n)
	if err != nil {
		return nil, err
	}
	ds, cfg, err := open("process")
	if err != nil {
		return nil, err
	}
	_, err = populateStore(ctx, ds.Snapshotter(), n)
	if cerr := ds.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	ov, err := overlay.NewSnapshotter(filepath.Join(base, "overlay"), overlay.AsynchronousRemove)
	if err != nil {
		return nil, err
	}
	defer ov.Close()
	if _, err := populateStore(ctx, ov, n); err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	logf("snapshot ops: 3 stores of %d snapshots populated in %v", n, time.Since(start).Round(time.Millisecond))
	noConfig := filepath.Join(base, "empty.toml")
	if err := os.WriteFile(noConfig, nil, 0o644); err != nil {
		return nil, err
	}
	addr := filepath.Join(base, "cs.sock")
	proc, err := startDaemon("cs-snapshotter", filepath.Join(base, "serve.log"), csBin, "serve", "--config", noConfig,
		"--root", cfg.Root, "--run-root", cfg.RunRoot, "--address", addr, "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	defer proc.stop()
	if err := waitSock(proc, addr); err != nil {
		return nil, err
	}
	client, err := daemon.Dial(addr)
	if err != nil {
		return nil, err
	}
	defer client.Close()

	subjects := []struct {
		name string
		sn   snapshots.Snapshotter
	}{{"inproc", inproc}, {"socket", inClient.Snapshotter}, {"process", client.Snapshotter}, {"overlay", ov}}
	// warm the connections
	for _, c := range []*daemon.Client{inClient, client} {
		if _, err := c.Snapshotter.Stat(ctx, pop.all[0]); err != nil {
			return nil, err
		}
	}

	var res []opResult
	measure := func(op string, samples int, prep func(subj string, i int) (string, error), f func(sn snapshots.Snapshotter, key string, i int) error) error {
		lat := make([][]time.Duration, len(subjects))
		for i := 0; i < samples; i++ {
			for s, subj := range subjects {
				key := ""
				if prep != nil {
					var err error
					if key, err = prep(subj.name, i); err != nil {
						return fmt.Errorf("%s: prepare: %w", op, err)
					}
				}
				t0 := time.Now()
				if err := f(subj.sn, key, i); err != nil {
					return fmt.Errorf("%s %s: %w", op, subj.name, err)
				}
				lat[s] = append(lat[s], time.Since(t0))
			}
		}
		line := fmt.Sprintf("  %-8s n=%-5d", op, n)
		for s, subj := range subjects {
			r := opResult{Snapshots: n, Subject: subj.name, Op: op, Samples: samples,
				P50us: us(percentile(lat[s], 50)), P99us: us(percentile(lat[s], 99))}
			res = append(res, r)
			line += fmt.Sprintf(" | %s p50 %8.1f µs p99 %8.1f µs", subj.name, r.P50us, r.P99us)
		}
		logf("%s", line)
		return nil
	}
	seq := 0
	key := func(subj, what string) string { seq++; return fmt.Sprintf("bench-%s-%s-%d", what, subj, seq) }
	bySubject := map[string]snapshots.Snapshotter{}
	for _, subj := range subjects {
		bySubject[subj.name] = subj.sn
	}
	err = errors.Join(
		measure("Stat", 3000, nil, func(sn snapshots.Snapshotter, _ string, i int) error {
			_, err := sn.Stat(ctx, pop.all[i%len(pop.all)])
			return err
		}),
		measure("Mounts", 1000, nil, func(sn snapshots.Snapshotter, _ string, i int) error {
			_, err := sn.Mounts(ctx, pop.actives[i%len(pop.actives)])
			return err
		}),
		measure("Prepare", 300, nil, func(sn snapshots.Snapshotter, _ string, i int) error {
			_, err := sn.Prepare(ctx, key("x", "prep"), pop.tips[i%len(pop.tips)])
			return err
		}),
		measure("Remove", 300, func(subj string, i int) (string, error) {
			k := key(subj, "rm")
			_, err := bySubject[subj].Prepare(ctx, k, pop.tips[i%len(pop.tips)])
			return k, err
		}, func(sn snapshots.Snapshotter, k string, _ int) error {
			return sn.Remove(ctx, k)
		}),
		measure("Walk", 15, nil, func(sn snapshots.Snapshotter, _ string, _ int) error {
			c := 0
			err := sn.Walk(ctx, func(context.Context, snapshots.Info) error { c++; return nil })
			if err == nil && c < n {
				err = fmt.Errorf("walk saw %d of %d", c, n)
			}
			return err
		}),
	)
	return res, err
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
