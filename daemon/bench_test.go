// The snapshotter benchmarks: cs in-process, cs over the socket and
// containerd's overlayfs snapshotter side by side. scripts/bench.sh runs
// them; see docs/benchmarks.md.

package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"

	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// The population every benchmark runs against: CS_BENCH_SNAPSHOTS snapshots
// (default 10,000) in chains of benchChainDepth, each chain benchChainDepth-1
// committed layers with one active snapshot on top, like an image with its
// container. Every snapshot carries a group label so a filtered Walk has
// something to select.
const (
	defaultBenchSnapshots = 10000
	benchChainDepth       = 20
	benchGroups           = 100 // a filtered walk selects 1/benchGroups
	benchGroupLabel       = "bench.group"
)

// benchSubject opens one snapshotter under test in root. populate is the
// in-process snapshotter holding the same records, used to build the
// population quickly; sn is what the benchmarks measure.
type benchSubject struct {
	name string
	open func(ctx context.Context, root string) (sn, populate snapshots.Snapshotter, closeFn func() error, err error)
}

var benchSubjects = []benchSubject{
	{"cs-inproc", func(ctx context.Context, root string) (snapshots.Snapshotter, snapshots.Snapshotter, func() error, error) {
		db, err := metadata.Open(ctx, filepath.Join(root, metadata.FileName))
		if err != nil {
			return nil, nil, nil, err
		}
		sn, err := snapshotter.New(ctx, root, db, snapshotter.Options{})
		if err != nil {
			db.Close()
			return nil, nil, nil, err
		}
		return sn, sn, func() error { return errors.Join(sn.Close(), db.Close()) }, nil
	}},
	{"cs-socket", func(ctx context.Context, root string) (snapshots.Snapshotter, snapshots.Snapshotter, func() error, error) {
		s, err := serve(ctx, root)
		if err != nil {
			return nil, nil, nil, err
		}
		return s.client.Snapshotter, s.d.Snapshotter(), func() error {
			return errors.Join(s.client.Snapshotter.Close(), s.stop())
		}, nil
	}},
	// containerd's builtin overlayfs snapshotter with default options, which
	// remove synchronously (no AsynchronousRemove).
	{"overlay", func(ctx context.Context, root string) (snapshots.Snapshotter, snapshots.Snapshotter, func() error, error) {
		sn, err := overlay.NewSnapshotter(root)
		if err != nil {
			return nil, nil, nil, err
		}
		return sn, sn, sn.Close, nil
	}},
}

// benchPopulation is what populate made.
type benchPopulation struct {
	all     []string // every key and name, shuffled
	tips    []string // the top committed layer of each chain
	actives []string // the active snapshot on each chain
}

func benchSnapshots(b *testing.B) int {
	s := os.Getenv("CS_BENCH_SNAPSHOTS")
	if s == "" {
		return defaultBenchSnapshots
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < benchChainDepth {
		b.Fatalf("CS_BENCH_SNAPSHOTS=%q: want a number of at least %d", s, benchChainDepth)
	}
	return n
}

// benchDir makes a root on disk: /var/tmp rather than /tmp, which may be
// tmpfs. CS_BENCH_DIR chooses another parent.
func benchDir(b *testing.B, name string) string {
	parent := os.Getenv("CS_BENCH_DIR")
	if parent == "" {
		parent = "/var/tmp"
	}
	dir, err := os.MkdirTemp(parent, "cs-bench-"+name+"-")
	if err != nil {
		b.Fatal(err)
	}
	return dir
}

func groupLabel(chain int) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{benchGroupLabel: strconv.Itoa(chain % benchGroups)})
}

// populate creates n snapshots in sn: chains of benchChainDepth-1 committed
// snapshots with an active one on top.
func populate(ctx context.Context, sn snapshots.Snapshotter, n int) (*benchPopulation, error) {
	p := &benchPopulation{}
	for chain := 0; chain*benchChainDepth < n; chain++ {
		depth := min(benchChainDepth, n-chain*benchChainDepth)
		parent := ""
		for layer := 0; layer < depth-1; layer++ {
			name := fmt.Sprintf("chain%d/layer%d", chain, layer)
			key := name + "-extract"
			if _, err := sn.Prepare(ctx, key, parent, groupLabel(chain)); err != nil {
				return nil, err
			}
			if err := sn.Commit(ctx, name, key, groupLabel(chain)); err != nil {
				return nil, err
			}
			p.all = append(p.all, name)
			parent = name
		}
		key := fmt.Sprintf("chain%d/container", chain)
		if _, err := sn.Prepare(ctx, key, parent, groupLabel(chain)); err != nil {
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

// benchSeq makes the keys of each benchmark run unique within the process.
var benchSeq int

func benchKey(op string, i int) string {
	return fmt.Sprintf("bench/%s/%d/%d", op, benchSeq, i)
}

// removeAll removes keys outside the timer, so each benchmark leaves the
// population as it found it.
func removeAll(ctx context.Context, b *testing.B, sn snapshots.Snapshotter, keys []string) {
	b.Helper()
	b.StopTimer()
	for _, k := range keys {
		if err := sn.Remove(ctx, k); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshotter measures the snapshotter's metadata operations
// against a store holding CS_BENCH_SNAPSHOTS snapshots, for cs in-process,
// cs through containerd's proxy client and the socket, and containerd's own
// overlayfs snapshotter. Each subject's population is built once per process
// (a subject's function runs once; its leaves run -count times).
func BenchmarkSnapshotter(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("the snapshotters check overlayfs support and must run as root")
	}
	n := benchSnapshots(b)
	for _, subj := range benchSubjects {
		b.Run(subj.name, func(b *testing.B) {
			ctx := context.Background()
			root := benchDir(b, subj.name)
			b.Cleanup(func() { os.RemoveAll(root) })
			sn, pop, closeFn, err := subj.open(ctx, root)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				if err := closeFn(); err != nil {
					b.Error(err)
				}
			})
			start := time.Now()
			p, err := populate(ctx, pop, n)
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("%s: populated %d snapshots in %v", subj.name, len(p.all), time.Since(start).Round(time.Millisecond))
			benchOps(b, ctx, sn, p)
		})
	}
}

func benchOps(b *testing.B, ctx context.Context, sn snapshots.Snapshotter, p *benchPopulation) {
	b.Run("Stat", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := sn.Stat(ctx, p.all[i%len(p.all)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Mounts", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			m, err := sn.Mounts(ctx, p.actives[i%len(p.actives)])
			if err != nil {
				b.Fatal(err)
			}
			if len(m) != 1 {
				b.Fatalf("%d mounts", len(m))
			}
		}
	})
	b.Run("Prepare", func(b *testing.B) {
		benchSeq++
		b.ReportAllocs()
		var keys []string
		for i := 0; b.Loop(); i++ {
			key := benchKey("prepare", i)
			if _, err := sn.Prepare(ctx, key, p.tips[i%len(p.tips)]); err != nil {
				b.Fatal(err)
			}
			keys = append(keys, key)
		}
		removeAll(ctx, b, sn, keys)
	})
	b.Run("PrepareCommit", func(b *testing.B) {
		benchSeq++
		b.ReportAllocs()
		var names []string
		for i := 0; b.Loop(); i++ {
			key, name := benchKey("commit-key", i), benchKey("commit", i)
			if _, err := sn.Prepare(ctx, key, p.tips[i%len(p.tips)]); err != nil {
				b.Fatal(err)
			}
			if err := sn.Commit(ctx, name, key); err != nil {
				b.Fatal(err)
			}
			names = append(names, name)
		}
		removeAll(ctx, b, sn, names)
	})
	b.Run("Remove", func(b *testing.B) {
		benchSeq++
		b.ReportAllocs()
		// b.Loop runs b.N iterations in one call of this function, but b.N
		// is not known before the loop; a pool is made outside the timer
		// whenever the previous one runs out.
		var pool []string
		next := 0
		for i := 0; b.Loop(); i++ {
			if next == len(pool) {
				b.StopTimer()
				pool = pool[:0]
				for j := range max(64, i) {
					key := benchKey("remove", i+j)
					if _, err := sn.Prepare(ctx, key, p.tips[(i+j)%len(p.tips)]); err != nil {
						b.Fatal(err)
					}
					pool = append(pool, key)
				}
				next = 0
				b.StartTimer()
			}
			if err := sn.Remove(ctx, pool[next]); err != nil {
				b.Fatal(err)
			}
			next++
		}
		removeAll(ctx, b, sn, pool[next:])
	})
	b.Run("Walk", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			count := 0
			if err := sn.Walk(ctx, func(context.Context, snapshots.Info) error {
				count++
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			if count != len(p.all) {
				b.Fatalf("walked %d snapshots, want %d", count, len(p.all))
			}
		}
	})
	b.Run("WalkFiltered", func(b *testing.B) {
		filter := fmt.Sprintf(`labels."%s"=="7"`, benchGroupLabel)
		b.ReportAllocs()
		for b.Loop() {
			count := 0
			if err := sn.Walk(ctx, func(context.Context, snapshots.Info) error {
				count++
				return nil
			}, filter); err != nil {
				b.Fatal(err)
			}
			if count == 0 {
				b.Fatal("filtered walk found nothing")
			}
		}
	})
}
