package e2e

// Regression tests: one for each bug the crash, load and access tests
// found. Each failed before its fix; the comment above it says what went
// wrong and where, as found.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

func checkEverythingOld() *storage.CheckOptions {
	age := 100000 * time.Hour
	o := storage.CheckMost()
	o.LayerUnreferencedMaximumAge = &age
	return o
}

// TestBugSharedTarSplit: two images whose chains differ but share a
// layer's content (here layers 2 and 3, on different first layers).
// differ.commitTarSplit (differ/differ.go) stores the tar-split of the
// second unpack, finds the blob already there (AlreadyExists) and returns
// without adding the label cs.ref.snapshot.<id>.tar-split for the second
// snapshot. When the first image goes, Released drops the only reference
// and deletes the blob, which the second image's snapshots still name
// (containerd.io/snapshot/cs.tar-split): Check reports their tar-split
// missing and the store's Diff of those layers fails.
func TestBugSharedTarSplit(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	var names []string
	for i, hello := range []string{"first\n", "second\n"} {
		name := fmt.Sprintf("docker.io/library/cs-shared-%d:latest", i)
		p := filepath.Join(e.Dir, fmt.Sprintf("shared-%d.tar", i))
		if _, err := imagebuild.BuildFile(p, imagebuild.Options{Name: name, Hello: hello}); err != nil {
			t.Fatal(err)
		}
		e.ImportImage(p)
		names = append(names, name)
	}
	e.MustCtr("images", "rm", "--sync", names[0])
	s := e.openStore(t)
	report, err := s.Check(checkEverythingOld())
	if err != nil {
		t.Fatal(err)
	}
	for id, errs := range report.ROLayers {
		t.Errorf("layer %s of %s, which is still there: %v", id, names[1], errs)
	}
	layers, err := s.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		u := storage.Uncompressed
		rc, err := s.Diff("", l.ID, &storage.DiffOptions{Compression: &u})
		if err == nil {
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
		}
		if err != nil {
			t.Errorf("Diff of layer %s (%v): %v", l.ID, l.Names, err)
		}
	}
}

// TestBugGCDeletesFreshBlob: a blob the store writes to the daemon (here
// big data) is lost when containerd's garbage collector sweeps the daemon
// at that moment. contentstore's writer.Commit (contentstore/writer.go)
// renames the ingest into blobs/ and only afterwards sets the blob's labels
// (its cs.ref.* reference). containerd's GC deletes every backend blob its
// own database does not list; contentstore.Store.Delete keeps only blobs
// with a cs.ref.* label, so one caught between the rename and the labels
// is deleted (the daemon then logs "failed to make readonly ... no such
// file"). Commit still answers success, the layer records the digest, and
// the data is gone. The same holds for tar-splits (PutLayer and the diff
// service's), image records and big data. Usually within a few dozen
// writes while GC runs.
func TestBugGCDeletesFreshBlob(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	c := e.containerdClient(t)
	s := e.openStore(t)
	l, _, err := s.PutLayer("", "", []string{"x"}, "", false, nil, layerStream(1, 1000))
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	sweeps := 0
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := containerdSweep(c); err != nil {
				t.Error(err)
				return
			}
			sweeps++
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for n := 1; time.Now().Before(deadline); n++ {
		data, d := blobData(uint64(n), 1<<20)
		key := fmt.Sprint("k", n%3)
		if err := s.SetLayerBigData(l.ID, key, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		rc, err := s.LayerBigData(l.ID, key)
		if err == nil {
			var got []byte
			got, err = io.ReadAll(rc)
			rc.Close()
			if err == nil && digest.FromBytes(got) != d {
				err = fmt.Errorf("reads %d bytes with another digest", len(got))
			}
		}
		if err != nil {
			t.Fatalf("big data %s set (successfully) as write %d, during containerd GC sweep %d, is lost: %v", key, n, sweeps, err)
		}
	}
}

// TestBugGCLeavesOwnIngests: a client killed while it writes to the daemon
// (here `cs-snapshotter set-layer-data` through the daemon, stopped half
// way) leaves its ingest (ref cs.bigdata.<layer>.<key>, with the data
// written so far). containerd's GC never sees it (ListStatuses hides cs.*
// refs from it), and the store's GarbageCollect (check.go) has no step for
// ingests, so `cs-snapshotter gc` leaves it however old it is; only the
// daemon's next start (contentstore.AbortOwn) removes it. A daemon that
// runs for months keeps every such ingest.
func TestBugGCLeavesOwnIngests(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	cli := func(stdin io.Reader, args ...string) *exec.Cmd {
		cmd := exec.Command(csBin, append([]string{"--graph", e.CSRoot, "--run", filepath.Join(e.Dir, "store-run")}, args...)...)
		cmd.Env = cleanEnv()
		cmd.Stdin = stdin
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		return cmd
	}
	if out, err := cli(nil, "create-layer", "-n", "base").CombinedOutput(); err != nil {
		t.Fatalf("create-layer: %v\n%s", err, out)
	}
	pr, pw := io.Pipe()
	cmd := cli(pr, "set-layer-data", "base", "big")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	data, _ := blobData(5, 16<<20)
	go pw.Write(data) // then stalls: the client waits for more
	ingests := filepath.Join(e.CSRoot, "content", "ingest")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if entries, _ := os.ReadDir(ingests); len(entries) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client never started its ingest")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	pw.Close()
	cmd.Wait()

	// An hour later, as far as the files say; then both collectors.
	old := time.Now().Add(-time.Hour)
	filepath.WalkDir(ingests, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			os.Chtimes(p, old, old)
		}
		return nil
	})
	// The daemon lets go of the killed client's writer when it sees the
	// connection closed, which may take it a moment after the kill; till
	// then gc rightly leaves the ingest to its writer.
	var entries []os.DirEntry
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if out, err := cli(nil, "gc").CombinedOutput(); err != nil {
			t.Fatalf("gc: %v\n%s", err, out)
		}
		if err := containerdSweep(e.containerdClient(t)); err != nil {
			t.Fatal(err)
		}
		if entries, _ = os.ReadDir(ingests); len(entries) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, en := range entries {
		ref, _ := os.ReadFile(filepath.Join(ingests, en.Name(), "ref"))
		st, _ := os.Stat(filepath.Join(ingests, en.Name(), "data"))
		size := int64(-1)
		if st != nil {
			size = st.Size()
		}
		t.Errorf("after gc (for 10 s), the ingest %q of a client killed an hour ago is still there (%d bytes of data)", ref, size)
	}
}

// TestBugIngestWithoutData: an ingest directory that has its ref file but
// no data file is never removed. contentstore's writer.Commit renames
// ingest/<h>/data into blobs/ and removes ingest/<h> afterwards; newWriter
// makes ingest/<h> and its ref, startedat and updatedat files before the
// data file. A kill between leaves such a directory (the crash test found
// cs.apply.<n> ones). containerd's local Status answers NotFound for it, so
// listStatuses skips it as "finished meanwhile", AbortOwn never sees it and
// removeBrokenIngests (contentstore/contentstore.go) keeps it on purpose
// (NotFound is taken as fine); containerd's GC does not list it either.
// It stays through every gc and restart. The directory is made here as the
// kill leaves it.
func TestBugIngestWithoutData(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	e.StopDaemon()
	ingests := filepath.Join(e.CSRoot, "content", "ingest")
	var dirs []string
	for _, ref := range []string{"cs.apply.99", "default/1/import-1"} {
		dir := filepath.Join(ingests, digest.FromString(ref).Encoded())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		now := time.Now().Add(-time.Hour)
		ts, _ := now.MarshalText()
		for name, v := range map[string][]byte{"ref": []byte(ref), "startedat": ts, "updatedat": ts} {
			if err := os.WriteFile(filepath.Join(dir, name), v, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		dirs = append(dirs, dir)
	}
	e.StartDaemon()
	s, err := storage.GetStore(storage.StoreOptions{GraphRoot: e.CSRoot, RunRoot: filepath.Join(e.Dir, "store-run")})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.GarbageCollect(); err != nil {
		t.Fatal(err)
	}
	s.Free()
	if err := containerdSweep(e.containerdClient(t)); err != nil {
		t.Fatal(err)
	}
	e.StopDaemon()
	e.StartDaemon()
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			ref, _ := os.ReadFile(filepath.Join(d, "ref"))
			t.Errorf("ingest directory %s (ref %q, no data) survived the start, gc, containerd's GC and a restart", d, ref)
		}
	}
}

// TestBugDeleteLeavesLabels: contentstore.Store.Delete
// (contentstore/contentstore.go) unlinks the blob, then deletes its labels
// in a separate transaction. Killed in between (the crash test caught it
// deleting an image), the labels stay with no blob: for an image record
// that includes its ID and name claims in the daemon's name index. The
// image is gone from every listing, yet its name can never be used again
// (CreateImage answers ErrDuplicateName), and no gc or restart clears it.
// The blob is removed here as the kill leaves it.
func TestBugDeleteLeavesLabels(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	open := func() storage.Store {
		s, err := storage.GetStore(storage.StoreOptions{GraphRoot: e.CSRoot, RunRoot: filepath.Join(e.Dir, "store-run")})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	img, err := s.CreateImage("", []string{"reused-name"}, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Its record blob: the one image record in the root.
	s.Free()
	e.StopDaemon()
	a, err := auditRoot(e.CSRoot, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.LeakedBlobs) != 0 || a.Blobs != 1 {
		t.Fatalf("expected exactly the image record on disk: %+v", a)
	}
	blobs, _ := os.ReadDir(filepath.Join(e.CSRoot, "content", "blobs", "sha256"))
	if err := os.Remove(filepath.Join(e.CSRoot, "content", "blobs", "sha256", blobs[0].Name())); err != nil {
		t.Fatal(err)
	}
	e.StartDaemon()
	s = open()
	defer s.Free()
	if _, err := s.Image(img.ID); !errors.Is(err, storage.ErrImageUnknown) {
		t.Fatalf("the image whose record is gone: %v", err)
	}
	if err := s.GarbageCollect(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateImage("", []string{"reused-name"}, "", "", nil); err != nil {
		t.Errorf("CreateImage with the name of an image that no longer exists: %v", err)
	}
	if _, err := s.CreateImage(img.ID, nil, "", "", nil); err != nil {
		t.Errorf("CreateImage with the ID of an image that no longer exists: %v", err)
	}
}

// TestBugListingsRaceContainerdGC: the store reads containerd's objects
// (its image manifests and configs, its snapshots) without a lock
// containerd respects, and treats one that goes meanwhile as an error:
//   - ctrdimages.go: listing containerd's images reads each manifest blob;
//     one containerd's GC deleted since the content Walk fails the whole
//     listing ("list containerd's images: read blob ...: not found"), and
//     with it Images, DeleteImage, Delete, DeleteLayer (which looks for an
//     image using the layer), Check...: ~20% of those calls under the
//     load test while containerd removes images;
//   - check.go (store.Check): a snapshot removed after the listing is
//     reported as damage ("image layer is missing", "layer not known: view
//     layer ...: missing parent"), so `cs-snapshotter check` fails, and
//     `check -r` would "repair", on a healthy store.
//
// A blob or snapshot that vanished meanwhile should be skipped.
func TestBugListingsRaceContainerdGC(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	// Check mounts a read-only view on each of containerd's layers; while
	// one stands, containerd's GC cannot remove that layer, logs it and
	// removes it at a later pass.
	e.ExpectContainerdLog("failed to remove snapshot", "cannot remove snapshot with child")
	s := e.openStore(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			e.Ctr("images", "import", "--snapshotter", e.Snapshotter, deepArchive)
			e.Ctr("images", "rm", "--sync", deepName)
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for n := 1; time.Now().Before(deadline); n++ {
		if _, err := s.Images(); err != nil {
			t.Fatalf("Images %d, while containerd imports and removes an image: %v", n, err)
		}
		report, err := s.Check(checkEverythingOld())
		if err != nil {
			t.Fatalf("Check %d: %v", n, err)
		}
		if checkProblems(report) > 0 {
			var msgs []string
			for _, m := range []map[string][]error{report.Layers, report.ROLayers, report.Images, report.ROImages, report.Containers} {
				for id, errs := range m {
					for _, err := range errs {
						msgs = append(msgs, id[:12]+": "+err.Error())
					}
				}
			}
			t.Fatalf("Check %d, while containerd imports and removes an image, reports damage:\n  %s", n, strings.Join(msgs, "\n  "))
		}
	}
}

// TestBugCheckOtherNamespace: a container the store makes through
// containerd (StoreOptions.ContainerdAddress) is a snapshot whose labels
// containerd forwards to the daemon, so the store opened on the daemon
// lists it as a container; its image is a record blob whose labels
// containerd keeps to itself, so that store does not see the image.
// Check through the daemon (`cs-snapshotter check`) then reports the
// container as damaged ("image missing"), and `check -r -f` would delete
// it from under containerd.
func TestBugCheckOtherNamespace(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	cs, err := storage.GetStore(storage.StoreOptions{GraphRoot: filepath.Join(e.Dir, "ctrd-graph"), RunRoot: filepath.Join(e.Dir, "ctrd-run"),
		ContainerdAddress: e.CtrdSocket, ContainerdNamespace: "other"})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Free()
	l, _, err := cs.PutLayer("", "", nil, "", false, nil, layerStream(3, 100))
	if err != nil {
		t.Fatal(err)
	}
	img, err := cs.CreateImage("", nil, l.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CreateContainer("", []string{"made-through-containerd"}, img.ID, "", "", nil); err != nil {
		t.Fatal(err)
	}
	ds := e.openStore(t)
	report, err := ds.Check(checkEverythingOld())
	if err != nil {
		t.Fatal(err)
	}
	for id, errs := range report.Containers {
		t.Errorf("Check through the daemon: container %s (made through containerd, healthy): %v", id, errs)
	}
}

// TestBugAddNamesRace: AddNames/SetNames move a name from the layer that
// has it (containers/storage semantics) in steps, from a listing read
// first (layers.go, updateNames): remove the label from the holder it
// listed, then claim the name. A name taken by another client in between
// fails the call with ErrDuplicateName; a holder deleted in between fails
// it with ErrLayerUnknown ("move name ... from layer ...: not found").
// containers/storage's AddNames, under its store lock, never fails for
// either. Here one client keeps making and deleting a layer named "n"
// while two others keep adding "n" to a layer of their own.
func TestBugAddNamesRace(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	a, b, c := e.openStore(t), e.openStore(t), e.openStore(t)
	mine, _, err := a.PutLayer("", "", nil, "", false, nil, layerStream(1, 10))
	if err != nil {
		t.Fatal(err)
	}
	theirs, _, err := c.PutLayer("", "", nil, "", false, nil, layerStream(2, 10))
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for n := uint64(3); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			l, _, err := b.PutLayer("", "", []string{"n"}, "", false, nil, layerStream(n, 10))
			if err == nil {
				b.DeleteLayer(l.ID)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.AddNames(theirs.ID, []string{"n"}); err != nil {
				errs <- err
				return
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for n := 1; time.Now().Before(deadline); n++ {
		err := a.AddNames(mine.ID, []string{"n"})
		if err == nil {
			select {
			case err = <-errs:
			default:
			}
		}
		if err != nil {
			t.Fatalf("AddNames %d, while other clients add the name to their layer and make and delete a layer with it: %v", n, err)
		}
	}
}

// TestBugGCPassFailsOnStoreDelete: containerd's GC walks the daemon's
// snapshots and removes those it does not know; the store's are refused
// (FailedPrecondition, logged and skipped). When the store deletes one of
// its snapshots between containerd's walk and its Remove, the daemon
// answers NotFound, and containerd gives up the whole pass ("snapshot
// garbage collection failed ... snapshot does not exist"): the rest of
// that pass's removals wait for the next one. (Whether the daemon should
// answer a Remove of a snapshot the store just removed differently, or
// containerd skip NotFound, the pass should not fail while both work
// normally.)
func TestBugGCPassFailsOnStoreDelete(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	c := e.containerdClient(t)
	s := e.openStore(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := uint64(1); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			if l, err := s.CreateLayer("", "", nil, "", true, nil); err == nil {
				s.DeleteLayer(l.ID)
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if err := containerdSweep(c); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(e.CtrdLog); bytes.Contains(b, []byte("snapshot garbage collection failed")) {
			break
		}
	}
	close(stop)
	wg.Wait()
	// checkLogs (at cleanup) fails the test on the line, if it came.
}
