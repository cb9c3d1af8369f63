package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

// TestConcurrentLoad: 16 clients at once for a bounded time against one
// daemon and one containerd:
//
//   - 3 containerd clients, each importing, running (`ctr run --rm`) and
//     removing (`ctr images rm --sync`, which runs containerd's GC) an
//     image of its own;
//   - 1 client running containerd's GC over and over (a lease deleted
//     synchronously, sweeping the daemon's snapshots and blobs);
//   - 7 clients of the store's Go API through the daemon and 3 of its CLI
//     (`cs-snapshotter create-layer`, `add-names`, `mount`, ...), creating,
//     naming, mounting and deleting layers, images and containers, racing
//     for a few shared names and mounting one shared layer;
//   - 2 clients of the store opened through containerd (a namespace of
//     their own), doing the same.
//
// Then: every client stopped within two minutes of the deadline (no
// deadlock); every item a client made and did not delete is there with the
// names and metadata it last gave it (no lost update) and every one it
// deleted is gone; every name is held by one item at most, and the name
// index (Lookup) agrees with the listings; the store's mount counts are
// exactly what the clients did and match the mounts; Check is clean (what
// the store holds survived containerd's GC, and containerd's images are
// whole); each containerd image imported runs. It prints the operations
// done, errors by kind and latencies.
//
// CS_LOAD_DURATION (default 20s; 3m with CS_STRESS=1), CS_SEED.
func TestConcurrentLoad(t *testing.T) {
	requireDaemon(t)
	duration := envDuration(t, "CS_LOAD_DURATION", 20*time.Second, 3*time.Minute)
	seed := envSeed(t)
	e := NewEnv(t)
	// The store's Check and mounts stand read-only views on containerd's
	// layers; a GC pass meanwhile cannot remove such a layer (it logs so)
	// and removes it at a later pass.
	e.ExpectContainerdLog("failed to remove snapshot", "cannot remove snapshot with child")
	lr := &loadRun{t: t, e: e, c: e.containerdClient(t), seed: seed, stats: map[string]*opStat{},
		storeRun: filepath.Join(e.Dir, "store-run")}
	lr.setup()
	t.Logf("load: 16 clients for %v, seed %d", duration, seed)
	lr.deadline = time.Now().Add(duration)
	var wg sync.WaitGroup
	start := func(name string, f func(rng *rand.Rand)) {
		wg.Add(1)
		rng := rand.New(rand.NewPCG(seed, uint64(len(name))<<32|uint64(lr.nclients)))
		lr.nclients++
		go func() {
			defer wg.Done()
			f(rng)
		}()
	}
	for i := range 3 {
		start(fmt.Sprintf("ctr-%d", i), func(rng *rand.Rand) { lr.ctrClient(i, rng) })
	}
	start("gc", func(rng *rand.Rand) { lr.gcClient(rng) })
	var apis []*storeClient
	for i := range 7 {
		sc := lr.newStoreClient(fmt.Sprintf("api%d", i), "")
		apis = append(apis, sc)
		start(sc.name, func(rng *rand.Rand) { lr.apiClient(sc, rng) })
	}
	var clis []*cliClient
	for i := range 3 {
		cc := &cliClient{name: fmt.Sprintf("cli%d", i), layers: map[string]*ownLayer{}}
		clis = append(clis, cc)
		start(cc.name, func(rng *rand.Rand) { lr.cliClient(cc, rng) })
	}
	var viaCtrd []*storeClient
	for i := range 2 {
		sc := lr.newStoreClient(fmt.Sprintf("ctrd%d", i), "cs-load")
		viaCtrd = append(viaCtrd, sc)
		start(sc.name, func(rng *rand.Rand) { lr.apiClient(sc, rng) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(duration + 2*time.Minute):
		var b bytes.Buffer
		pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("clients still running 2 minutes after the deadline (deadlock?); operations in flight: %v\ngoroutines:\n%s", lr.inFlight(), b.String())
	}
	ran := time.Since(lr.deadline.Add(-duration))

	lr.verify(apis, clis, viaCtrd)
	lr.report(ran)
}

type opStat struct {
	n    int
	errs map[string]int
	lat  latencies
}

type ownLayer struct {
	id, name, meta string
	mounts         int
	image          string // own image on it
}

type ownImage struct {
	id, name, layer string
	containers      int
}

type ownContainer struct {
	id, name, image string
	mounts          int
}

type storeClient struct {
	name       string
	s          storage.Store
	viaCtrd    bool
	layers     map[string]*ownLayer // by ID
	images     map[string]*ownImage
	containers map[string]*ownContainer
	gone       []string // IDs deleted
	shared     int      // mounts of the shared layer held
	n          int
}

type cliClient struct {
	name   string
	layers map[string]*ownLayer
	gone   []string
	n      int
}

type loadRun struct {
	t        *testing.T
	e        *Env
	c        *client.Client
	seed     uint64
	storeRun string
	deadline time.Time
	nclients int

	images      []*crashImage
	sharedLayer string
	sharedHeld  atomic.Int64

	mu         sync.Mutex
	stats      map[string]*opStat
	unexpected []string
	flight     map[int]string
	flightID   int
	gcPasses   int
}

// Contested names: a few of each kind every client tries to take.
const contested = 4

func (lr *loadRun) setup() {
	t, e := lr.t, lr.e
	e.ImportImage(imageArchive)
	s := lr.openStore("")
	defer s.Free()
	l, _, err := s.PutLayer("", "", []string{"shared"}, "", false, nil, layerStream(999, 4096))
	if err != nil {
		t.Fatal(err)
	}
	lr.sharedLayer = l.ID
}

func (lr *loadRun) openStore(ns string) storage.Store {
	lr.t.Helper()
	opts := storage.StoreOptions{GraphRoot: lr.e.CSRoot, RunRoot: lr.storeRun}
	if ns != "" {
		opts = storage.StoreOptions{GraphRoot: filepath.Join(lr.e.Dir, "ctrd-graph"), RunRoot: filepath.Join(lr.e.Dir, "ctrd-run"),
			ContainerdAddress: lr.e.CtrdSocket, ContainerdNamespace: ns}
	}
	s, err := storage.GetStore(opts)
	if err != nil {
		lr.t.Fatalf("opening the store: %v", err)
	}
	return s
}

func (lr *loadRun) newStoreClient(name, ns string) *storeClient {
	s := lr.openStore(ns)
	lr.t.Cleanup(func() { s.Free() })
	return &storeClient{name: name, s: s, viaCtrd: ns != "", layers: map[string]*ownLayer{}, images: map[string]*ownImage{}, containers: map[string]*ownContainer{}}
}

func (lr *loadRun) running() bool { return time.Now().Before(lr.deadline) }

// op runs f as an operation of kind, timing it; expected classifies the
// errors that are a normal outcome under racing ("" for none).
func (lr *loadRun) op(kind string, expected func(error) string, f func() error) error {
	lr.mu.Lock()
	lr.flightID++
	id := lr.flightID
	if lr.flight == nil {
		lr.flight = map[int]string{}
	}
	lr.flight[id] = kind
	lr.mu.Unlock()
	start := time.Now()
	err := f()
	took := time.Since(start)
	lr.mu.Lock()
	defer lr.mu.Unlock()
	delete(lr.flight, id)
	st := lr.stats[kind]
	if st == nil {
		st = &opStat{errs: map[string]int{}}
		lr.stats[kind] = st
	}
	st.n++
	st.lat = append(st.lat, took)
	if err != nil {
		what := ""
		if expected != nil {
			what = expected(err)
		}
		if what == "" {
			what = "unexpected"
			if len(lr.unexpected) < 20 {
				lr.unexpected = append(lr.unexpected, fmt.Sprintf("%s: %v", kind, err))
			}
		}
		st.errs[what]++
	}
	return err
}

func (lr *loadRun) inFlight() []string {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	var out []string
	for _, k := range lr.flight {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func duplicate(err error) string {
	if errors.Is(err, storage.ErrDuplicateName) || errors.Is(err, storage.ErrDuplicateID) {
		return "name taken"
	}
	return ""
}

// nameMoved classifies AddNames errors: through containerd a name held
// outside the namespace cannot be moved; through the daemon a contested
// name always moves.
func nameMoved(viaCtrd bool) func(error) string {
	return func(err error) string {
		if viaCtrd && errors.Is(err, storage.ErrDuplicateName) {
			return "name taken"
		}
		return ""
	}
}

// ctrClient imports images of its own, runs them, and now and then
// removes one. Each import is of an image never imported before, and now
// and then all of them import the same one, racing for its name and its
// layers (TestBugSharedTarSplit).
func (lr *loadRun) ctrClient(i int, rng *rand.Rand) {
	e := lr.e
	var img *crashImage
	k := 0
	next := func() *crashImage {
		k++
		name := fmt.Sprintf("docker.io/library/cs-load-%d-%d:latest", i, k)
		archive := filepath.Join(e.Dir, fmt.Sprintf("load-%d-%d.tar", i, k))
		hello := fmt.Sprintf("load image %d.%d\n", i, k)
		if _, err := imagebuild.BuildFile(archive, imagebuild.Options{Name: name, Layers: 1, Hello: hello, BigFileSize: 1<<20 + 512*(i*1000+k)}); err != nil {
			lr.t.Error(err)
			return nil
		}
		return &crashImage{name: name, archive: archive, hello: hello, state: stAbsent}
	}
	for lr.running() {
		switch {
		case img == nil || img.state == stAbsent:
			if img = next(); img == nil {
				return
			}
			err := lr.op("ctr import", nil, func() error {
				return e.Ctr("images", "import", "--snapshotter", e.Snapshotter, img.archive).Err
			})
			if err == nil {
				img.state = stPresent
				lr.mu.Lock()
				lr.images = append(lr.images, img)
				lr.mu.Unlock()
			}
		case rng.IntN(5) == 0:
			// A synchronous removal is a GC pass.
			if lr.op("ctr images rm --sync", nil, func() error {
				return e.Ctr("images", "rm", "--sync", img.name).Err
			}) == nil {
				img.state = stAbsent
			}
		default:
			name, want := img.name, img.hello
			if rng.IntN(3) == 0 {
				name, want = imageName, imagebuild.HelloText
			}
			lr.op("ctr run", nil, func() error {
				r := e.Ctr("run", "--rm", "--snapshotter", e.Snapshotter, name, e.ID("load"), "sh", "-c", "cat "+imagebuild.HelloPath+"; echo end")
				if r.Err == nil && r.Stdout != want+"end\n" {
					return fmt.Errorf("%s printed %q, want %q (stderr %q)", name, r.Stdout, want+"end\n", r.Stderr)
				}
				return r.Err
			})
		}
		if rng.IntN(10) == 0 {
			// Racing containerd's clients for one image name and its
			// layers.
			lr.op("ctr import (shared)", nil, func() error {
				return e.Ctr("images", "import", "--snapshotter", e.Snapshotter, imageArchive).Err
			})
		}
	}
}

// gcClient runs containerd's GC, sweeping the daemon, over and over.
func (lr *loadRun) gcClient(rng *rand.Rand) {
	for lr.running() {
		if lr.op("containerd GC", nil, func() error {
			return containerdSweep(lr.c)
		}) == nil {
			lr.mu.Lock()
			lr.gcPasses++
			lr.mu.Unlock()
		}
		time.Sleep(time.Duration(100+rng.IntN(300)) * time.Millisecond)
	}
}

func pickLayer(m map[string]*ownLayer, rng *rand.Rand, ok func(*ownLayer) bool) *ownLayer {
	var ids []string
	for id, l := range m {
		if ok == nil || ok(l) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	sort.Strings(ids)
	return m[ids[rng.IntN(len(ids))]]
}

// apiClient drives the store's Go API.
func (lr *loadRun) apiClient(c *storeClient, rng *rand.Rand) {
	s := c.s
	prefix := ""
	if c.viaCtrd {
		prefix = " (via containerd)"
	}
	for lr.running() {
		c.n++
		switch r := rng.IntN(100); {
		case r < 18 || len(c.layers) == 0:
			names := []string{fmt.Sprintf("%s-l%d", c.name, c.n)}
			if rng.IntN(3) == 0 {
				names = append(names, fmt.Sprintf("race-%d", rng.IntN(contested)))
			}
			var l *storage.Layer
			seed := uint64(c.n)<<16 | uint64(len(c.name))<<8 | uint64(c.name[len(c.name)-1])
			diff := layerStream(seed, int64(1+rng.IntN(32<<10)))
			err := lr.op("put-layer"+prefix, duplicate, func() error {
				var err error
				l, _, err = s.PutLayer("", "", names, "", false, nil, diff)
				return err
			})
			diff.Close()
			if err == nil {
				c.layers[l.ID] = &ownLayer{id: l.ID, name: names[0]}
			}
		case r < 28:
			l := pickLayer(c.layers, rng, nil)
			name := fmt.Sprintf("race-%d", rng.IntN(contested))
			lr.op("add-names (contested)"+prefix, nameMoved(c.viaCtrd), func() error { return s.AddNames(l.id, []string{name}) })
		case r < 38:
			l := pickLayer(c.layers, rng, nil)
			meta := fmt.Sprintf("%s meta %d", c.name, c.n)
			if lr.op("set-metadata"+prefix, nil, func() error { return s.SetMetadata(l.id, meta) }) == nil {
				l.meta = meta
			}
		case r < 48:
			l := pickLayer(c.layers, rng, func(l *ownLayer) bool { return l.image == "" })
			if l == nil {
				continue
			}
			names := []string{fmt.Sprintf("%s-i%d", c.name, c.n)}
			if rng.IntN(2) == 0 {
				names = append(names, fmt.Sprintf("race-img-%d", rng.IntN(contested)))
			}
			data, _ := blobData(uint64(c.n), int64(1+rng.IntN(16<<10)))
			var img *storage.Image
			err := lr.op("create-image"+prefix, duplicate, func() error {
				var err error
				img, err = s.CreateImage("", names, l.id, "", &storage.ImageOptions{
					BigData: []storage.ImageBigDataOption{{Key: "config", Data: data}},
				})
				return err
			})
			if err == nil {
				c.images[img.ID] = &ownImage{id: img.ID, name: names[0], layer: l.id}
				l.image = img.ID
			}
		case r < 56:
			var ids []string
			for id := range c.images {
				ids = append(ids, id)
			}
			if len(ids) == 0 {
				continue
			}
			sort.Strings(ids)
			img := c.images[ids[rng.IntN(len(ids))]]
			names := []string{fmt.Sprintf("%s-c%d", c.name, c.n)}
			if rng.IntN(2) == 0 {
				names = append(names, fmt.Sprintf("race-ctr-%d", rng.IntN(contested)))
			}
			var ctr *storage.Container
			err := lr.op("create-container"+prefix, duplicate, func() error {
				var err error
				ctr, err = s.CreateContainer("", names, img.id, "", "", &storage.ContainerOptions{
					BigData: []storage.ContainerBigDataOption{{Key: "state", Data: []byte(names[0])}},
				})
				return err
			})
			if err == nil {
				c.containers[ctr.ID] = &ownContainer{id: ctr.ID, name: names[0], image: img.id}
				img.containers++
			}
		case r < 66 && !c.viaCtrd:
			// The shared layer: every API client mounts it.
			if c.shared > 0 && rng.IntN(2) == 0 {
				if lr.op("unmount (shared layer)", nil, func() error { _, err := s.Unmount(lr.sharedLayer, false); return err }) == nil {
					c.shared--
					lr.sharedHeld.Add(-1)
				}
			} else if lr.op("mount (shared layer)", nil, func() error { _, err := s.Mount(lr.sharedLayer, ""); return err }) == nil {
				c.shared++
				lr.sharedHeld.Add(1)
			}
		case r < 76:
			// Mount or unmount an own layer or container.
			var ids []string
			for id := range c.layers {
				ids = append(ids, id)
			}
			for id := range c.containers {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			id := ids[rng.IntN(len(ids))]
			count := func(d int) {
				if l := c.layers[id]; l != nil {
					l.mounts += d
				} else {
					c.containers[id].mounts += d
				}
			}
			held := 0
			if l := c.layers[id]; l != nil {
				held = l.mounts
			} else {
				held = c.containers[id].mounts
			}
			if held > 0 && rng.IntN(2) == 0 {
				if lr.op("unmount"+prefix, nil, func() error { _, err := s.Unmount(id, false); return err }) == nil {
					count(-1)
				}
			} else if lr.op("mount"+prefix, nil, func() error { _, err := s.Mount(id, ""); return err }) == nil {
				count(1)
			}
		case r < 90:
			lr.deleteSome(c, rng, prefix)
		default:
			lr.op("list"+prefix, nil, func() error {
				if _, err := s.Layers(); err != nil {
					return err
				}
				if _, err := s.Images(); err != nil {
					return err
				}
				_, err := s.Containers()
				return err
			})
		}
	}
}

// deleteSome deletes one of the client's containers, images or layers
// (unmounted first).
func (lr *loadRun) deleteSome(c *storeClient, rng *rand.Rand, prefix string) {
	s := c.s
	switch rng.IntN(3) {
	case 0:
		for _, ctr := range c.containers {
			for ; ctr.mounts > 0; ctr.mounts-- {
				lr.op("unmount"+prefix, nil, func() error { _, err := s.Unmount(ctr.id, false); return err })
			}
			if lr.op("delete-container"+prefix, nil, func() error { return s.DeleteContainer(ctr.id) }) == nil {
				delete(c.containers, ctr.id)
				c.images[ctr.image].containers--
				c.gone = append(c.gone, ctr.id)
			}
			return
		}
	case 1:
		for _, img := range c.images {
			if img.containers > 0 {
				continue
			}
			if lr.op("delete-image"+prefix, nil, func() error { return s.Delete(img.id) }) == nil {
				delete(c.images, img.id)
				c.layers[img.layer].image = ""
				c.gone = append(c.gone, img.id)
			}
			return
		}
	default:
		l := pickLayer(c.layers, rng, func(l *ownLayer) bool { return l.image == "" })
		if l == nil || len(c.layers) < 3 {
			return
		}
		for ; l.mounts > 0; l.mounts-- {
			lr.op("unmount"+prefix, nil, func() error { _, err := s.Unmount(l.id, false); return err })
		}
		if err := lr.op("delete-layer"+prefix, nil, func() error { return s.DeleteLayer(l.id) }); err == nil {
			delete(c.layers, l.id)
			c.gone = append(c.gone, l.id)
		} else if errors.Is(err, storage.ErrLayerHasChildren) {
			// Not expected: the client deleted what it made on the layer.
			var kids []string
			if ls, lerr := s.Layers(); lerr == nil {
				for _, x := range ls {
					if x.Parent == l.id {
						kids = append(kids, fmt.Sprintf("layer %s %v", x.ID, x.Names))
					}
				}
			}
			if cs, cerr := s.Containers(); cerr == nil {
				for _, x := range cs {
					if p, perr := s.Layer(x.LayerID); perr == nil && p.Parent == l.id {
						kids = append(kids, fmt.Sprintf("container %s %v", x.ID, x.Names))
					}
				}
			}
			out := ""
			if c.viaCtrd {
				out = lr.e.Ctr("-n", "cs-load", "snapshots", "--snapshotter", "cs", "ls").Stdout
			}
			lr.t.Logf("%s: layer %s (%s) has children the client does not know: %v\n%s", c.name, l.id, l.name, kids, out)
		}
	}
}

// cliClient drives the cs-snapshotter CLI (a process per command, through
// the daemon).
func (lr *loadRun) cliClient(c *cliClient, rng *rand.Rand) {
	run := func(args ...string) (string, error) {
		cmd := exec.Command(csBin, append([]string{"--graph", lr.e.CSRoot, "--run", lr.storeRun}, args...)...)
		cmd.Env = cleanEnv()
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.WaitDelay = 5 * time.Second
		err := cmd.Run()
		if err != nil {
			err = fmt.Errorf("cs-snapshotter %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return stdout.String(), err
	}
	dupCLI := func(err error) string {
		if strings.Contains(err.Error(), storage.ErrDuplicateName.Error()) {
			return "name taken"
		}
		return ""
	}
	for lr.running() {
		c.n++
		switch r := rng.IntN(100); {
		case r < 30 || len(c.layers) == 0:
			names := []string{"-n", fmt.Sprintf("%s-l%d", c.name, c.n)}
			if rng.IntN(3) == 0 {
				names = append(names, "-n", fmt.Sprintf("race-%d", rng.IntN(contested)))
			}
			var out string
			err := lr.op("cli create-layer", dupCLI, func() error {
				var err error
				out, err = run(append([]string{"create-layer"}, names...)...)
				return err
			})
			if err == nil {
				id := strings.Fields(out)[0]
				c.layers[id] = &ownLayer{id: id, name: names[1]}
			}
		case r < 45:
			l := pickLayer(c.layers, rng, nil)
			lr.op("cli add-names (contested)", nil, func() error {
				_, err := run("add-names", "-n", fmt.Sprintf("race-%d", rng.IntN(contested)), l.id)
				return err
			})
		case r < 60:
			l := pickLayer(c.layers, rng, nil)
			meta := fmt.Sprintf("%s meta %d", c.name, c.n)
			if lr.op("cli set-metadata", nil, func() error { _, err := run("set-metadata", "-m", meta, l.id); return err }) == nil {
				l.meta = meta
			}
		case r < 85:
			l := pickLayer(c.layers, rng, nil)
			if l.mounts > 0 && rng.IntN(2) == 0 {
				if lr.op("cli unmount", nil, func() error { _, err := run("unmount", l.id); return err }) == nil {
					l.mounts--
				}
			} else if lr.op("cli mount", nil, func() error { _, err := run("mount", l.id); return err }) == nil {
				l.mounts++
			}
		case r < 95:
			l := pickLayer(c.layers, rng, nil)
			if len(c.layers) < 3 {
				continue
			}
			for ; l.mounts > 0; l.mounts-- {
				lr.op("cli unmount", nil, func() error { _, err := run("unmount", l.id); return err })
			}
			if lr.op("cli delete-layer", nil, func() error { _, err := run("delete-layer", l.id); return err }) == nil {
				delete(c.layers, l.id)
				c.gone = append(c.gone, l.id)
			}
		default:
			lr.op("cli layers", nil, func() error { _, err := run("layers"); return err })
		}
	}
}

func (lr *loadRun) verify(apis []*storeClient, clis []*cliClient, viaCtrd []*storeClient) {
	t, e := lr.t, lr.e
	if len(lr.unexpected) > 0 {
		t.Errorf("unexpected errors under load:\n  %s", strings.Join(lr.unexpected, "\n  "))
	}
	check := func(s storage.Store, what string, layers map[string]*ownLayer, gone []string, sharedWant int) {
		for _, l := range layers {
			got, err := s.Layer(l.id)
			if err != nil {
				t.Errorf("%s: layer %s (%s) is gone: %v", what, l.id, l.name, err)
				continue
			}
			if !contains(got.Names, l.name) {
				t.Errorf("%s: layer %s lost its name %s: %v", what, l.id, l.name, got.Names)
			}
			if got.Metadata != l.meta {
				t.Errorf("%s: layer %s metadata %q, want %q (lost update)", what, l.id, got.Metadata, l.meta)
			}
			if n, err := s.Mounted(l.id); err != nil || n != l.mounts {
				t.Errorf("%s: layer %s mounted %d times (%v), want %d", what, l.id, n, err, l.mounts)
			}
		}
		for _, id := range gone {
			if s.Exists(id) {
				t.Errorf("%s: %s was deleted but exists", what, id)
			}
		}
	}
	s := lr.openStore("")
	defer s.Free()
	shared := 0
	for _, c := range apis {
		check(s, c.name, c.layers, c.gone, 0)
		shared += c.shared
		for _, img := range c.images {
			if got, err := s.Image(img.id); err != nil || !contains(got.Names, img.name) {
				t.Errorf("%s: image %s (%s): %+v, %v", c.name, img.id, img.name, got, err)
			}
		}
		for _, ctr := range c.containers {
			got, err := s.Container(ctr.id)
			if err != nil || !contains(got.Names, ctr.name) {
				t.Errorf("%s: container %s (%s): %+v, %v", c.name, ctr.id, ctr.name, got, err)
				continue
			}
			if n, err := s.Mounted(ctr.id); err != nil || n != ctr.mounts {
				t.Errorf("%s: container %s mounted %d times (%v), want %d", c.name, ctr.id, n, err, ctr.mounts)
			}
			if b, err := s.ContainerBigData(ctr.id, "state"); err != nil || string(b) != ctr.name {
				t.Errorf("%s: container %s big data %q, %v", c.name, ctr.id, b, err)
			}
		}
	}
	for _, c := range clis {
		check(s, c.name, c.layers, c.gone, 0)
	}
	if n, err := s.Mounted(lr.sharedLayer); err != nil || n != shared || int64(n) != lr.sharedHeld.Load() {
		t.Errorf("the shared layer is mounted %d times (%v); the clients hold %d mounts (%d counted)", n, err, shared, lr.sharedHeld.Load())
	}
	uniqueNames(t, s, "through the daemon")

	ds := lr.openStore("cs-load")
	defer ds.Free()
	for _, c := range viaCtrd {
		check(ds, c.name, c.layers, c.gone, 0)
		for _, img := range c.images {
			if got, err := ds.Image(img.id); err != nil || !contains(got.Names, img.name) {
				t.Errorf("%s: image %s (%s): %+v, %v", c.name, img.id, img.name, got, err)
			}
		}
	}
	uniqueNames(t, ds, "through containerd")

	// What the store holds survived containerd's GC; containerd's images
	// are whole.
	for i, st := range []storage.Store{s, ds} {
		report, err := st.Check(checkEverythingOld())
		if err != nil {
			t.Errorf("Check: %v", err)
			continue
		}
		if n := checkProblems(report); n > 0 {
			var msgs []string
			for _, m := range []map[string][]error{report.Layers, report.ROLayers, report.Images, report.ROImages, report.Containers} {
				for _, errs := range m {
					for _, err := range errs {
						msgs = append(msgs, err.Error())
					}
				}
			}
			sort.Strings(msgs)
			t.Errorf("Check after the load (%s): %d problems:\n  %s", []string{"through the daemon", "through containerd"}[i], n, strings.Join(msgs, "\n  "))
		}
	}
	for _, img := range lr.images {
		if img.state != stPresent {
			continue
		}
		r := e.Ctr("run", "--rm", "--snapshotter", e.Snapshotter, img.name, e.ID("after"), "cat", imagebuild.HelloPath)
		if r.Err != nil || r.Stdout != img.hello {
			t.Errorf("image %s after the load:\n%s", img.name, r)
		}
	}

	// Every mount let go: counts back to zero, nothing mounted.
	for _, c := range append(apis, viaCtrd...) {
		for ; c.shared > 0; c.shared-- {
			c.s.Unmount(lr.sharedLayer, false)
		}
		for _, l := range c.layers {
			for ; l.mounts > 0; l.mounts-- {
				if _, err := c.s.Unmount(l.id, false); err != nil {
					t.Errorf("unmount %s: %v", l.id, err)
				}
			}
		}
		for _, ctr := range c.containers {
			for ; ctr.mounts > 0; ctr.mounts-- {
				if _, err := c.s.Unmount(ctr.id, false); err != nil {
					t.Errorf("unmount %s: %v", ctr.id, err)
				}
			}
		}
	}
	for _, c := range clis {
		for _, l := range c.layers {
			for ; l.mounts > 0; l.mounts-- {
				if _, err := s.Unmount(l.id, false); err != nil {
					t.Errorf("unmount %s: %v", l.id, err)
				}
			}
		}
	}
	for _, root := range []string{lr.storeRun, filepath.Join(e.Dir, "ctrd-run")} {
		if mps, _ := mountsUnder(root); len(mps) > 0 {
			t.Errorf("mounts left under %s after every client unmounted: %v", root, mps)
		}
	}
	for _, st := range []storage.Store{s, ds} {
		layers, _ := st.Layers()
		for _, l := range layers {
			if l.MountCount != 0 {
				t.Errorf("layer %s still counts %d mounts after every client unmounted", l.ID, l.MountCount)
			}
		}
	}
}

// uniqueNames fails unless every name is held by one layer, image or
// container of its kind at most, and the name index (Lookup) finds the
// holder the listings show.
func uniqueNames(t *testing.T, s storage.Store, what string) {
	t.Helper()
	holders := map[string][]string{}
	layers, err := s.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		for _, n := range l.Names {
			holders["layer "+n] = append(holders["layer "+n], l.ID)
		}
	}
	images, err := s.Images()
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range images {
		for _, n := range img.Names {
			holders["image "+n] = append(holders["image "+n], img.ID)
		}
	}
	ctrs, err := s.Containers()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ctrs {
		for _, n := range c.Names {
			holders["container "+n] = append(holders["container "+n], c.ID)
		}
	}
	for n, ids := range holders {
		if len(ids) > 1 {
			t.Errorf("%s: %s is held by %d items: %v", what, n, len(ids), ids)
		}
	}
	for i := range contested {
		for _, kind := range []string{"layer race-%d", "image race-img-%d", "container race-ctr-%d"} {
			key := fmt.Sprintf(kind, i)
			name := key[strings.IndexByte(key, ' ')+1:]
			id, err := s.Lookup(name)
			if ids := holders[key]; len(ids) == 1 {
				if err != nil || id != ids[0] {
					t.Errorf("%s: Lookup(%s) = %s, %v; the listing has it on %s", what, name, id, err, ids[0])
				}
			} else if err == nil {
				t.Errorf("%s: Lookup(%s) = %s, but no listing has the name", what, name, id)
			}
		}
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func (lr *loadRun) report(ran time.Duration) {
	var b strings.Builder
	kinds := make([]string, 0, len(lr.stats))
	total, errs := 0, map[string]int{}
	var all latencies
	for k, st := range lr.stats {
		kinds = append(kinds, k)
		total += st.n
		for what, n := range st.errs {
			errs[what] += n
		}
		all = append(all, st.lat...)
	}
	sort.Strings(kinds)
	fmt.Fprintf(&b, "load, seed %d: %d clients for %v: %d operations (%.0f/s), %d containerd GC passes; errors by kind: %s; latency p50 %v p99 %v max %v\n",
		lr.seed, lr.nclients, ran.Round(time.Millisecond), total, float64(total)/ran.Seconds(), lr.gcPasses, formatCounts(errs),
		all.percentile(50).Round(time.Microsecond), all.percentile(99).Round(time.Microsecond), all.percentile(100).Round(time.Millisecond))
	fmt.Fprintf(&b, "  %-32s %6s %8s %10s %10s  %s\n", "operation", "count", "errors", "p50", "p99", "errors by kind")
	for _, k := range kinds {
		st := lr.stats[k]
		n := 0
		for _, c := range st.errs {
			n += c
		}
		fmt.Fprintf(&b, "  %-32s %6d %8d %10v %10v  %s\n", k, st.n, n, st.lat.percentile(50).Round(time.Microsecond), st.lat.percentile(99).Round(time.Microsecond), formatCounts(st.errs))
	}
	lr.t.Log(b.String())
}
