package e2e

// Helpers shared by the crash, load and access tests (crash_test.go,
// load_test.go, access_test.go): knobs read from the environment, a
// containerd client, a garbage collection that sweeps the daemon, a
// deterministic layer generator, and an audit of a daemon root on disk
// against its database.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// stressMode (CS_STRESS=1, set by scripts/stress.sh) selects the long
// variants of the crash, load and access tests.
func stressMode() bool { return os.Getenv("CS_STRESS") == "1" }

// envInt reads an integer knob: the variable if set, else def (or
// stressDef in stress mode).
func envInt(t testing.TB, name string, def, stressDef int) int {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", name, v, err)
		}
		return n
	}
	if stressMode() {
		return stressDef
	}
	return def
}

// envDuration reads a duration knob like envInt.
func envDuration(t testing.TB, name string, def, stressDef time.Duration) time.Duration {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", name, v, err)
		}
		return d
	}
	if stressMode() {
		return stressDef
	}
	return def
}

// envSeed is the seed of the random choices (CS_SEED, default 1): a run is
// repeated by giving the seed it printed.
func envSeed(t testing.TB) uint64 {
	t.Helper()
	if v := os.Getenv("CS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CS_SEED=%q: %v", v, err)
		}
		return n
	}
	return 1
}

// containerdClient connects to the Env's containerd (namespace default).
func (e *Env) containerdClient(t testing.TB) *client.Client {
	t.Helper()
	c, err := client.New(e.CtrdSocket, client.WithDefaultNamespace("default"), client.WithTimeout(30*time.Second))
	if err != nil {
		t.Fatalf("connecting to containerd: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctrdCtx(ns string, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	return namespaces.WithNamespace(ctx, ns), cancel
}

// containerdSweep runs containerd's garbage collector and waits for it, in
// a way that makes it sweep the daemon too: containerd walks a backend
// (removing every snapshot or blob there it does not know, and calling the
// snapshotter's Cleanup) only after a pass that removed something of that
// backend. So a lease is made holding a fresh blob and a fresh cs snapshot,
// then deleted synchronously.
func containerdSweep(c *client.Client) error {
	ctx, cancel := ctrdCtx("default", 2*time.Minute)
	defer cancel()
	ls := c.LeasesService()
	l, err := ls.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	if err != nil {
		return fmt.Errorf("create lease: %w", err)
	}
	lctx := leases.WithLease(ctx, l.ID)
	data := []byte("cs e2e sweep " + l.ID)
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := content.WriteBlob(lctx, c.ContentStore(), "sweep-"+l.ID, bytes.NewReader(data), desc); err != nil {
		return fmt.Errorf("sweep blob: %w", err)
	}
	if _, err := c.SnapshotService("cs").Prepare(lctx, "sweep-"+l.ID, ""); err != nil {
		return fmt.Errorf("sweep snapshot: %w", err)
	}
	if err := ls.Delete(ctx, l, leases.SynchronousDelete); err != nil {
		return fmt.Errorf("delete lease (GC): %w", err)
	}
	return nil
}

// containerdHolds lists what containerd's own records hold in every
// namespace: blobs by digest, and cs snapshots by namespace and key.
func containerdHolds(c *client.Client) (blobs map[digest.Digest]bool, snaps map[string]map[string]bool, err error) {
	ctx, cancel := ctrdCtx("default", time.Minute)
	defer cancel()
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return nil, nil, err
	}
	blobs, snaps = map[digest.Digest]bool{}, map[string]map[string]bool{}
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		if err := c.ContentStore().Walk(nctx, func(info content.Info) error {
			blobs[info.Digest] = true
			return nil
		}); err != nil {
			return nil, nil, fmt.Errorf("content of namespace %s: %w", ns, err)
		}
		snaps[ns] = map[string]bool{}
		if err := c.SnapshotService("cs").Walk(nctx, func(_ context.Context, info snapshots.Info) error {
			snaps[ns][info.Name] = true
			return nil
		}); err != nil {
			return nil, nil, fmt.Errorf("cs snapshots of namespace %s: %w", ns, err)
		}
	}
	return blobs, snaps, nil
}

// ageBlobs moves the times of every blob under root an hour back, as if
// the store's grace period for fresh blobs (10 minutes: a blob may be
// about to be recorded by the process that wrote it) had passed. Used
// before a GC when no writer is left, so that what a crash left is
// collected now.
func ageBlobs(root string) error {
	old := time.Now().Add(-time.Hour)
	return filepath.WalkDir(filepath.Join(root, "content", "blobs"), func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		return os.Chtimes(p, old, old)
	})
}

// layerTar writes a deterministic layer: a directory and one file of size
// pseudo-random bytes (from seed), so different seeds give different
// layers and the same seed the same bytes.
func layerTar(w io.Writer, seed uint64, size int64) error {
	tw := tar.NewWriter(w)
	mtime := time.Unix(1700000000, 0)
	if err := tw.WriteHeader(&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data/file-%d", seed), Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: mtime}); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, prng(seed), size); err != nil {
		return err
	}
	return tw.Close()
}

func prng(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	copy(s[8:], "cs-snapshotter e2e layer")
	return rand.NewChaCha8(s)
}

// layerStream returns layerTar as a reader (closing it stops the writer).
func layerStream(seed uint64, size int64) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(layerTar(pw, seed, size)) }()
	return pr
}

// layerDigest is the digest of layerTar(seed, size).
func layerDigest(seed uint64, size int64) digest.Digest {
	d := digest.SHA256.Digester()
	if err := layerTar(d.Hash(), seed, size); err != nil {
		panic(err)
	}
	return d.Digest()
}

// blobData is size pseudo-random bytes from seed, and their digest.
func blobData(seed uint64, size int64) ([]byte, digest.Digest) {
	b := make([]byte, size)
	io.ReadFull(prng(seed^0x5eed), b)
	return b, digest.FromBytes(b)
}

// snapDirName is the on-disk name of snapshot record id (decimal), as the
// snapshotter writes it: base 36.
func snapDirName(id string) string {
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		return id
	}
	return strconv.FormatUint(n, 36)
}

// rootAudit is what auditRoot found wrong in a daemon root at rest.
type rootAudit struct {
	Snapshots, Blobs int // records and blobs seen

	OrphanDirs   []string // under snapshots/ or work/, no record has them
	MissingDirs  []string // a record's files are not there
	LeakedBlobs  []string // no record of the store, the daemon or containerd holds them
	MissingBlobs []string // a record refers to them, they are not on disk
	Ingests      []string // unfinished ingests left under content/ingest
	OwnIngests   []string // the same, of the store or the daemon (refs cs.*): see TestBugGCLeavesOwnIngests
	StaleLabels  []string // labels (and name claims) of blobs no longer on disk: see TestBugDeleteLeavesLabels
	Incomplete   []string // snapshots still marked incomplete
	Unheld       []string // snapshots neither the store nor containerd holds
	StaleViews   []string // the store's views and mount snapshots
	Mounts       []string // mount points left (filled in by the caller)
}

func (a rootAudit) problems() []string {
	var out []string
	add := func(what string, l []string) {
		for _, s := range l {
			out = append(out, what+": "+s)
		}
	}
	add("orphan directory", a.OrphanDirs)
	add("record without its directory", a.MissingDirs)
	add("unreferenced blob", a.LeakedBlobs)
	add("referenced blob missing", a.MissingBlobs)
	add("ingest left", a.Ingests)
	add("store ingest left", a.OwnIngests)
	add("labels of a blob no longer on disk", a.StaleLabels)
	add("snapshot still incomplete", a.Incomplete)
	add("snapshot nobody holds", a.Unheld)
	add("store view or mount snapshot left", a.StaleViews)
	add("mount left", a.Mounts)
	return out
}

// auditRoot compares a daemon root on disk with its database; nothing may
// hold the root (the daemon stopped, no store open). ctrBlobs and
// ctrSnaps are what containerd holds (nil: no containerd uses the root).
//
// A directory under snapshots/ or work/ must belong to a record, and each
// record's directory must be there. A blob on disk must be held by
// containerd or by a live reference label: cs.ref.<layer>.<use> with the
// layer (a store snapshot) recording that digest for that use,
// cs.ref.image.<id>.<use> with an image record of that ID recording it,
// cs.ref.container.<id>.bigdata/<key> with the container recording it,
// cs.ref.snapshot.<record>.tar-split with that snapshot record existing.
// Every blob a record names must be on disk.
func auditRoot(root string, ctrBlobs map[digest.Digest]bool, ctrSnaps map[string]map[string]bool) (rootAudit, error) {
	var a rootAudit
	ctx := context.Background()
	db, err := metadata.Open(ctx, filepath.Join(root, metadata.FileName))
	if err != nil {
		return a, err
	}
	defer db.Close()
	type snap struct {
		id   string
		info snapshots.Info
	}
	byKey := map[string]snap{}
	ids := map[string]string{}
	if err := db.View(ctx, func(ctx context.Context, _ *bolt.Tx) error {
		m, err := storage.IDMap(ctx)
		if err != nil {
			return err
		}
		ids = m
		for id, key := range m {
			_, info, _, err := storage.GetInfo(ctx, key)
			if err != nil {
				return fmt.Errorf("snapshot %s: %w", key, err)
			}
			byKey[key] = snap{id, info}
		}
		return nil
	}); err != nil {
		return a, err
	}
	labels, err := db.ContentLabels().All()
	if err != nil {
		return a, err
	}
	a.Snapshots = len(byKey)

	// Directories against records.
	live := map[string]bool{}
	for id := range ids {
		live[snapDirName(id)] = true
	}
	for _, parent := range []string{"snapshots", "work"} {
		entries, err := os.ReadDir(filepath.Join(root, parent))
		if err != nil {
			return a, err
		}
		for _, e := range entries {
			if !live[e.Name()] {
				a.OrphanDirs = append(a.OrphanDirs, filepath.Join(parent, e.Name()))
			}
		}
	}
	referenced := map[digest.Digest]string{} // blob -> who names it
	for key, s := range byKey {
		if _, err := os.Stat(filepath.Join(root, "snapshots", snapDirName(s.id))); err != nil {
			a.MissingDirs = append(a.MissingDirs, fmt.Sprintf("%s (record %s): %v", key, s.id, err))
		}
		l := s.info.Labels
		if l[cslabels.Incomplete] != "" || strings.HasPrefix(key, "cs.incomplete/") {
			a.Incomplete = append(a.Incomplete, key)
		}
		if strings.HasPrefix(key, "cs.view/") || strings.HasPrefix(key, "cs.mount/") {
			a.StaleViews = append(a.StaleViews, key)
		}
		for k, v := range l {
			if k == cslabels.TarSplit || k == cslabels.DiffBlob || strings.HasPrefix(k, cslabels.BigDataPrefix) || strings.HasPrefix(k, cslabels.ContainerBigDataPrefix) {
				referenced[digest.Digest(v)] = key + " " + k
			}
		}
		owned := l[cslabels.Owned] != "" || strings.HasPrefix(key, "cs.")
		if !owned && ctrSnaps != nil {
			// containerd's backend names: <namespace>/<n>/<key>.
			parts := strings.SplitN(key, "/", 3)
			if len(parts) != 3 || !ctrSnaps[parts[0]][parts[2]] {
				a.Unheld = append(a.Unheld, key)
			}
		}
	}
	onDisk := map[digest.Digest]bool{}
	blobDir := filepath.Join(root, "content", "blobs", "sha256")
	entries, err := os.ReadDir(blobDir)
	if err != nil && !os.IsNotExist(err) {
		return a, err
	}
	for _, e := range entries {
		onDisk[digest.NewDigestFromEncoded(digest.SHA256, e.Name())] = true
	}
	for d, l := range labels {
		if !onDisk[d] && len(l) > 0 {
			var keys []string
			for k := range l {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			a.StaleLabels = append(a.StaleLabels, fmt.Sprintf("%s (labels %v)", d, keys))
		}
	}
	// Image records, by ID.
	images := map[string]map[string]string{}
	imageRecord := map[string]digest.Digest{}
	for d, l := range labels {
		if l[cslabels.ImageMarker] != "" && l[cslabels.ImageID] != "" && onDisk[d] {
			images[l[cslabels.ImageID]] = l
			imageRecord[l[cslabels.ImageID]] = d
			referenced[d] = "image record " + l[cslabels.ImageID]
			for k, v := range l {
				if strings.HasPrefix(k, cslabels.ImageBigDataPrefix) {
					referenced[digest.Digest(v)] = "image " + l[cslabels.ImageID] + " " + k
				}
			}
		}
	}
	containers := map[string]map[string]string{}
	for _, s := range byKey {
		for k := range s.info.Labels {
			if kind, name, ok := cslabels.ParseName(k); ok && kind == cslabels.ContainerIDKind {
				containers[name] = s.info.Labels
			}
		}
	}
	refLive := func(ref string, d digest.Digest) bool {
		rest := strings.TrimPrefix(ref, cslabels.BlobRefPrefix)
		switch {
		case strings.HasPrefix(rest, "snapshot."):
			n := strings.TrimSuffix(strings.TrimPrefix(rest, "snapshot."), ".tar-split")
			key, ok := ids[n]
			if !ok {
				return false
			}
			// Still applying (an active snapshot of containerd's unpack), or
			// committed recording it.
			s := byKey[key]
			return s.info.Kind == snapshots.KindActive || s.info.Labels[cslabels.TarSplit] == d.String()
		case strings.HasPrefix(rest, "image."):
			id, use, ok := strings.Cut(strings.TrimPrefix(rest, "image."), ".")
			l, found := images[id]
			if !ok || !found {
				return false
			}
			if use == "record" {
				return imageRecord[id] == d
			}
			key := strings.TrimPrefix(use, "bigdata/")
			return l[cslabels.ImageBigDataPrefix+key] == d.String()
		case strings.HasPrefix(rest, "container."):
			id, use, ok := strings.Cut(strings.TrimPrefix(rest, "container."), ".")
			l, found := containers[id]
			return ok && found && l[cslabels.ContainerBigDataPrefix+strings.TrimPrefix(use, "bigdata/")] == d.String()
		default:
			id, use, ok := strings.Cut(rest, ".")
			if !ok {
				return false
			}
			s, found := byKey[id]
			if !found {
				s, found = byKey["cs.rw/"+id]
			}
			if !found {
				return false
			}
			switch {
			case use == "tar-split":
				return s.info.Labels[cslabels.TarSplit] == d.String()
			case use == "diff":
				return s.info.Labels[cslabels.DiffBlob] == d.String()
			case strings.HasPrefix(use, "bigdata/"):
				return s.info.Labels[cslabels.BigDataPrefix+strings.TrimPrefix(use, "bigdata/")] == d.String()
			}
			return false
		}
	}

	// Blobs against references.
	for _, e := range entries {
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if ctrBlobs[d] {
			continue
		}
		l := labels[d]
		held := false
		for k := range l {
			if strings.HasPrefix(k, cslabels.BlobRefPrefix) && refLive(k, d) {
				held = true
			}
		}
		if !held {
			var refs []string
			for k := range l {
				if strings.HasPrefix(k, cslabels.BlobRefPrefix) {
					refs = append(refs, k)
				}
			}
			sort.Strings(refs)
			a.LeakedBlobs = append(a.LeakedBlobs, fmt.Sprintf("%s (labels %v)", d, refs))
		}
	}
	a.Blobs = len(onDisk)
	for d, who := range referenced {
		if d != "" && !onDisk[d] {
			a.MissingBlobs = append(a.MissingBlobs, fmt.Sprintf("%s (named by %s)", d, who))
		}
	}
	if ing, err := os.ReadDir(filepath.Join(root, "content", "ingest")); err == nil {
		for _, e := range ing {
			ref, _ := os.ReadFile(filepath.Join(root, "content", "ingest", e.Name(), "ref"))
			desc := fmt.Sprintf("%s (ref %q)", e.Name(), ref)
			if strings.HasPrefix(string(ref), "cs.") {
				a.OwnIngests = append(a.OwnIngests, desc)
			} else {
				a.Ingests = append(a.Ingests, desc)
			}
		}
	}
	for _, l := range [][]string{a.OrphanDirs, a.MissingDirs, a.LeakedBlobs, a.MissingBlobs, a.Ingests, a.OwnIngests, a.StaleLabels, a.Incomplete, a.Unheld, a.StaleViews} {
		sort.Strings(l)
	}
	return a, nil
}

// latencies collects operation times for percentiles.
type latencies []time.Duration

func (l latencies) percentile(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append(latencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}
