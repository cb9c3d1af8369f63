package contentstore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// crashRoot is a root opened as the daemon opens it; reopen closes it and
// opens it again, as a restart after a crash would (AbortOwn included).
type crashRoot struct {
	t    *testing.T
	root string
	db   *metadata.DB
	cs   *contentstore.Store
}

func newCrashRoot(t *testing.T) *crashRoot {
	r := &crashRoot{t: t, root: t.TempDir()}
	r.open()
	t.Cleanup(func() { r.db.Close() })
	return r
}

func (r *crashRoot) open() {
	r.t.Helper()
	db, err := metadata.Open(context.Background(), filepath.Join(r.root, metadata.FileName))
	if err != nil {
		r.t.Fatal(err)
	}
	cs, err := contentstore.New(filepath.Join(r.root, "content"), db)
	if err != nil {
		db.Close()
		r.t.Fatal(err)
	}
	r.db, r.cs = db, cs
}

func (r *crashRoot) reopen() {
	r.t.Helper()
	if err := r.db.Close(); err != nil {
		r.t.Fatal(err)
	}
	r.open()
	if err := r.cs.AbortOwn(context.Background()); err != nil {
		r.t.Fatalf("AbortOwn: %v", err)
	}
}

// holder is the blob holding image name (kind cslabels.Image) or ID.
func (r *crashRoot) holder(kind cslabels.Kind, name string) digest.Digest {
	r.t.Helper()
	h, err := r.db.ContentLabels().Holder(context.Background(), kind, name)
	if err != nil {
		r.t.Fatal(err)
	}
	return h
}

func (r *crashRoot) labels(d digest.Digest) map[string]string {
	r.t.Helper()
	l, err := r.db.ContentLabels().Get(d)
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}

// imageLabels are the labels of an image record named name with ID id.
func imageLabels(id, name string) map[string]string {
	return map[string]string{
		cslabels.BlobRefPrefix + "image." + id + ".record": "record",
		cslabels.ImageMarker:            "1",
		cslabels.ImageID:                id,
		cslabels.ImageNamePrefix + name: "0",
	}
}

// checkIntact fails unless blob d reads as data with exactly labels.
func checkIntact(t *testing.T, cs content.Store, d digest.Digest, data string, labels map[string]string) {
	t.Helper()
	info, err := cs.Info(context.Background(), d)
	if err != nil {
		t.Fatalf("blob %s lost: %v", d, err)
	}
	if len(info.Labels) != len(labels) {
		t.Errorf("blob %s has labels %v, want %v", d, info.Labels, labels)
	}
	for k, v := range labels {
		if info.Labels[k] != v {
			t.Errorf("blob %s has labels %v, want %v", d, info.Labels, labels)
			break
		}
	}
	if got := readAll(t, cs, d); string(got) != data {
		t.Errorf("blob %s reads %q, want %q", d, got, data)
	}
}

// TestCrashInCommitLeavesNoClaims: Commit writes a blob's labels before
// moving it in place. A crash between leaves labels without a blob (made
// here as it leaves them): they are dropped at the next start, freeing the
// image name and ID they claim, and a commit of the same digest never
// inherits them, start or no start.
func TestCrashInCommitLeavesNoClaims(t *testing.T) {
	r := newCrashRoot(t)
	keep := write(t, r.cs, "kept", imageLabels("kept-id", "kept-name"))
	lost, lost2 := digest.FromString("lost record"), digest.FromString("lost again")
	for _, d := range []digest.Digest{lost, lost2} {
		if err := r.db.ContentLabels().Set(d, imageLabels("lost-id-"+d.Encoded()[:4], "lost-name-"+d.Encoded()[:4])); err != nil {
			t.Fatal(err)
		}
	}

	// Before any restart: committing the digest again replaces them.
	write(t, r.cs, "lost again", nil)
	if l := r.labels(lost2); l != nil {
		t.Errorf("a blob committed over labels a crash left inherited %v", l)
	}
	if h := r.holder(cslabels.Image, "lost-name-"+lost2.Encoded()[:4]); h != "" {
		t.Errorf("the name the crash left is still held by %s", h)
	}

	r.reopen()
	if l := r.labels(lost); l != nil {
		t.Errorf("labels without a blob survived the start: %v", l)
	}
	if h := r.holder(cslabels.Image, "lost-name-"+lost.Encoded()[:4]); h != "" {
		t.Errorf("name of the blob never committed still held by %s", h)
	}
	if h := r.holder(cslabels.ImageIDKind, "lost-id-"+lost.Encoded()[:4]); h != "" {
		t.Errorf("ID of the blob never committed still held by %s", h)
	}
	// The name can be claimed again, and nothing else changed.
	other := write(t, r.cs, "claims the name", map[string]string{cslabels.ImageNamePrefix + "lost-name-" + lost.Encoded()[:4]: "0"})
	if h := r.holder(cslabels.Image, "lost-name-"+lost.Encoded()[:4]); h != other {
		t.Errorf("name held by %q, want %s", h, other)
	}
	checkIntact(t, r.cs, keep, "kept", imageLabels("kept-id", "kept-name"))
	if h := r.holder(cslabels.Image, "kept-name"); h != keep {
		t.Errorf("name of a blob the start kept held by %q", h)
	}
	checkIntact(t, r.cs, lost2, "lost again", nil)
}

// TestCommitFailureDropsLabels: a commit whose blob cannot be moved in place
// (its data file removed behind the writer) takes back the labels it
// wrote, so their claims go with them; the store is otherwise untouched.
func TestCommitFailureDropsLabels(t *testing.T) {
	r := newCrashRoot(t)
	ctx := context.Background()
	keep := write(t, r.cs, "kept", imageLabels("kept-id", "kept-name"))
	w, err := r.cs.Writer(ctx, content.WithRef("doomed"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("doomed")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(r.root, "content", "ingest", digest.FromString("doomed").Encoded(), "data")); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, 0, "", content.WithLabels(imageLabels("doomed-id", "doomed-name"))); err == nil {
		t.Fatal("commit of an ingest whose data is gone succeeded")
	}
	d := digest.FromString("doomed")
	if _, err := r.cs.Info(ctx, d); !errdefs.IsNotFound(err) {
		t.Errorf("blob of the failed commit: %v", err)
	}
	if l := r.labels(d); l != nil {
		t.Errorf("the failed commit left labels %v", l)
	}
	if h := r.holder(cslabels.Image, "doomed-name"); h != "" {
		t.Errorf("the failed commit left its name claimed by %s", h)
	}
	checkIntact(t, r.cs, keep, "kept", imageLabels("kept-id", "kept-name"))
	// The ref is free again.
	write(t, r.cs, "doomed", nil)
	checkIntact(t, r.cs, d, "doomed", nil)
}

// TestCommitRefusedClaim: labels claiming a name another blob holds are
// refused before the blob appears; the holder keeps it and the ingest
// stays to be committed again.
func TestCommitRefusedClaim(t *testing.T) {
	r := newCrashRoot(t)
	ctx := context.Background()
	keep := write(t, r.cs, "kept", imageLabels("kept-id", "kept-name"))
	w, err := r.cs.Writer(ctx, content.WithRef("rival"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("rival"))
	err = w.Commit(ctx, 0, "", content.WithLabels(imageLabels("rival-id", "kept-name")))
	w.Close()
	if !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), "kept-name") {
		t.Fatalf("commit claiming a held name: %v", err)
	}
	d := digest.FromString("rival")
	if _, err := r.cs.Info(ctx, d); !errdefs.IsNotFound(err) {
		t.Errorf("blob of the refused commit: %v", err)
	}
	if h := r.holder(cslabels.ImageIDKind, "rival-id"); h != "" {
		t.Errorf("the refused commit claimed its ID for %s", h)
	}
	checkIntact(t, r.cs, keep, "kept", imageLabels("kept-id", "kept-name"))
	if h := r.holder(cslabels.Image, "kept-name"); h != keep {
		t.Errorf("name held by %q after a refused claim", h)
	}
	w, err = r.cs.Writer(ctx, content.WithRef("rival"))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := w.Status(); st.Offset != 5 {
		t.Errorf("the refused ingest resumes at %d", st.Offset)
	}
	if err := w.Commit(ctx, 5, d, content.WithLabels(imageLabels("rival-id", "rival-name"))); err != nil {
		t.Fatal(err)
	}
	checkIntact(t, r.cs, d, "rival", imageLabels("rival-id", "rival-name"))
}

// TestCrashInDeleteLeavesNoClaims: Delete unlinks the blob before dropping
// its labels. A crash between (the blob removed here as it leaves it)
// leaves labels a Delete of the digest and the next start both drop, with
// the image name and ID they claim.
func TestCrashInDeleteLeavesNoClaims(t *testing.T) {
	r := newCrashRoot(t)
	ctx := context.Background()
	keep := write(t, r.cs, "kept", imageLabels("kept-id", "kept-name"))
	a := write(t, r.cs, "record a", map[string]string{cslabels.ImageMarker: "1", cslabels.ImageID: "a-id", cslabels.ImageNamePrefix + "a-name": "0"})
	b := write(t, r.cs, "record b", map[string]string{cslabels.ImageMarker: "1", cslabels.ImageID: "b-id", cslabels.ImageNamePrefix + "b-name": "0"})
	for _, d := range []digest.Digest{a, b} {
		if err := os.Remove(blobFile(r.root, d)); err != nil {
			t.Fatal(err)
		}
	}
	// In the running store: a Delete drops them (answering as
	// containerd's local store does for a missing blob: nil).
	if err := r.cs.Delete(ctx, a); err != nil && !errdefs.IsNotFound(err) {
		t.Errorf("delete of a blob already unlinked: %v", err)
	}
	if l := r.labels(a); l != nil {
		t.Errorf("labels kept by the delete of a missing blob: %v", l)
	}
	if h := r.holder(cslabels.Image, "a-name"); h != "" {
		t.Errorf("name kept by the delete of a missing blob: %s", h)
	}
	// At the start.
	r.reopen()
	if l := r.labels(b); l != nil {
		t.Errorf("labels without a blob survived the start: %v", l)
	}
	for kind, name := range map[cslabels.Kind]string{cslabels.Image: "b-name", cslabels.ImageIDKind: "b-id"} {
		if h := r.holder(kind, name); h != "" {
			t.Errorf("%s %q of a deleted blob still held by %s", kind, name, h)
		}
	}
	write(t, r.cs, "record b2", map[string]string{cslabels.ImageID: "b-id", cslabels.ImageNamePrefix + "b-name": "0"})
	checkIntact(t, r.cs, keep, "kept", imageLabels("kept-id", "kept-name"))
	if h := r.holder(cslabels.ImageIDKind, "kept-id"); h != keep {
		t.Errorf("ID of a blob the start kept held by %q", h)
	}
}

// TestDeleteRacesCommit: a Delete (containerd's garbage collector) running
// while blobs are committed with a reference label never deletes one: the
// labels are in place before the blob is there to delete.
func TestDeleteRacesCommit(t *testing.T) {
	r := newCrashRoot(t)
	ctx := context.Background()
	const n = 200
	var digests [n]digest.Digest
	for i := range digests {
		digests[i] = digest.FromString(fmt.Sprint("fresh ", i))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, d := range digests {
					if err := r.cs.Delete(ctx, d); err != nil && !errdefs.IsNotFound(err) {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	ref := map[string]string{cslabels.BlobRefPrefix + "layer.bigdata/k": "bigdata"}
	for i := range digests {
		data := fmt.Sprint("fresh ", i)
		err := content.WriteBlob(ctx, r.cs, fmt.Sprint(contentstore.OwnRefPrefix, "fresh.", i), strings.NewReader(data),
			ocispec.Descriptor{Digest: digests[i], Size: int64(len(data))}, content.WithLabels(ref))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.cs.Info(ctx, digests[i]); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("blob %d, committed with a reference, was deleted: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	for i, d := range digests {
		checkIntact(t, r.cs, d, fmt.Sprint("fresh ", i), ref)
	}
}

// TestDeleteRacesUpdate: a reference added while the blob is deleted
// either lands before (the blob is kept) or finds the blob gone (NotFound);
// labels never outlive the blob.
func TestDeleteRacesUpdate(t *testing.T) {
	r := newCrashRoot(t)
	ctx := context.Background()
	refKey := cslabels.BlobRefPrefix + "layer.tar-split"
	kept, gone := 0, 0
	for i := 0; i < 200; i++ {
		data := fmt.Sprint("contested ", i)
		d := write(t, r.cs, data, map[string]string{"other": "x"})
		var wg sync.WaitGroup
		var uerr, derr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, uerr = r.cs.Update(ctx, content.Info{Digest: d, Labels: map[string]string{refKey: "tar-split"}}, "labels."+refKey)
		}()
		go func() {
			defer wg.Done()
			derr = r.cs.Delete(ctx, d)
		}()
		wg.Wait()
		if derr != nil {
			t.Fatalf("delete %d: %v", i, derr)
		}
		switch {
		case uerr == nil:
			kept++
			checkIntact(t, r.cs, d, data, map[string]string{"other": "x", refKey: "tar-split"})
		case errdefs.IsNotFound(uerr):
			gone++
			if _, err := r.cs.Info(ctx, d); !errdefs.IsNotFound(err) {
				t.Fatalf("blob %d: update found it gone, yet info: %v", i, err)
			}
			if l := r.labels(d); l != nil {
				t.Fatalf("blob %d deleted, its labels %v remain", i, l)
			}
		default:
			t.Fatalf("update %d: %v", i, uerr)
		}
	}
	t.Logf("%d kept, %d gone", kept, gone)
}

// TestIngestWithoutData: an ingest directory with its ref but no data file
// (a writer killed after making the directory, or in Commit after moving
// the data to blobs/) goes at the start and from ListStatuses (containerd's
// garbage collector's pass), but never while a writer of the store holds
// its ref. Other ingests and blobs stay.
func TestIngestWithoutData(t *testing.T) {
	r := newCrashRoot(t)
	ctx := context.Background()
	ingests := filepath.Join(r.root, "content", "ingest")
	dataless := func(ref string) string {
		t.Helper()
		dir := filepath.Join(ingests, digest.FromString(ref).Encoded())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		ts, _ := time.Now().MarshalText()
		for name, v := range map[string][]byte{"ref": []byte(ref), "startedat": ts, "updatedat": ts} {
			if err := os.WriteFile(filepath.Join(dir, name), v, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	exists := func(dir string) bool {
		_, err := os.Stat(dir)
		return err == nil
	}
	blob := write(t, r.cs, "blob", map[string]string{"a": "b"})
	w, err := r.cs.Writer(ctx, content.WithRef("resumable"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("part"))
	w.Close()

	// A writer between making its directory and its data file.
	busy, err := r.cs.Writer(ctx, content.WithRef("busy"))
	if err != nil {
		t.Fatal(err)
	}
	busyDir := filepath.Join(ingests, digest.FromString("busy").Encoded())
	if err := os.Remove(filepath.Join(busyDir, "data")); err != nil {
		t.Fatal(err)
	}
	left := []string{dataless(contentstore.OwnRefPrefix + "apply.99"), dataless("default/1/import-1")}
	st, err := r.cs.ListStatuses(ctx)
	if err != nil || len(st) != 1 || st[0].Ref != "resumable" {
		t.Fatalf("statuses %+v %v", st, err)
	}
	for _, d := range left {
		if exists(d) {
			t.Errorf("ingest without data %s survived ListStatuses", d)
		}
	}
	if !exists(busyDir) {
		t.Error("ListStatuses removed the directory of a writer at work")
	}
	busy.Close()

	// At the start, whatever lists them.
	left = []string{dataless(contentstore.OwnRefPrefix + "apply.100"), dataless("default/1/import-2")}
	r.reopen()
	for _, d := range left {
		if exists(d) {
			t.Errorf("ingest without data %s survived the start", d)
		}
	}
	// The busy writer's directory has no data left either.
	st, err = r.cs.ListStatuses(ctx)
	if err != nil || len(st) != 1 || exists(busyDir) {
		t.Fatalf("statuses after the start %+v %v", st, err)
	}
	checkIntact(t, r.cs, blob, "blob", map[string]string{"a": "b"})
	w, err = r.cs.Writer(ctx, content.WithRef("resumable"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if st, _ := w.Status(); st.Offset != 4 {
		t.Errorf("resumable ingest resumes at %d", st.Offset)
	}
}
