package contentstore_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// refSubjects are the two faces CommitReferenced must work on: the store
// itself (as the differ and an embedded store use it) and the store through
// the socket (containerd's content proxy, as a store through the daemon
// uses it). direct is the store itself, to look at what happened.
func refSubjects(t *testing.T) (direct content.Store, faces map[string]content.Store) {
	t.Helper()
	cs := newTestStore(t)
	remote := contentproxy.NewContentStore(contentapi.NewContentClient(serveContent(t, cs, t.TempDir())))
	return cs, map[string]content.Store{"local": cs, "grpc": remote}
}

// commitRef writes data to ingest ref and commits it with CommitReferenced
// and labels.
func commitRef(ctx context.Context, cs content.Store, ref, data string, labels map[string]string) (digest.Digest, error) {
	w, err := content.OpenWriter(ctx, cs, content.WithRef(ref))
	if err != nil {
		return "", err
	}
	defer w.Close()
	if err := w.Truncate(0); err != nil {
		return "", err
	}
	if _, err := w.Write([]byte(data)); err != nil {
		return "", err
	}
	return contentstore.CommitReferenced(ctx, cs, w, labels)
}

func refLabel(user string) map[string]string {
	return map[string]string{cslabels.BlobRefPrefix + user + ".tar-split": "tar-split"}
}

// labelsOf returns the labels of blob d, nil if it is not there.
func labelsOf(t *testing.T, cs content.Store, d digest.Digest) (map[string]string, bool) {
	t.Helper()
	info, err := cs.Info(context.Background(), d)
	if errdefs.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return info.Labels, true
}

// noIngest fails if ingest ref is still there.
func noIngest(t *testing.T, cs content.Store, ref string) {
	t.Helper()
	if st, err := cs.Status(context.Background(), ref); !errdefs.IsNotFound(err) {
		t.Errorf("ingest %q left behind: %+v %v", ref, st, err)
	}
}

// TestSharedBlobs: two users committing the same bytes share the blob,
// each with its reference; releasing one leaves the blob to the other
// (and to containerd's garbage collector's Delete), releasing both
// deletes it and its labels.
func TestSharedBlobs(t *testing.T) {
	direct, faces := refSubjects(t)
	ctx := context.Background()
	for name, cs := range faces {
		t.Run(name, func(t *testing.T) {
			data := "shared tar-split of " + name
			other := write(t, direct, "unrelated "+name, refLabel("unrelated"))
			a, err := commitRef(ctx, cs, "cs.tar-split.a-"+name, data, refLabel("a"))
			if err != nil {
				t.Fatal(err)
			}
			b, err := commitRef(ctx, cs, "cs.tar-split.b-"+name, data, refLabel("b"))
			if err != nil {
				t.Fatalf("commit of bytes already there: %v", err)
			}
			if a != b || a != digest.FromString(data) {
				t.Fatalf("digests %s and %s for the same bytes", a, b)
			}
			both := refLabel("a")
			for k, v := range refLabel("b") {
				both[k] = v
			}
			checkIntact(t, direct, a, data, both) // and no cs.commit.add-refs label
			noIngest(t, direct, "cs.tar-split.a-"+name)
			noIngest(t, direct, "cs.tar-split.b-"+name)

			if err := contentstore.Release(ctx, cs, a, cslabels.BlobRefPrefix+"a.tar-split"); err != nil {
				t.Fatal(err)
			}
			checkIntact(t, direct, a, data, refLabel("b"))
			if err := cs.Delete(ctx, a); err != nil {
				t.Fatalf("garbage collector's delete: %v", err)
			}
			checkIntact(t, direct, a, data, refLabel("b"))

			if err := contentstore.Release(ctx, cs, a, cslabels.BlobRefPrefix+"b.tar-split"); err != nil {
				t.Fatal(err)
			}
			if l, ok := labelsOf(t, direct, a); ok {
				t.Fatalf("blob outlived its last reference, labels %v", l)
			}
			// No label stayed behind: the same bytes come back bare.
			write(t, direct, data, nil)
			checkIntact(t, direct, a, data, nil)
			checkIntact(t, direct, other, "unrelated "+name, refLabel("unrelated"))
		})
	}
}

// TestSharedBlobsConcurrently: users committing the same bytes while
// others release theirs and containerd's garbage collector deletes it:
// once a CommitReferenced returns, the blob is there with the caller's
// reference until the caller releases it, and when all have let go,
// neither the blob nor a label of it is left.
func TestSharedBlobsConcurrently(t *testing.T) {
	direct, faces := refSubjects(t)
	ctx := context.Background()
	for name, cs := range faces {
		t.Run(name, func(t *testing.T) {
			const users = 4
			rounds := 150
			if name == "grpc" {
				rounds = 60
			}
			data := "contended blob " + name
			dgst := digest.FromString(data)
			stop := make(chan struct{})
			var gc sync.WaitGroup
			gc.Add(1)
			go func() {
				defer gc.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := cs.Delete(ctx, dgst); err != nil && !errdefs.IsNotFound(err) {
						t.Errorf("garbage collector's delete: %v", err)
						return
					}
				}
			}()
			var wg sync.WaitGroup
			for u := 0; u < users; u++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					user := fmt.Sprintf("user%d-%s", u, name)
					key := cslabels.BlobRefPrefix + user + ".tar-split"
					for i := 0; i < rounds; i++ {
						d, err := commitRef(ctx, cs, fmt.Sprintf("cs.tar-split.%s.%d", user, i), data, refLabel(user))
						if err != nil {
							t.Errorf("%s round %d: commit: %v", user, i, err)
							return
						}
						info, err := direct.Info(ctx, d)
						if err != nil {
							t.Errorf("%s round %d: blob it holds a reference to is gone: %v", user, i, err)
							return
						}
						if info.Labels[key] == "" {
							t.Errorf("%s round %d: blob lacks its reference: %v", user, i, info.Labels)
							return
						}
						got, err := content.ReadBlob(ctx, direct, ocispec.Descriptor{Digest: d, Size: int64(len(data))})
						if err != nil || string(got) != data {
							t.Errorf("%s round %d: blob it holds a reference to reads %q, %v", user, i, got, err)
							return
						}
						if err := contentstore.Release(ctx, cs, d, key); err != nil {
							t.Errorf("%s round %d: release: %v", user, i, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(stop)
			gc.Wait()
			if l, ok := labelsOf(t, direct, dgst); ok {
				t.Errorf("blob outlived every reference, labels %v", l)
			}
			write(t, direct, data, nil)
			checkIntact(t, direct, dgst, data, nil)
			if err := direct.Delete(ctx, dgst); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// blobLabels maps every blob to its labels, for comparing a store before
// and after a refused call.
func blobLabels(t *testing.T, cs content.Store) map[digest.Digest]map[string]string {
	t.Helper()
	out := map[digest.Digest]map[string]string{}
	if err := cs.Walk(context.Background(), func(info content.Info) error {
		out[info.Digest] = info.Labels
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func sameBlobs(t *testing.T, got, want map[digest.Digest]map[string]string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("blobs changed by a refused call:\n got  %v\n want %v", got, want)
	}
}

// TestCommitReferencedRefusals: a commit asking to add references without
// one to add, and one whose labels are over the limit, are refused with
// InvalidArgument; the blobs and their labels stay as they were, and
// CommitReferenced leaves no ingest behind.
func TestCommitReferencedRefusals(t *testing.T) {
	direct, faces := refSubjects(t)
	ctx := context.Background()
	for name, cs := range faces {
		t.Run(name, func(t *testing.T) {
			data := "refusals " + name
			held, err := commitRef(ctx, cs, "cs.held-"+name, data, refLabel("holder"))
			if err != nil {
				t.Fatal(err)
			}
			before := blobLabels(t, direct)

			// No reference at all: refused before anything is committed.
			_, err = commitRef(ctx, cs, "cs.noref-"+name, data, map[string]string{"other": "x"})
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("CommitReferenced without a reference: %v", err)
			}
			sameBlobs(t, blobLabels(t, direct), before)
			cs.Abort(ctx, "cs.noref-"+name)

			// The request without a reference, made by hand: refused, and
			// the writer stays open, as for any label refusal.
			w, err := content.OpenWriter(ctx, cs, content.WithRef("cs.bare-"+name))
			if err != nil {
				t.Fatal(err)
			}
			w.Truncate(0)
			w.Write([]byte(data))
			err = w.Commit(ctx, 0, "", content.WithLabels(map[string]string{cslabels.CommitAddRefs: "1", "other": "x"}))
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), cslabels.CommitAddRefs) {
				t.Errorf("commit asking to add no reference: %v", err)
			}
			sameBlobs(t, blobLabels(t, direct), before)
			if name == "local" {
				// The remote writer's stream ends with any commit.
				if d, err := contentstore.CommitReferenced(ctx, cs, w, refLabel("bare")); err != nil || d != held {
					t.Errorf("commit after the refusal: %s %v", d, err)
				}
				before[held] = merged(before[held], refLabel("bare"))
				sameBlobs(t, blobLabels(t, direct), before)
			}
			w.Close()
			cs.Abort(ctx, "cs.bare-"+name)

			// A label over the limit: refused, ingest aborted.
			huge := map[string]string{cslabels.BlobRefPrefix + "huge.tar-split": strings.Repeat("x", 4096)}
			if _, err := commitRef(ctx, cs, "cs.huge-"+name, data, huge); !errdefs.IsInvalidArgument(err) {
				t.Errorf("commit with a label over the limit: %v", err)
			}
			noIngest(t, direct, "cs.huge-"+name)
			sameBlobs(t, blobLabels(t, direct), before)
			checkIntact(t, direct, held, data, before[held])
		})
	}
}

func merged(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// TestCommitReferencedAddsOnlyRefs: on a blob already there, only the
// references among the commit's labels are added; its other labels stay
// the first committer's.
func TestCommitReferencedAddsOnlyRefs(t *testing.T) {
	direct, faces := refSubjects(t)
	ctx := context.Background()
	for name, cs := range faces {
		t.Run(name, func(t *testing.T) {
			data := "only refs " + name
			first := merged(refLabel("first"), map[string]string{"note": "first"})
			d, err := commitRef(ctx, cs, "cs.first-"+name, data, first)
			if err != nil {
				t.Fatal(err)
			}
			checkIntact(t, direct, d, data, first)
			if _, err := commitRef(ctx, cs, "cs.second-"+name, data, merged(refLabel("second"), map[string]string{"note": "second"})); err != nil {
				t.Fatal(err)
			}
			checkIntact(t, direct, d, data, merged(first, refLabel("second")))
		})
	}
}

// TestCommitExistingWithoutAddRefs: a commit that does not ask
// (containerd's, and the store's exclusive ones) gets containerd's answer
// for a blob already there, AlreadyExists, references or not, and the
// blob's labels do not change.
func TestCommitExistingWithoutAddRefs(t *testing.T) {
	direct, faces := refSubjects(t)
	ctx := context.Background()
	for name, cs := range faces {
		t.Run(name, func(t *testing.T) {
			data := "exclusive " + name
			d, err := commitRef(ctx, cs, "cs.owner-"+name, data, refLabel("owner"))
			if err != nil {
				t.Fatal(err)
			}
			w, err := content.OpenWriter(ctx, cs, content.WithRef("cs.rival-"+name))
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			w.Write([]byte(data))
			err = w.Commit(ctx, 0, "", content.WithLabels(refLabel("rival")))
			if !errdefs.IsAlreadyExists(err) {
				t.Errorf("commit of an existing blob without asking to add references: %v", err)
			}
			checkIntact(t, direct, d, data, refLabel("owner"))
			noIngest(t, direct, "cs.rival-"+name)
		})
	}
}

// answersAlreadyExists is a store in front of the daemon's that answers
// AlreadyExists for a blob there itself, as containerd's metadata store
// does (the daemon never sees cslabels.CommitAddRefs then).
type answersAlreadyExists struct{ content.Store }

func (s answersAlreadyExists) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	w, err := s.Store.Writer(ctx, opts...)
	return stripAddRefs{w}, err
}

type stripAddRefs struct{ content.Writer }

func (w stripAddRefs) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	var info content.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return err
		}
	}
	l := merged(info.Labels, nil)
	delete(l, cslabels.CommitAddRefs)
	return w.Writer.Commit(ctx, size, expected, content.WithLabels(l))
}

// TestCommitReferencedThroughAnotherStore: when a store in between answers
// AlreadyExists itself, CommitReferenced still leaves the blob with the
// caller's reference (by an Update).
func TestCommitReferencedThroughAnotherStore(t *testing.T) {
	direct, faces := refSubjects(t)
	ctx := context.Background()
	for name, cs := range faces {
		t.Run(name, func(t *testing.T) {
			cs := answersAlreadyExists{cs}
			data := "in between " + name
			d, err := commitRef(ctx, cs, "cs.one-"+name, data, refLabel("one"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := commitRef(ctx, cs, "cs.two-"+name, data, refLabel("two")); err != nil {
				t.Fatal(err)
			}
			checkIntact(t, direct, d, data, merged(refLabel("one"), refLabel("two")))
			noIngest(t, direct, "cs.two-"+name)
		})
	}
}
