package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

// Crash tests: the daemon (or an embedded store) is killed with SIGKILL at
// seeded random moments while containerd imports images, the store applies
// large layers, bursts of layer and image changes run and blobs are
// ingested. After each kill the root must come back whole.
//
// What "whole" means (checked after every restart):
//
//   - The daemon starts: the database opens, the lock is taken over.
//   - Nothing is left half-made: no snapshot is marked incomplete, every
//     committed layer of the store carries complete digests (compressed
//     and uncompressed digest and size, and a tar-split or diff blob), a
//     writeable layer either all of them (its ApplyDiff finished) or none.
//   - The store's Check (CheckMost: layer digests reassembled from the
//     tar-split, layers mounted, big data read back) reports nothing, for
//     the store's layers and images and for containerd's.
//   - What finished before the kill is there: an image whose `ctr images
//     import` succeeded is listed and runs (`ctr run --rm`, its files
//     checked), a layer whose PutLayer/ApplyDiff returned has the digest
//     of the tar applied, big data and metadata read back as last set, a
//     blob containerd accepted reads back, a deletion that returned stays
//     deleted. What was under way may have happened or not, but not half:
//     an interrupted import must succeed when retried (containerd leaves
//     the work to a retry; that is the only partial state allowed), an
//     interrupted PutLayer leaves no layer or a complete one.
//   - A container running through all the kills still works (exec).
//   - After garbage collection (the store's GarbageCollect, with blob times
//     moved past its 10-minute grace period, then a containerd GC that
//     sweeps the daemon), with the daemon stopped, the disk matches the
//     database: no directory under snapshots/ or work/ without a record,
//     no record without its directory, no blob that neither containerd
//     nor a live store or daemon reference holds, no referenced blob
//     missing, no ingest left, no mount left.
//
// CS_CRASH_KILLS (default 5; 200 with CS_STRESS=1) sets the number of
// kills, CS_SEED the seed (the plan of each round, what runs and when the
// kill comes, follows from it; the interleaving of course does not).

// crash item states.
type itemState int

const (
	stAbsent itemState = iota
	stPresent
	stDoubt // an operation on it was cut short: either outcome is fine
)

func (s itemState) String() string { return [...]string{"absent", "present", "in doubt"}[s] }

// mLayer is what the test expects of a store layer, by name.
type mLayer struct {
	name      string
	state     itemState
	id        string        // when known
	want      digest.Digest // digest of the tar applied ("" for an empty writeable layer)
	wantDoubt digest.Digest // an ApplyDiff under way: this digest, or none
	big       bool
	meta      string // last metadata set ("" none)
	metaDoubt string // a SetMetadata under way: this value or meta
	bigData   map[string]digest.Digest
	bdDoubt   map[string]digest.Digest
	image     string // name of the image on it, if any
}

// mImage is a store image, by name.
type mImage struct {
	name  string
	state itemState
	top   string // layer name
	bd    digest.Digest
}

// mBlob is a blob ingested through containerd.
type mBlob struct {
	dgst  digest.Digest
	size  int64
	seed  uint64
	ref   string
	state itemState
}

// crashImage is one of the images containerd imports.
type crashImage struct {
	name, archive, hello string
	bigSum               string
	state                itemState
	doubtRm              bool // the doubt is about a removal
}

type crashRun struct {
	t    *testing.T
	e    *Env
	c    *client.Client
	seed uint64

	bigSize int64
	images  []*crashImage
	keeper  string

	mu      sync.Mutex
	layers  map[string]*mLayer
	simages map[string]*mImage
	blobs   map[digest.Digest]*mBlob
	seq     int
	digests map[[2]uint64]digest.Digest

	// in flight
	flight   map[int]string
	flightID int

	// figures
	kills, survived    int
	killedDuring       map[string]int
	opsDone, opsFailed map[string]int
	incompleteSeen     int
	retriedImports     int
	retriedIngests     int
	lost, damaged      []string
	leftovers          []string
	roundTimes         latencies
}

// TestCrashDaemon kills the daemon at seeded random moments while it is
// under load and checks it comes back whole; see the comment above.
func TestCrashDaemon(t *testing.T) {
	requireDaemon(t)
	kills := envInt(t, "CS_CRASH_KILLS", 5, 200)
	seed := envSeed(t)
	e := NewEnv(t)
	// The store's Check and mounts stand read-only views on containerd's
	// layers; a GC pass meanwhile cannot remove such a layer (it logs so)
	// and removes it at a later pass.
	e.ExpectContainerdLog("failed to remove snapshot", "cannot remove snapshot with child")
	cr := &crashRun{
		t: t, e: e, c: e.containerdClient(t), seed: seed,
		bigSize: int64(envInt(t, "CS_CRASH_LAYER_MB", 24, 48)) << 20,
		layers:  map[string]*mLayer{}, simages: map[string]*mImage{}, blobs: map[digest.Digest]*mBlob{},
		digests: map[[2]uint64]digest.Digest{}, flight: map[int]string{},
		killedDuring: map[string]int{}, opsDone: map[string]int{}, opsFailed: map[string]int{},
	}
	t.Logf("crash test: %d kills, seed %d (CS_SEED=%d CS_CRASH_KILLS=%d repeats this plan)", kills, seed, seed, kills)
	cr.setup()
	for round := 1; round <= kills; round++ {
		start := time.Now()
		cr.round(round)
		cr.roundTimes = append(cr.roundTimes, time.Since(start))
		if t.Failed() && !stressMode() {
			break
		}
	}
	cr.report()
}

// setup builds the images (each with its own layers: no two chains share
// a layer's content) and starts a container that runs through all kills.
func (cr *crashRun) setup() {
	t, e := cr.t, cr.e
	n := 3
	for i := range n {
		name := fmt.Sprintf("docker.io/library/cs-crash-%d:latest", i)
		archive := filepath.Join(e.Dir, fmt.Sprintf("crash-%d.tar", i))
		hello := fmt.Sprintf("crash image %d\n", i)
		size := 6<<20 + 4096*(i+1)
		if _, err := imagebuild.BuildFile(archive, imagebuild.Options{Name: name, Layers: 1, Hello: hello, BigFileSize: size}); err != nil {
			t.Fatal(err)
		}
		cr.images = append(cr.images, &crashImage{name: name, archive: archive, hello: hello,
			bigSum: digest.FromBytes(imagebuild.BigFileData(size)).Encoded()})
	}
	e.ImportImage(imageArchive)
	cr.keeper = e.ID("keeper")
	e.MustCtr("run", "-d", "--snapshotter", e.Snapshotter, imageName, cr.keeper, "sleep", "100000")
}

func (cr *crashRun) openStore() storage.Store {
	cr.t.Helper()
	s, err := storage.GetStore(storage.StoreOptions{GraphRoot: cr.e.CSRoot, RunRoot: filepath.Join(cr.e.Dir, "crash-store-run")})
	if err != nil {
		cr.t.Fatalf("opening the store through the daemon: %v", err)
	}
	return s
}

// op runs f as an operation of kind on what, tracked as in flight.
func (cr *crashRun) op(kind, what string, f func() error) error {
	cr.mu.Lock()
	cr.flightID++
	id := cr.flightID
	cr.flight[id] = kind
	cr.mu.Unlock()
	start := time.Now()
	err := f()
	cr.t.Logf("  %s %s: %v (%v)", kind, what, err, time.Since(start).Round(time.Millisecond))
	cr.mu.Lock()
	delete(cr.flight, id)
	if err != nil {
		cr.opsFailed[kind]++
	} else {
		cr.opsDone[kind]++
	}
	cr.mu.Unlock()
	return err
}

func (cr *crashRun) digest(seed uint64, size int64) digest.Digest {
	cr.mu.Lock()
	d, ok := cr.digests[[2]uint64{seed, uint64(size)}]
	cr.mu.Unlock()
	if !ok {
		d = layerDigest(seed, size)
		cr.mu.Lock()
		cr.digests[[2]uint64{seed, uint64(size)}] = d
		cr.mu.Unlock()
	}
	return d
}

func (cr *crashRun) nextSeq() int {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	cr.seq++
	return cr.seq
}

// round runs one kill.
func (cr *crashRun) round(n int) {
	t, e := cr.t, cr.e
	rng := rand.New(rand.NewPCG(cr.seed, uint64(n)))
	s := cr.openStore()

	// Workloads at once: containerd's (imports and removals, blobs
	// ingested through containerd; removals run containerd's GC) and the
	// store's (large layers, bursts, big data).
	all := []string{"import", "blob", "layer", "burst", "bigdata"}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	kinds := all[:1+rng.IntN(len(all))]
	delay := time.Duration(50+rng.IntN(1500)) * time.Millisecond
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, k := range kinds {
		wrng := rand.New(rand.NewPCG(cr.seed, uint64(n)<<8|uint64(i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			cr.work(k, s, wrng, stop)
		}()
	}
	time.Sleep(delay)
	cr.mu.Lock()
	var during []string
	for _, k := range cr.flight {
		during = append(during, k)
	}
	cr.mu.Unlock()
	sort.Strings(during)
	e.KillDaemon()
	close(stop)
	// The database is free now: count what the kill left half-made.
	if a, err := auditRoot(e.CSRoot, nil, nil); err != nil {
		t.Fatalf("round %d: reading the database after the kill: %v", n, err)
	} else {
		cr.incompleteSeen += len(a.Incomplete)
	}
	e.StartDaemon()
	cr.kills++
	for _, k := range during {
		cr.killedDuring[k]++
	}
	if len(during) == 0 {
		cr.killedDuring["(between operations)"]++
	}
	t.Logf("round %d: workloads %v, killed after %v during %v", n, kinds, delay, during)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("round %d: workloads still running 3 minutes after the kill (operations in flight: %v)", n, cr.flight)
	}
	s.Free()

	problems := cr.verify(n)
	if len(problems) == 0 {
		cr.survived++
		return
	}
	for _, p := range problems {
		t.Errorf("round %d (seed %d): %s", n, cr.seed, p)
	}
}

// work runs one workload until stop (or until it has done its part).
func (cr *crashRun) work(kind string, s storage.Store, rng *rand.Rand, stop chan struct{}) {
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	loop := func(step func()) {
		for !stopped() {
			start := time.Now()
			step()
			if time.Since(start) < 5*time.Millisecond {
				time.Sleep(20 * time.Millisecond) // failing at once: the daemon is down
			}
		}
	}
	switch kind {
	case "import":
		loop(func() { cr.importWork(rng) })
	case "layer":
		loop(func() { cr.bigLayerWork(s, rng) })
	case "burst":
		loop(func() { cr.burstStep(s, rng) })
	case "blob":
		loop(func() { cr.blobStep(rng) })
	case "bigdata":
		loop(func() { cr.bigDataStep(s, rng) })
	}
}

// importWork imports an image containerd does not have, or removes one it
// has.
func (cr *crashRun) importWork(rng *rand.Rand) {
	img := cr.images[rng.IntN(len(cr.images))]
	cr.mu.Lock()
	st := img.state
	cr.mu.Unlock()
	if st == stDoubt {
		time.Sleep(20 * time.Millisecond)
		return // settled after the restart
	}
	if st == stPresent {
		err := cr.op("image-rm", img.name, func() error { return cr.e.Ctr("images", "rm", "--sync", img.name).Err })
		cr.mu.Lock()
		img.state, img.doubtRm = stAbsent, false
		if err != nil {
			img.state, img.doubtRm = stDoubt, true
		}
		cr.mu.Unlock()
		return
	}
	err := cr.op("import", img.name, func() error {
		return cr.e.Ctr("images", "import", "--snapshotter", cr.e.Snapshotter, img.archive).Err
	})
	cr.mu.Lock()
	img.state = stPresent
	if err != nil {
		img.state, img.doubtRm = stDoubt, false
	}
	cr.mu.Unlock()
}

// bigLayerWork applies one large layer through the daemon (PutLayer, or
// CreateLayer then ApplyDiff), dropping the oldest when two are kept.
func (cr *crashRun) bigLayerWork(s storage.Store, rng *rand.Rand) {
	cr.mu.Lock()
	var bigs []*mLayer
	for _, l := range cr.layers {
		if l.big && l.state == stPresent {
			bigs = append(bigs, l)
		}
	}
	cr.mu.Unlock()
	sort.Slice(bigs, func(i, j int) bool { return bigs[i].name < bigs[j].name })
	if len(bigs) >= 2 {
		cr.deleteLayer(s, bigs[0])
	}
	seq := cr.nextSeq()
	name := fmt.Sprintf("big-%06d", seq)
	seed := uint64(seq)
	size := cr.bigSize - int64(rng.IntN(1<<20))
	want := cr.digest(seed, size)
	l := &mLayer{name: name, big: true, state: stDoubt, wantDoubt: want}
	cr.mu.Lock()
	cr.layers[name] = l
	cr.mu.Unlock()
	if rng.IntN(2) == 0 {
		diff := layerStream(seed, size)
		defer diff.Close()
		var got *storage.Layer
		err := cr.op("putlayer", name, func() error {
			var err error
			got, _, err = s.PutLayer("", "", []string{name}, "", false, nil, diff)
			return err
		})
		cr.mu.Lock()
		if err == nil {
			l.state, l.id, l.want, l.wantDoubt = stPresent, got.ID, want, ""
		}
		cr.mu.Unlock()
		return
	}
	var got *storage.Layer
	err := cr.op("create-layer", name, func() error {
		var err error
		got, err = s.CreateLayer("", "", []string{name}, "", true, nil)
		return err
	})
	if err != nil {
		return
	}
	cr.mu.Lock()
	l.state, l.id = stPresent, got.ID
	cr.mu.Unlock()
	diff := layerStream(seed, size)
	defer diff.Close()
	err = cr.op("applydiff", name, func() error {
		_, err := s.ApplyDiff(got.ID, diff)
		return err
	})
	cr.mu.Lock()
	if err == nil {
		l.want, l.wantDoubt = want, ""
	} else {
		// An interrupted ApplyDiff: the daemon removes the layer at its
		// next start, as containers/storage deletes a layer left
		// incomplete; or the apply finished.
		l.state = stDoubt
	}
	cr.mu.Unlock()
}

// deleteLayer deletes a layer (and its image first).
func (cr *crashRun) deleteLayer(s storage.Store, l *mLayer) {
	cr.mu.Lock()
	imgName := l.image
	cr.mu.Unlock()
	if imgName != "" {
		cr.mu.Lock()
		img := cr.simages[imgName]
		cr.mu.Unlock()
		if img != nil && img.state != stAbsent {
			err := cr.op("delete-image", img.name, func() error {
				// Delete: the record only (DeleteImage with commit false
				// deletes nothing, with true it takes the layer along).
				err := s.Delete(img.name)
				if errors.Is(err, storage.ErrImageUnknown) || errors.Is(err, storage.ErrNotAnImage) || errors.Is(err, storage.ErrNotAnID) {
					err = nil // gone already (an earlier removal in doubt)
				}
				return err
			})
			cr.mu.Lock()
			img.state = stAbsent
			if err != nil {
				img.state = stDoubt
			}
			cr.mu.Unlock()
			if err != nil {
				return
			}
		}
	}
	err := cr.op("delete-layer", l.name, func() error {
		err := s.DeleteLayer(l.id)
		if errors.Is(err, storage.ErrLayerUnknown) || errors.Is(err, storage.ErrNotALayer) {
			err = nil
		}
		return err
	})
	cr.mu.Lock()
	l.state = stAbsent
	if err != nil {
		l.state = stDoubt
	}
	cr.mu.Unlock()
}

// burstStep is one step of a burst of small changes: a layer put
// (Prepare and Commit), a writeable layer made, an image on a layer, a
// metadata update, a layer (and its image) deleted.
func (cr *crashRun) burstStep(s storage.Store, rng *rand.Rand) {
	cr.mu.Lock()
	var present []*mLayer
	for _, l := range cr.layers {
		if !l.big && l.state == stPresent && l.want != "" {
			present = append(present, l)
		}
	}
	cr.mu.Unlock()
	sort.Slice(present, func(i, j int) bool { return present[i].name < present[j].name })
	pick := func() *mLayer { return present[rng.IntN(len(present))] }
	if len(present) >= 40 {
		// Bounded, so that the rounds of a long run stay as quick.
		cr.deleteLayer(s, pick())
		return
	}
	switch r := rng.IntN(10); {
	case r < 4 || len(present) == 0:
		seq := cr.nextSeq()
		name := fmt.Sprintf("tiny-%06d", seq)
		size := int64(1 + rng.IntN(64<<10))
		want := cr.digest(uint64(seq), size)
		writeable := rng.IntN(3) == 0
		l := &mLayer{name: name, state: stDoubt, wantDoubt: want}
		cr.mu.Lock()
		cr.layers[name] = l
		cr.mu.Unlock()
		diff := layerStream(uint64(seq), size)
		defer diff.Close()
		var got *storage.Layer
		err := cr.op("burst-putlayer", name, func() error {
			var err error
			got, _, err = s.PutLayer("", "", []string{name}, "", writeable, nil, diff)
			return err
		})
		if err == nil {
			cr.mu.Lock()
			l.state, l.id, l.want, l.wantDoubt = stPresent, got.ID, want, ""
			cr.mu.Unlock()
		}
	case r < 6:
		l := pick()
		cr.mu.Lock()
		busy := l.image != ""
		cr.mu.Unlock()
		if busy {
			return
		}
		name := l.name + "-img"
		data, bd := blobData(uint64(cr.nextSeq()), int64(1+rng.IntN(8<<10)))
		img := &mImage{name: name, state: stDoubt, top: l.name, bd: bd}
		cr.mu.Lock()
		cr.simages[name] = img
		l.image = name
		cr.mu.Unlock()
		err := cr.op("burst-create-image", name, func() error {
			_, err := s.CreateImage("", []string{name}, l.id, "", &storage.ImageOptions{
				BigData: []storage.ImageBigDataOption{{Key: "config", Data: data}},
			})
			return err
		})
		if err == nil {
			cr.mu.Lock()
			img.state = stPresent
			cr.mu.Unlock()
		}
	case r < 8:
		l := pick()
		value := fmt.Sprintf("meta %d", cr.nextSeq())
		cr.mu.Lock()
		l.metaDoubt = value
		cr.mu.Unlock()
		err := cr.op("burst-set-metadata", l.name, func() error { return s.SetMetadata(l.id, value) })
		if err == nil {
			cr.mu.Lock()
			l.meta, l.metaDoubt = value, ""
			cr.mu.Unlock()
		}
	default:
		cr.deleteLayer(s, pick())
	}
}

// bigDataStep sets a big data item of a store layer.
func (cr *crashRun) bigDataStep(s storage.Store, rng *rand.Rand) {
	{
		cr.mu.Lock()
		var present []*mLayer
		for _, l := range cr.layers {
			if l.state == stPresent && l.want != "" {
				present = append(present, l)
			}
		}
		cr.mu.Unlock()
		if len(present) == 0 {
			time.Sleep(20 * time.Millisecond)
			return
		}
		sort.Slice(present, func(i, j int) bool { return present[i].name < present[j].name })
		l := present[rng.IntN(len(present))]
		key := fmt.Sprintf("key-%d", rng.IntN(3))
		data, d := blobData(uint64(cr.nextSeq()), int64(1<<20+rng.IntN(3<<20)))
		cr.mu.Lock()
		if l.bdDoubt == nil {
			l.bdDoubt = map[string]digest.Digest{}
		}
		l.bdDoubt[key] = d
		cr.mu.Unlock()
		err := cr.op("set-layer-bigdata", l.name+"/"+key, func() error { return s.SetLayerBigData(l.id, key, bytes.NewReader(data)) })
		if err == nil {
			cr.mu.Lock()
			if l.bigData == nil {
				l.bigData = map[string]digest.Digest{}
			}
			l.bigData[key] = d
			delete(l.bdDoubt, key)
			cr.mu.Unlock()
		}
	}
}

// blobStep ingests a blob through containerd (held by a gc.root label);
// the oldest goes when three are kept.
func (cr *crashRun) blobStep(rng *rand.Rand) {
	ctx, cancel := ctrdCtx("default", time.Minute)
	defer cancel()
	cs := cr.c.ContentStore()
	cr.mu.Lock()
	var present []*mBlob
	for _, b := range cr.blobs {
		if b.state == stPresent {
			present = append(present, b)
		}
	}
	cr.mu.Unlock()
	if len(present) >= 3 {
		sort.Slice(present, func(i, j int) bool { return present[i].seed < present[j].seed })
		b := present[0]
		err := cr.op("blob-delete", b.dgst.String(), func() error { return cs.Delete(ctx, b.dgst) })
		cr.mu.Lock()
		b.state = stAbsent
		if err != nil {
			b.state = stDoubt
		}
		cr.mu.Unlock()
		return
	}
	seed := uint64(cr.nextSeq())
	size := int64(8<<20 + rng.IntN(8<<20))
	data, d := blobData(seed, size)
	b := &mBlob{dgst: d, size: size, seed: seed, ref: fmt.Sprintf("crash-ingest-%d", seed), state: stDoubt}
	cr.mu.Lock()
	cr.blobs[d] = b
	cr.mu.Unlock()
	err := cr.op("ingest", b.ref, func() error {
		return content.WriteBlob(ctx, cs, b.ref, bytes.NewReader(data),
			ocispec.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: size},
			content.WithLabels(map[string]string{"containerd.io/gc.root": "crash-test"}))
	})
	if err == nil {
		cr.mu.Lock()
		b.state = stPresent
		cr.mu.Unlock()
	}
}

// verify checks the restarted daemon and settles what was in doubt.
func (cr *crashRun) verify(round int) []string {
	e := cr.e
	var lost, damaged, left []string
	lose := func(f string, a ...any) { lost = append(lost, fmt.Sprintf(f, a...)) }
	damage := func(f string, a ...any) { damaged = append(damaged, fmt.Sprintf(f, a...)) }
	defer func() {
		cr.lost = append(cr.lost, lost...)
		cr.damaged = append(cr.damaged, damaged...)
		cr.leftovers = append(cr.leftovers, left...)
	}()

	// Nothing half-made is visible as complete.
	client := e.DialDaemon()
	for name, info := range client.Snapshots(cr.t) {
		l := info.Labels
		if l[cslabels.Incomplete] != "" || strings.HasPrefix(name, "cs.incomplete/") {
			damage("snapshot %s is still marked incomplete after the restart", name)
		}
		if l[cslabels.Owned] == "" || strings.HasPrefix(name, "cs.view/") || strings.HasPrefix(name, "cs.mount/") {
			continue
		}
		complete := l[cslabels.UncompressedDigest] != "" && l[cslabels.CompressedDigest] != "" && l[cslabels.UncompressedSize] != "" &&
			(l[cslabels.TarSplit] != "" || l[cslabels.DiffBlob] != "")
		none := l[cslabels.UncompressedDigest] == "" && l[cslabels.TarSplit] == "" && l[cslabels.DiffBlob] == ""
		if info.Kind.String() == "Committed" && !complete || info.Kind.String() != "Committed" && !complete && !none {
			damage("store layer %s (%s) has partial records: %v", name, info.Kind, l)
		}
	}

	s := cr.openStore()
	closed := false
	defer func() {
		if !closed {
			s.Free()
		}
	}()
	age := 100000 * time.Hour
	opts := storage.CheckMost()
	opts.LayerUnreferencedMaximumAge = &age
	// containerd finishes cleaning up after an interrupted import on its
	// own; let it, so Check does not race with its removals.
	if err := containerdSweep(cr.c); err != nil {
		damage("containerd GC: %v", err)
	}
	report, err := s.Check(opts)
	if err != nil {
		damage("Check: %v", err)
	}
	for what, m := range map[string]map[string][]error{"layer": report.Layers, "containerd layer": report.ROLayers, "image": report.Images, "containerd image": report.ROImages, "container": report.Containers} {
		for id, errs := range m {
			for _, err := range errs {
				damage("Check: %s %s: %v", what, id, err)
			}
		}
	}

	// Layers, images and blobs, against what the test knows.
	layers, err := s.Layers()
	if err != nil {
		damage("Layers: %v", err)
	}
	owners := map[string][]string{}
	byName := map[string]storage.Layer{}
	for _, l := range layers {
		for _, n := range l.Names {
			owners[n] = append(owners[n], l.ID)
			byName[n] = l
		}
	}
	for n, ids := range owners {
		if len(ids) > 1 {
			damage("name %s is held by %d layers: %v", n, len(ids), ids)
		}
	}
	// The workloads are done: no locking needed from here.
	for _, m := range cr.layers {
		got, ok := byName[m.name]
		switch m.state {
		case stAbsent:
			if ok {
				lose("layer %s was deleted but is back (%s)", m.name, got.ID)
			}
			continue
		case stPresent:
			if !ok {
				lose("layer %s (%s) is gone", m.name, m.id)
				m.state = stAbsent
				continue
			}
			if got.UncompressedDigest != m.want && !(m.wantDoubt != "" && got.UncompressedDigest == m.wantDoubt) {
				lose("layer %s: diff digest %q, want %q", m.name, got.UncompressedDigest, m.want)
			}
		case stDoubt:
			if !ok {
				m.state = stAbsent
				continue
			}
			if d := got.UncompressedDigest; d != "" && d != m.want && d != m.wantDoubt {
				damage("layer %s left by an interrupted operation has diff digest %s, want %q or %q", m.name, d, m.want, m.wantDoubt)
			}
			m.state, m.id, m.want = stPresent, got.ID, got.UncompressedDigest
		}
		m.wantDoubt = ""
		if got.Metadata != m.meta && !(m.metaDoubt != "" && got.Metadata == m.metaDoubt) {
			lose("layer %s: metadata %q, want %q", m.name, got.Metadata, m.meta)
		}
		m.meta, m.metaDoubt = got.Metadata, ""
		for key, want := range m.bigData {
			if dd, doubt := m.bdDoubt[key]; doubt && cr.bigDataIs(s, m, key, dd) {
				m.bigData[key] = dd
				continue
			}
			if !cr.bigDataIs(s, m, key, want) {
				lose("layer %s: big data %q does not read back as %s", m.name, key, want)
			}
		}
		for key, dd := range m.bdDoubt {
			if _, known := m.bigData[key]; !known && cr.bigDataIs(s, m, key, dd) {
				if m.bigData == nil {
					m.bigData = map[string]digest.Digest{}
				}
				m.bigData[key] = dd
			}
		}
		m.bdDoubt = nil
	}
	for _, m := range cr.simages {
		img, err := s.Image(m.name)
		switch {
		case err != nil && m.state == stPresent:
			lose("image %s is gone: %v", m.name, err)
			m.state = stAbsent
		case err == nil && m.state == stAbsent:
			lose("image %s was deleted but is back", m.name)
		case err == nil:
			if top := cr.layers[m.top]; top == nil || img.TopLayer != top.id {
				damage("image %s: top layer %s, want layer %s", m.name, img.TopLayer, m.top)
			}
			if b, err := s.ImageBigData(img.ID, "config"); err != nil || digest.FromBytes(b) != m.bd {
				lose("image %s: big data reads %d bytes (%v), want %s", m.name, len(b), err, m.bd)
			}
			m.state = stPresent
		default:
			m.state = stAbsent
		}
		if m.state == stAbsent {
			if top := cr.layers[m.top]; top != nil && top.image == m.name {
				top.image = ""
			}
		}
	}
	ctx, cancel := ctrdCtx("default", 2*time.Minute)
	defer cancel()
	for _, b := range cr.blobs {
		info, err := cr.c.ContentStore().Info(ctx, b.dgst)
		switch {
		case err != nil && b.state == stPresent:
			lose("blob %s containerd accepted is gone: %v", b.dgst, err)
			b.state = stAbsent
		case err == nil && b.state == stAbsent:
			// Deleted from containerd's records; the daemon's copy goes at
			// the next GC. Not visible through containerd: fine.
			lose("blob %s containerd deleted is listed again", b.dgst)
		case err == nil:
			data, rerr := content.ReadBlob(ctx, cr.c.ContentStore(), ocispec.Descriptor{Digest: b.dgst, Size: info.Size})
			if rerr != nil || digest.FromBytes(data) != b.dgst {
				if b.state == stPresent {
					lose("blob %s reads back wrong (%d bytes, %v)", b.dgst, len(data), rerr)
				} else {
					damage("blob %s of an interrupted ingest is listed but reads back wrong (%d bytes, %v)", b.dgst, len(data), rerr)
				}
			}
			b.state = stPresent
		default:
			// Not committed. containerd keeps an interrupted ingest to be
			// resumed: resuming it must give the blob.
			if b.state == stDoubt {
				if _, serr := cr.c.ContentStore().Status(ctx, b.ref); serr == nil {
					data, _ := blobData(b.seed, b.size)
					cr.retriedIngests++
					if werr := content.WriteBlob(ctx, cr.c.ContentStore(), b.ref, bytes.NewReader(data),
						ocispec.Descriptor{MediaType: "application/octet-stream", Digest: b.dgst, Size: b.size},
						content.WithLabels(map[string]string{"containerd.io/gc.root": "crash-test"})); werr != nil {
						damage("resuming the ingest %s interrupted by the kill: %v", b.ref, werr)
					} else {
						b.state = stPresent
						continue
					}
				}
			}
			b.state = stAbsent
		}
	}

	// containerd's images: settle interrupted imports and removals (an
	// interrupted import is retried and must succeed), then every image
	// containerd has must run.
	listed := map[string]bool{}
	for _, n := range strings.Fields(e.MustCtr("images", "ls", "-q")) {
		listed[n] = true
	}
	for _, img := range cr.images {
		switch {
		case img.state == stPresent && !listed[img.name]:
			lose("image %s, imported, is no longer listed by containerd", img.name)
			img.state = stAbsent
		case img.state == stDoubt && img.doubtRm:
			img.state = stAbsent
			if listed[img.name] {
				img.state = stPresent
			}
		case img.state == stDoubt:
			r := e.Ctr("images", "import", "--snapshotter", e.Snapshotter, img.archive)
			cr.retriedImports++
			if r.Err != nil {
				damage("retrying the import of %s interrupted by the kill failed:\n%s", img.name, r)
				img.state = stAbsent
			} else {
				img.state = stPresent
			}
		}
		if img.state != stPresent {
			continue
		}
		r := e.Ctr("run", "--rm", "--snapshotter", e.Snapshotter, img.name, e.ID("crashrun"), "sh", "-c",
			"cat "+imagebuild.HelloPath+"; sha256sum "+imagebuild.BigFilePath)
		want := img.hello + img.bigSum + "  " + imagebuild.BigFilePath + "\n"
		if r.Err != nil || r.Stdout != want {
			lose("image %s does not run as imported:\n%s", img.name, r)
		}
	}

	// The container running through the kills.
	if r := e.Ctr("tasks", "exec", "--exec-id", e.ID("x"), cr.keeper, "sh", "-c",
		fmt.Sprintf("echo %d > /tmp/round && cat /tmp/round %s", round, imagebuild.HelloPath)); r.Err != nil ||
		r.Stdout != fmt.Sprintf("%d\n%s", round, imagebuild.HelloText) {
		lose("the container running through the kills no longer works:\n%s", r)
	}

	// Garbage collection, then the disk against the records.
	if err := ageBlobs(e.CSRoot); err != nil {
		damage("ageing blobs: %v", err)
	}
	if err := s.GarbageCollect(); err != nil {
		damage("store GarbageCollect: %v", err)
	}
	if err := containerdSweep(cr.c); err != nil {
		damage("containerd GC: %v", err)
	}
	ctrBlobs, ctrSnaps, err := containerdHolds(cr.c)
	if err != nil {
		damage("listing containerd's records: %v", err)
	}
	s.Free()
	closed = true
	e.StopDaemon()
	a, err := auditRoot(e.CSRoot, ctrBlobs, ctrSnaps)
	if err != nil {
		damage("audit: %v", err)
	}
	mps, _ := mountsUnder(e.Dir)
	for _, mp := range mps {
		if !strings.Contains(mp, "/"+cr.keeper+"/") {
			a.Mounts = append(a.Mounts, mp)
		}
	}
	left = a.problems()
	e.StartDaemon()
	cr.t.Logf("round %d: %d snapshots, %d blobs on disk; %d lost, %d damaged, %d left after gc", round, a.Snapshots, a.Blobs, len(lost), len(damaged), len(left))
	return append(append(append([]string{}, lost...), damaged...), left...)
}

func (cr *crashRun) bigDataIs(s storage.Store, m *mLayer, key string, want digest.Digest) bool {
	rc, err := s.LayerBigData(m.id, key)
	if err != nil {
		return false
	}
	defer rc.Close()
	d := digest.SHA256.Digester()
	if _, err := io.Copy(d.Hash(), rc); err != nil {
		return false
	}
	return d.Digest() == want
}

func (cr *crashRun) report() {
	t := cr.t
	var b strings.Builder
	fmt.Fprintf(&b, "crash test, seed %d: %d kills, %d survived whole (nothing lost, damaged or left)\n", cr.seed, cr.kills, cr.survived)
	fmt.Fprintf(&b, "  data lost: %d, damage found: %d, left after gc: %d\n", len(cr.lost), len(cr.damaged), len(cr.leftovers))
	fmt.Fprintf(&b, "  half-made layers found after kills (removed at restart): %d; interrupted imports retried: %d; interrupted ingests resumed: %d\n", cr.incompleteSeen, cr.retriedImports, cr.retriedIngests)
	fmt.Fprintf(&b, "  kills during: %s\n", formatCounts(cr.killedDuring))
	fmt.Fprintf(&b, "  operations completed: %s\n", formatCounts(cr.opsDone))
	fmt.Fprintf(&b, "  operations cut short: %s\n", formatCounts(cr.opsFailed))
	fmt.Fprintf(&b, "  round time p50 %v, max %v", cr.roundTimes.percentile(50).Round(time.Millisecond), cr.roundTimes.percentile(100).Round(time.Millisecond))
	t.Log(b.String())
}

func checkProblems(r storage.CheckReport) int {
	n := 0
	for _, m := range []map[string][]error{r.Layers, r.ROLayers, r.Images, r.ROImages, r.Containers} {
		for _, errs := range m {
			n += len(errs)
		}
	}
	return n
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// TestCrashEmbeddedStore kills a process using the store embedded (the
// cs-snapshotter CLI with no daemon: it opens the root in-process) in the
// middle of importing a large layer, applying one to a writeable layer, or
// writing big data; reopening the root must remove what was left
// incomplete, Check must be clean, everything that finished must be there,
// and after GarbageCollect the disk must match the records.
// CS_CRASH_EMBEDDED_KILLS: number of kills (default 5; 50 with CS_STRESS=1).
func TestCrashEmbeddedStore(t *testing.T) {
	requireSetup(t)
	requireDaemon(t)
	kills := envInt(t, "CS_CRASH_EMBEDDED_KILLS", 5, 50)
	seed := envSeed(t)
	dir := t.TempDir()
	root, run := filepath.Join(dir, "root"), filepath.Join(dir, "run")
	open := func() storage.Store {
		t.Helper()
		s, err := storage.GetStore(storage.StoreOptions{GraphRoot: root, RunRoot: run})
		if err != nil {
			t.Fatalf("opening the store embedded: %v", err)
		}
		return s
	}
	// Two layer files, 32 MiB (PutLayer: import-layer; ApplyDiff:
	// applydiff) and their digests.
	const size = 32 << 20
	files := make([]string, 2)
	wants := make([]digest.Digest, 2)
	for i := range files {
		files[i] = filepath.Join(dir, fmt.Sprintf("layer-%d.tar", i))
		f, err := os.Create(files[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := layerTar(f, uint64(1000+i), size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		wants[i] = layerDigest(uint64(1000+i), size)
	}
	bdFile := filepath.Join(dir, "bigdata")
	bd, bdDigest := blobData(77, 24<<20)
	if err := os.WriteFile(bdFile, bd, 0o644); err != nil {
		t.Fatal(err)
	}

	type layerWant struct {
		id   string
		want digest.Digest
	}
	present := map[string]layerWant{} // name -> layer
	var bigDataLayer string           // a layer whose "bd" item was set
	var killedMid, finished, incomplete int
	cli := func(args ...string) *exec.Cmd {
		cmd := exec.Command(csBin, append([]string{"--graph", root, "--run", run}, args...)...)
		cmd.Env = cleanEnv()
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		return cmd
	}
	// A base layer to put big data on and to parent writeable layers.
	if out, err := cli("create-layer", "-n", "base").CombinedOutput(); err != nil {
		t.Fatalf("create-layer: %v\n%s", err, out)
	}
	command := func(kind, name string, f int) *exec.Cmd {
		switch kind {
		case "import-layer":
			return cli("import-layer", "-n", name, "-f", files[f])
		case "applydiff":
			out, err := cli("create-layer", "-n", name).Output()
			if err != nil {
				t.Fatalf("create-layer: %v", err)
			}
			return cli("applydiff", "-f", files[f], strings.Fields(string(out))[0])
		default:
			return cli("set-layer-data", "-f", bdFile, "base", "bd")
		}
	}
	// How long each operation takes here, so kills land within it.
	took := map[string]time.Duration{}
	for i, kind := range []string{"import-layer", "applydiff", "set-layer-data"} {
		name := fmt.Sprintf("calibrate-%d", i)
		cmd := command(kind, name, i%2)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", kind, err, out)
		}
		took[kind] = time.Since(start)
		if kind != "set-layer-data" {
			present[name] = layerWant{want: wants[i%2]}
		} else {
			bigDataLayer = "base"
		}
	}
	t.Logf("uninterrupted: %v", took)
	for round := 1; round <= kills; round++ {
		rng := rand.New(rand.NewPCG(seed, uint64(round)))
		name := fmt.Sprintf("emb-%d", round)
		kind := []string{"import-layer", "applydiff", "set-layer-data"}[rng.IntN(3)]
		f := rng.IntN(2)
		cmd := command(kind, name, f)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		delay := time.Duration(rng.Float64() * 1.1 * float64(took[kind]))
		var err error
		select {
		case err = <-done:
			finished++
		case <-time.After(delay):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			err = <-done
			killedMid++
		}
		ok := err == nil
		t.Logf("round %d: %s killed after %v: finished=%v %s", round, kind, delay, ok, strings.TrimSpace(stderr.String()))

		// What the kill left, read before the root is reopened.
		if a, err := auditRoot(root, nil, nil); err != nil {
			t.Fatalf("round %d: reading the database after the kill: %v", round, err)
		} else {
			incomplete += len(a.Incomplete)
		}
		s := open()
		if ok {
			switch kind {
			case "import-layer", "applydiff":
				present[name] = layerWant{want: wants[f]}
			case "set-layer-data":
				bigDataLayer = "base"
			}
		}
		layers, err := s.Layers()
		if err != nil {
			t.Fatal(err)
		}
		found := map[string]storage.Layer{}
		for _, l := range layers {
			for _, n := range l.Names {
				found[n] = l
			}
		}
		for n, w := range present {
			if l, ok := found[n]; !ok {
				t.Errorf("round %d: layer %s, which was finished, is gone", round, n)
			} else if l.UncompressedDigest != w.want {
				t.Errorf("round %d: layer %s has diff digest %q, want %s", round, n, l.UncompressedDigest, w.want)
			}
		}
		if l, ok := found[name]; ok && kind != "set-layer-data" {
			// Interrupted or not: the layer is complete (the tar's digest)
			// or, made by create-layer and never applied to, empty.
			if l.UncompressedDigest != "" && l.UncompressedDigest != wants[f] {
				t.Errorf("round %d: layer %s is there with diff digest %s, want %s or none", round, name, l.UncompressedDigest, wants[f])
			}
			if l.UncompressedDigest == wants[f] {
				present[name] = layerWant{id: l.ID, want: wants[f]}
			}
		} else if kind == "applydiff" {
			t.Logf("round %d: the writeable layer whose ApplyDiff was cut short was removed at reopen", round)
		}
		if kind == "set-layer-data" && !ok {
			if rc, err := s.LayerBigData("base", "bd"); err == nil {
				got, _ := io.ReadAll(rc)
				rc.Close()
				if digest.FromBytes(got) != bdDigest {
					t.Errorf("round %d: an interrupted big data write left an item with the wrong content (%d bytes)", round, len(got))
				}
				bigDataLayer = "base"
			}
		}
		if bigDataLayer != "" {
			rc, err := s.LayerBigData(bigDataLayer, "bd")
			if err != nil {
				t.Errorf("round %d: big data set before is gone: %v", round, err)
			} else {
				got, _ := io.ReadAll(rc)
				rc.Close()
				if digest.FromBytes(got) != bdDigest {
					t.Errorf("round %d: big data reads back %d bytes with another digest", round, len(got))
				}
			}
		}
		age := 100000 * time.Hour
		opts := storage.CheckMost()
		opts.LayerUnreferencedMaximumAge = &age
		report, err := s.Check(opts)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(report.Layers) + len(report.ROLayers) + len(report.Images) + len(report.ROImages) + len(report.Containers); n > 0 {
			t.Errorf("round %d: Check after reopening: %+v", round, report)
		}
		// Keep at most three finished layers.
		if len(present) > 3 {
			var names []string
			for n := range present {
				names = append(names, n)
			}
			sort.Strings(names)
			if err := s.DeleteLayer(names[0]); err != nil {
				t.Errorf("round %d: DeleteLayer(%s): %v", round, names[0], err)
			}
			delete(present, names[0])
		}
		if err := ageBlobs(root); err != nil {
			t.Fatal(err)
		}
		if err := s.GarbageCollect(); err != nil {
			t.Errorf("round %d: GarbageCollect: %v", round, err)
		}
		if _, err := s.Shutdown(true); err != nil {
			t.Errorf("round %d: Shutdown: %v", round, err)
		}
		a, err := auditRoot(root, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		mps, _ := mountsUnder(dir)
		a.Mounts = mps
		for _, p := range a.problems() {
			t.Errorf("round %d (seed %d): after reopening and gc: %s", round, seed, p)
		}
		if t.Failed() && !stressMode() {
			break
		}
	}
	t.Logf("embedded store crash test, seed %d: %d kills (%d mid-operation, %d after the operation finished); half-made layers found and removed at reopen: %d",
		seed, kills, killedMid, finished, incomplete)
}

// TestRebootForgetsMounts: the store's mount counts live in its run root,
// which a reboot empties (tmpfs) as it undoes every mount. After one (the
// mounts undone, the daemon killed, both run roots wiped, the daemon
// started again), no layer is reported mounted, the layers mount and
// unmount again (the view a read-only layer's mount left behind is taken
// over, then released), they can be deleted, and gc and Check leave
// nothing behind. A container containerd ran before keeps working across
// the daemon's restart (TestDaemonRestart covers that in more detail).
func TestRebootForgetsMounts(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	storeRun := filepath.Join(e.Dir, "store-run")
	open := func() storage.Store {
		t.Helper()
		s, err := storage.GetStore(storage.StoreOptions{GraphRoot: e.CSRoot, RunRoot: storeRun})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	ro, _, err := s.PutLayer("", "", []string{"ro"}, "", false, nil, layerStream(11, 4096))
	if err != nil {
		t.Fatal(err)
	}
	rw, err := s.CreateLayer("", ro.ID, []string{"rw"}, "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{ro.ID, ro.ID, rw.ID} {
		if _, err := s.Mount(id, ""); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := s.Mounted(ro.ID); n != 2 {
		t.Fatalf("before the reboot: %s mounted %d times, want 2", ro.ID, n)
	}
	s.Free()

	// The reboot.
	if err := unmountUnder(storeRun); err != nil {
		t.Fatal(err)
	}
	e.KillDaemon()
	for _, d := range []string{storeRun, e.CSRunRoot} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	e.StartDaemon()

	s = open()
	defer s.Free()
	for _, id := range []string{ro.ID, rw.ID} {
		if n, err := s.Mounted(id); err != nil || n != 0 {
			t.Errorf("after the reboot, layer %s is reported mounted %d times (%v)", id, n, err)
		}
	}
	layers, err := s.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if l.MountCount != 0 || l.MountPoint != "" {
			t.Errorf("after the reboot, the listing shows layer %s mounted %d times at %q", l.ID, l.MountCount, l.MountPoint)
		}
	}
	for _, id := range []string{ro.ID, rw.ID} {
		dir, err := s.Mount(id, "")
		if err != nil {
			t.Fatalf("mounting %s after the reboot: %v", id, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "data")); err != nil {
			t.Errorf("layer %s mounted at %s after the reboot does not show its files: %v", id, dir, err)
		}
		if n, _ := s.Mounted(id); n != 1 {
			t.Errorf("after mounting again, %s mounted %d times, want 1", id, n)
		}
		if still, err := s.Unmount(id, false); err != nil || still {
			t.Errorf("Unmount(%s): %v, %v", id, still, err)
		}
	}
	if err := s.DeleteLayer(rw.ID); err != nil {
		t.Errorf("DeleteLayer(%s) after the reboot: %v", rw.ID, err)
	}
	if err := s.DeleteLayer(ro.ID); err != nil {
		t.Errorf("DeleteLayer(%s) after the reboot: %v", ro.ID, err)
	}
	if err := s.GarbageCollect(); err != nil {
		t.Errorf("GarbageCollect: %v", err)
	}
	if report, err := s.Check(checkEverythingOld()); err != nil || checkProblems(report) > 0 {
		t.Errorf("Check after the reboot: %+v, %v", report, err)
	}
	for name := range e.DialDaemon().Snapshots(t) {
		if strings.HasPrefix(name, "cs.") || name == ro.ID {
			t.Errorf("after deleting everything, the daemon still has %s", name)
		}
	}
	if mps, _ := mountsUnder(storeRun); len(mps) > 0 {
		t.Errorf("mounts left: %v", mps)
	}
}
