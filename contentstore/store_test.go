package contentstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

func newTestStore(t *testing.T) content.Store {
	t.Helper()
	_, cs, closeFn, err := newStore(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFn() })
	return cs
}

func write(t testing.TB, cs content.Store, data string, labels map[string]string) digest.Digest {
	t.Helper()
	d := digest.FromString(data)
	err := content.WriteBlob(context.Background(), cs, "ref-"+data, strings.NewReader(data),
		ocispec.Descriptor{Digest: d, Size: int64(len(data))}, content.WithLabels(labels))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDeleteDropsLabels: a blob written again after Delete starts bare.
func TestDeleteDropsLabels(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	d := write(t, cs, "hello", map[string]string{"owner": "me"})
	if err := cs.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Info(ctx, d); !errdefs.IsNotFound(err) {
		t.Fatalf("info after delete: %v", err)
	}
	write(t, cs, "hello", nil)
	info, err := cs.Info(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Labels) != 0 {
		t.Errorf("re-ingested blob inherited labels %v", info.Labels)
	}
}

// TestLabelLimit: labels over containerd's limit are refused with
// InvalidArgument and nothing changes.
func TestLabelLimit(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	big := map[string]string{"big": strings.Repeat("x", 4097)}
	d := write(t, cs, "kept", map[string]string{"owner": "me"})

	_, err := cs.Update(ctx, content.Info{Digest: d, Labels: big}, "labels.big")
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), d.String()) {
		t.Errorf("update with a huge label: %v", err)
	}
	info, err := cs.Info(ctx, d)
	if err != nil || info.Labels["owner"] != "me" || len(info.Labels) != 1 {
		t.Errorf("blob changed by a refused update: %+v %v", info, err)
	}

	data := "refused"
	err = content.WriteBlob(ctx, cs, "ref-refused", strings.NewReader(data),
		ocispec.Descriptor{Digest: digest.FromString(data), Size: int64(len(data))}, content.WithLabels(big))
	if !errdefs.IsInvalidArgument(err) {
		t.Errorf("commit with a huge label: %v", err)
	}
	if _, err := cs.Info(ctx, digest.FromString(data)); !errdefs.IsNotFound(err) {
		t.Errorf("refused blob was stored: %v", err)
	}
	if _, err := cs.Info(ctx, d); err != nil {
		t.Errorf("other blob lost: %v", err)
	}
}

// TestDeleteKeepsStoreBlobs: a blob a store layer references survives
// Delete (containerd's GC) until the reference goes.
func TestDeleteKeepsStoreBlobs(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	ref := cslabels.BlobRefPrefix + "0123"
	d := write(t, cs, "tar-split", map[string]string{ref: "tar-split"})
	if err := cs.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Info(ctx, d); err != nil {
		t.Fatalf("referenced blob deleted: %v", err)
	}
	if _, err := cs.Update(ctx, content.Info{Digest: d}, "labels."+ref); err != nil {
		t.Fatal(err)
	}
	if err := cs.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Info(ctx, d); !errdefs.IsNotFound(err) {
		t.Fatalf("unreferenced blob kept: %v", err)
	}
}

// TestOwnIngestsHidden: the daemon's own ingests are not listed, so
// containerd's GC, which aborts every listed ingest it does not know, leaves
// them be; AbortOwn clears them after a crash.
func TestOwnIngestsHidden(t *testing.T) {
	_, cs, closeFn, err := newStore(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	ctx := context.Background()
	for _, ref := range []string{contentstore.OwnRefPrefix + "tar-split.x", "pull-layer"} {
		w, err := cs.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("partial"))
		w.Close()
	}
	st, err := cs.ListStatuses(ctx)
	if err != nil || len(st) != 1 || st[0].Ref != "pull-layer" {
		t.Fatalf("statuses %+v %v", st, err)
	}
	if _, err := cs.Status(ctx, contentstore.OwnRefPrefix+"tar-split.x"); err != nil {
		t.Errorf("own ingest not reachable by ref: %v", err)
	}
	if err := cs.(*contentstore.Store).AbortOwn(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Status(ctx, contentstore.OwnRefPrefix+"tar-split.x"); !errdefs.IsNotFound(err) {
		t.Errorf("own ingest after AbortOwn: %v", err)
	}
	if _, err := cs.Status(ctx, "pull-layer"); err != nil {
		t.Errorf("containerd's ingest lost: %v", err)
	}
}

// TestListStatusesWhileIngestsFinish: ingests committed while the list is
// read do not fail it (containerd's GC lists them at any moment).
func TestListStatusesWhileIngestsFinish(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 300; i++ {
			data := fmt.Sprintf("blob %d", i)
			content.WriteBlob(ctx, cs, contentstore.OwnRefPrefix+data, strings.NewReader(data),
				ocispec.Descriptor{Digest: digest.FromString(data), Size: int64(len(data))})
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		if _, err := cs.ListStatuses(ctx); err != nil {
			t.Fatalf("listing while ingests finish: %v", err)
		}
	}
}

// TestWalkWhileBlobsGo: blobs deleted while the store is walked do not fail
// the walk (containerd's GC and the store delete while others list).
func TestWalkWhileBlobsGo(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	var all []digest.Digest
	for i := 0; i < 300; i++ {
		all = append(all, write(t, cs, fmt.Sprintf("doomed %d", i), nil))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, d := range all {
			cs.Delete(ctx, d)
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		if err := cs.Walk(ctx, func(content.Info) error { return nil }); err != nil {
			t.Fatalf("walk while blobs go: %v", err)
		}
	}
}
