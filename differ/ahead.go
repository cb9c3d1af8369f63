package differ

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/layerdiff"
)

// Unpacking ahead: containerd writes a layer's blob into the content store,
// then asks for it to be applied onto a snapshot. An import applies one
// layer at a time, after every blob is in. So the daemon starts unpacking
// each compressed blob as it is written, into a staging directory, without
// its parents, and Apply adopts the result (layerdiff.Adopt: renames) when
// the parents it is applied onto fit what the extraction assumed of them;
// otherwise, or if the blob was not unpacked ahead, Apply unpacks it as
// usual. An unpacked blob nobody applies is dropped after keepAhead.
const keepAhead = 10 * time.Minute

// aheadSlots is how many blobs are unpacked ahead at once, at least: as
// many as containerd downloads at once (3 by default), so that a pull
// slower than unpacking has each of its layers unpacked as it arrives.
const aheadSlots = 4

var (
	gzipMagic = []byte{0x1f, 0x8b, 0x08}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// AheadOutcomes are how a blob unpacked ahead can end: moved into its
// snapshot; applied again because its parents did not fit; its unpacking
// failed (not a layer, corrupt, the ingest abandoned); never applied,
// dropped after keepAhead; applied before its unpacking could start.
var AheadOutcomes = [...]string{"adopted", "not_fitting", "failed", "unused", "late"}

const (
	outcomeAdopted = iota
	outcomeNotFitting
	outcomeFailed
	outcomeUnused
	outcomeLate
)

// AheadCounts returns how many blobs unpacked ahead ended each way, in the
// order of AheadOutcomes; all zero when the service does not unpack ahead.
func (s *Service) AheadCounts() [len(AheadOutcomes)]uint64 {
	var c [len(AheadOutcomes)]uint64
	if s.ahead != nil {
		for i := range c {
			c[i] = s.ahead.outcomes[i].Load()
		}
	}
	return c
}

// ahead is the blobs being, or done, unpacked ahead.
type ahead struct {
	dir   string // the staging directories' parent, on the snapshots' file system
	cs    content.Store
	max   int64
	slots chan struct{}
	seq   atomic.Uint64

	// How blobs unpacked ahead ended, by AheadOutcomes.
	outcomes [len(AheadOutcomes)]atomic.Uint64

	mu   sync.Mutex
	all  map[*unpacked]struct{}
	quit chan struct{}
	wg   sync.WaitGroup
}

// unpacked is one blob unpacked ahead.
type unpacked struct {
	tail  *contentstore.Tail
	stage string
	unp   layerdiff.Unparented
	w     content.Writer // its tar-split
	done  chan struct{}
	res   layerdiff.ApplyResult
	err   error
	// Under ahead.mu: taken by an Apply; started unpacking, or not yet
	// (waiting for a slot: an Apply then unpacks it itself).
	taken, started bool
}

// UnpackAhead makes the service unpack the compressed blobs written to the
// content store as they arrive, staging them under dir, which must be on
// the file system of the snapshots; it returns the hook to give the
// content store. Close stops it.
func (s *Service) UnpackAhead(ctx context.Context, dir string) (contentstore.IngestHook, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("clear staging directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create staging directory %s: %w", dir, err)
	}
	a := &ahead{
		dir:   dir,
		cs:    s.cs,
		max:   s.maxLayerSize,
		slots: make(chan struct{}, max(aheadSlots, runtime.NumCPU())),
		all:   map[*unpacked]struct{}{},
		quit:  make(chan struct{}),
	}
	s.ahead = a
	ctx = log.WithLogger(context.WithoutCancel(ctx), log.G(ctx).WithField("unpack", "ahead"))
	return func(ref string, t *contentstore.Tail) {
		if strings.HasPrefix(ref, contentstore.OwnRefPrefix) {
			t.Close() // the daemon's own: tar-splits
			return
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer t.Close()
			a.unpack(ctx, ref, t)
		}()
	}, nil
}

// Close stops unpacking ahead and drops what nobody took.
func (a *ahead) Close(ctx context.Context) {
	close(a.quit)
	a.mu.Lock()
	for u := range a.all {
		u.tail.Close() // a Read waiting for more returns
	}
	a.mu.Unlock()
	a.wg.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	for u := range a.all {
		a.drop(ctx, u)
	}
}

func (a *ahead) unpack(ctx context.Context, ref string, t *contentstore.Tail) {
	// Listed from the start, so that Close finds its tail to close.
	u := &unpacked{tail: t, done: make(chan struct{})}
	a.mu.Lock()
	a.all[u] = struct{}{}
	a.mu.Unlock()
	defer close(u.done)
	br := bufio.NewReaderSize(t, 64<<10)
	magic, err := br.Peek(4)
	if err != nil || !(bytes.HasPrefix(magic, gzipMagic) || bytes.HasPrefix(magic, zstdMagic)) {
		// Not a compressed layer, or the ingest went away.
		a.mu.Lock()
		delete(a.all, u)
		a.mu.Unlock()
		return
	}
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	case <-a.quit:
		return // Close drops it
	}
	a.mu.Lock()
	if u.taken {
		delete(a.all, u) // its Apply did not wait
		a.mu.Unlock()
		a.outcomes[outcomeLate].Add(1)
		return
	}
	u.started = true
	a.mu.Unlock()

	start := time.Now()
	u.err = a.extract(ctx, u, br)
	l := log.G(ctx).WithField("ref", ref).WithField("digest", t.Digest()).WithField("d", time.Since(start))
	if u.err != nil {
		l.WithError(u.err).Debug("not unpacked ahead")
		a.outcomes[outcomeFailed].Add(1)
		a.mu.Lock()
		a.drop(ctx, u)
		a.mu.Unlock()
		return
	}
	l.Debug("unpacked ahead")
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		select {
		case <-time.After(keepAhead):
		case <-a.quit:
			return // Close drops it
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if !u.taken {
			log.G(ctx).WithField("digest", t.Digest()).Debug("dropping a blob unpacked ahead that was not applied")
			a.outcomes[outcomeUnused].Add(1)
			a.drop(ctx, u)
		}
	}()
}

func (a *ahead) extract(ctx context.Context, u *unpacked, br *bufio.Reader) error {
	stage, err := os.MkdirTemp(a.dir, "stage-")
	if err != nil {
		return err
	}
	u.stage = stage
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	ref := contentstore.OwnRefPrefix + "ahead." + strconv.FormatUint(a.seq.Add(1), 10)
	if u.w, err = content.OpenWriter(ctx, a.cs, content.WithRef(ref)); err != nil {
		return fmt.Errorf("record tar-split: %w", err)
	}
	if err := u.w.Truncate(0); err != nil {
		return err
	}
	u.res, err = layerdiff.Apply(ctx, stage, br, layerdiff.ApplyOptions{TarSplit: u.w, MaxUncompressed: a.max, Unparented: &u.unp})
	if err != nil {
		return err
	}
	if dgst := u.tail.Digest(); u.res.CompressedDigest != dgst {
		return fmt.Errorf("unpacked %s, the blob is %s", u.res.CompressedDigest, dgst)
	}
	return nil
}

// drop removes what u left; under a.mu.
func (a *ahead) drop(ctx context.Context, u *unpacked) {
	delete(a.all, u)
	if u.w != nil {
		st, _ := u.w.Status()
		u.w.Close()
		if st.Ref != "" {
			a.cs.Abort(ctx, st.Ref)
		}
	}
	if u.stage != "" {
		if err := os.RemoveAll(u.stage); err != nil {
			log.G(ctx).WithError(err).WithField("dir", u.stage).Warn("removing a staging directory")
		}
	}
}

// take returns the unpacking ahead of blob dgst, if there is one nobody
// took, once it is done; nil if there is none, or it failed.
func (a *ahead) take(ctx context.Context, dgst digest.Digest) *unpacked {
	var u *unpacked
	a.mu.Lock()
	for c := range a.all {
		if !c.taken && c.tail.Digest() == dgst {
			c.taken, u = true, c
			break
		}
	}
	started := u != nil && u.started
	a.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-u.done:
	case <-ctx.Done():
		a.release(ctx, u)
		return nil
	}
	if u.err != nil {
		return nil // dropped already
	}
	return u
}

// release drops u, which its taker did not adopt.
func (a *ahead) release(ctx context.Context, u *unpacked) {
	go func() {
		<-u.done
		a.mu.Lock()
		defer a.mu.Unlock()
		a.drop(ctx, u)
	}()
}

// adopted forgets u, whose stage an Apply moved into its snapshot and
// whose tar-split writer it took.
func (a *ahead) adopted(u *unpacked) {
	a.mu.Lock()
	delete(a.all, u)
	a.mu.Unlock()
	a.outcomes[outcomeAdopted].Add(1)
}
