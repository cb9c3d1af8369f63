// Package contentstore is cs-snapshotter's content.Store: blobs and
// resumable ingests on disk (containerd's local store), their labels in the
// daemon's database.
package contentstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// Store is a content.Store whose labels live in the daemon's database.
//
// It is containerd's local store (plugins/content/local) with two pieces
// of its own: the ingest writer (writer.go), which keeps the local store's
// layout but syncs once at commit and writes in large pieces, and readers
// that share one open file per blob (readers.go).
type Store struct {
	content.Store
	root    string
	labels  *metadata.ContentLabels
	locks   refLocks
	blobs   digestLocks
	readers readerCache
	verity  bool
	// readOnly: made by NewReadOnly.
	readOnly bool

	hookMu sync.Mutex
	hook   IngestHook
}

// New returns a content store keeping blobs under root.
func New(root string, db *metadata.DB) (*Store, error) {
	// The local store's Walk fails on a missing blobs directory; an empty
	// store must list as empty.
	if err := os.MkdirAll(filepath.Join(root, "blobs"), 0o700); err != nil {
		return nil, fmt.Errorf("create content root: %w", err)
	}
	ls := db.ContentLabels()
	cs, err := local.NewLabeledStore(root, ls)
	if err != nil {
		return nil, fmt.Errorf("open content store %s: %w", root, err)
	}
	return &Store{Store: cs, root: root, labels: ls, verity: verityProbe(root)}, nil
}

// Close closes the blob files kept open for readers; readers still open
// keep theirs until they close. The store remains usable.
func (s *Store) Close() error {
	s.readers.closeIdle()
	return nil
}

// Info returns the size, times and labels of a blob.
func (s *Store) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	if _, err := s.blobPath(dgst); err != nil {
		return content.Info{}, fmt.Errorf("info of content: %w", err)
	}
	return s.Store.Info(ctx, dgst)
}

// Update changes the labels of a blob, rejecting labels over containerd's
// size limit.
func (s *Store) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	if err := s.refuseWrite("update content"); err != nil {
		return content.Info{}, err
	}
	if _, err := s.blobPath(info.Digest); err != nil {
		return content.Info{}, fmt.Errorf("update content: %w", err)
	}
	if err := metadata.ValidateLabels(info.Labels); err != nil {
		return content.Info{}, fmt.Errorf("update content %s: %w", info.Digest, err)
	}
	// Held so that labels are never written for a blob Delete is
	// unlinking (they would outlive it, claiming its names), and a
	// reference added here is seen by a Delete that follows.
	defer s.blobs.lock(info.Digest)()
	return s.Store.Update(ctx, info, fieldpaths...)
}

// Delete removes a blob and its labels, so a blob ingested again later does
// not inherit them.
//
// A blob a layer of the store uses (a cslabels.BlobRefPrefix label) is kept:
// containerd's garbage collector deletes backend blobs it does not know, and
// the store's own blobs are not known to it. Delete answers nil then, as the
// blob is none of the caller's business; the store drops its references
// before deleting.
//
// The blob goes first, its labels after, under the blob's lock (which
// Commit and Update hold too, so the check of the references cannot miss
// one being added). A crash between leaves labels without a blob, which
// claim nothing once AbortOwn drops them at the next start; the other
// order could leave a blob without the labels that say who uses it.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	if err := s.refuseWrite("delete content"); err != nil {
		return err
	}
	p, err := s.blobPath(dgst)
	if err != nil {
		return fmt.Errorf("delete content: %w", err)
	}
	defer s.blobs.lock(dgst)()
	labels, err := s.labels.Get(dgst)
	if err != nil {
		return fmt.Errorf("delete content %s: %w", dgst, err)
	}
	if ref := referenced(labels); ref != "" {
		log.G(ctx).WithField("digest", dgst).WithField("ref", ref).Debug("kept a blob the store uses")
		return nil
	}
	err = s.Store.Delete(ctx, dgst)
	// Unlinked (or never there): readers to come must not find it cached.
	s.readers.forget(dgst)
	if err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	if labels == nil {
		return err // containerd's blobs have none: no transaction for them
	}
	if err == nil {
		// The unlink on disk before the labels go, or a crash could bring
		// the blob back without them. Failing that, such a blob claims
		// nothing and is unused: not a reason to keep the labels.
		if serr := syncDir(filepath.Dir(p)); serr != nil {
			log.G(ctx).WithError(serr).WithField("digest", dgst).Warn("failed to sync the removal of a blob")
		}
	}
	// Labels without a blob (a crash, or the blob removed behind the
	// store) are dropped too: they are what a missing blob leaves.
	if lerr := s.labels.Delete(dgst); lerr != nil {
		return fmt.Errorf("delete labels of %s: %w", dgst, lerr)
	}
	return err
}

// Walk calls fn for every blob matching filters. Unlike containerd's local
// store, whose walk fails as a whole when a blob is deleted while it runs,
// it skips blobs that go meanwhile: containerd's garbage collector and the
// store list and delete blobs at the same time.
func (s *Store) Walk(ctx context.Context, fn content.WalkFunc, fs ...string) error {
	filter, err := metadata.ParseFilters(fs...)
	if err != nil {
		return fmt.Errorf("walk content: %w", err)
	}
	// One image name or ID: the index knows its blob; the rest need not
	// be read.
	if kind, name, ok := metadata.IndexedFilter(fs); ok && (kind == cslabels.Image || kind == cslabels.ImageIDKind) {
		dgst, err := s.labels.Holder(ctx, kind, name)
		if err != nil || dgst == "" {
			return err
		}
		info, err := s.Store.Info(ctx, dgst)
		if errdefs.IsNotFound(err) {
			return nil
		}
		if err != nil || !filter.Match(content.AdaptInfo(info)) {
			return err
		}
		return fn(info)
	}
	// The labels of all blobs in one read, then one lstat per blob: what
	// containerd's Info does per blob, without a transaction each.
	labels, err := s.labels.All()
	if err != nil {
		return fmt.Errorf("walk content: %w", err)
	}
	blobs := filepath.Join(s.root, "blobs")
	algs, err := os.ReadDir(blobs)
	if err != nil {
		return err
	}
	for _, a := range algs {
		alg := digest.Algorithm(a.Name())
		if !a.IsDir() || !alg.Available() {
			continue
		}
		names, err := os.ReadDir(filepath.Join(blobs, a.Name()))
		if err != nil {
			return err
		}
		for _, n := range names {
			dgst := digest.NewDigestFromEncoded(alg, n.Name())
			if dgst.Validate() != nil {
				continue
			}
			fi, err := n.Info()
			if errors.Is(err, os.ErrNotExist) {
				continue // deleted meanwhile
			}
			if err != nil {
				return err
			}
			info := content.Info{Digest: dgst, Size: fi.Size(), CreatedAt: fi.ModTime(), UpdatedAt: fi.ModTime(), Labels: labels[dgst]}
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				info.UpdatedAt = time.Unix(st.Atim.Unix())
			}
			if !filter.Match(content.AdaptInfo(info)) {
				continue
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// OwnRefPrefix begins the refs of the ingests the daemon and the store
// write for themselves (tar-splits, big data). They are left out of
// ListStatuses without filters: containerd's garbage collector aborts every
// backend ingest it does not know of, and it learns of them only from
// there. One left by a crash is aborted when the root is next opened, and
// one nobody writes any more by the store's GarbageCollect.
const OwnRefPrefix = "cs."

// OwnIngests is a ListStatuses filter selecting the daemon's own ingests
// (refs beginning with OwnRefPrefix).
const OwnIngests = `ref~="^cs[.]"`

// ListStatuses lists the ingests in progress. A listing without filters
// leaves out the daemon's own; a filtered one lists them too when they
// match (OwnIngests selects only them), so the store can find its own
// through the socket. containerd never filters the listings it asks of a
// backend store: its metadata store lists everything and filters itself.
func (s *Store) ListStatuses(ctx context.Context, filters ...string) ([]content.Status, error) {
	all, err := s.listStatuses(ctx, filters...)
	if err != nil {
		return nil, err
	}
	for _, f := range filters {
		if f != "" {
			return all, nil
		}
	}
	out := all[:0]
	for _, st := range all {
		if !strings.HasPrefix(st.Ref, OwnRefPrefix) {
			out = append(out, st)
		}
	}
	return out, nil
}

// listStatuses lists the ingests, skipping those that finish while the list
// is read. containerd's local store fails the whole listing then (its
// os.IsNotExist check misses the wrapped error), and the daemon's own short
// ingests (tar-splits committed during an unpack) finish often enough for
// containerd's garbage collector, which lists at any moment, to trip on it.
func (s *Store) listStatuses(ctx context.Context, fs ...string) ([]content.Status, error) {
	filter, err := metadata.ParseFilters(fs...)
	if err != nil {
		return nil, fmt.Errorf("list ingests: %w", err)
	}
	walker, ok := s.Store.(interface {
		WalkStatusRefs(context.Context, func(string) error) error
	})
	if !ok {
		return s.Store.ListStatuses(ctx, fs...)
	}
	var out []content.Status
	err = walker.WalkStatusRefs(ctx, func(ref string) error {
		st, err := s.Store.Status(ctx, ref)
		if errdefs.IsNotFound(err) {
			// Finished meanwhile, or a directory without data that a
			// writer killed early (or late, in Commit) left: nothing
			// lists that one, so it goes here, where containerd's
			// garbage collector passes. Failing that, it stays for the
			// next pass: not a reason to fail the listing.
			if err := s.removeDataless(ctx, ref); err != nil {
				log.G(ctx).WithError(err).WithField("ref", ref).Warn("failed to remove an ingest without data")
			}
			return nil
		}
		if err != nil {
			// Files a crash cut short (the ingest writer does not sync
			// them): the next Writer for the ref starts it afresh and
			// AbortOwn removes it at start. Not a reason to fail the
			// listing containerd's garbage collector depends on.
			log.G(ctx).WithError(err).WithField("ref", ref).Warn("skipping unreadable ingest")
			return nil
		}
		if filter.Match(filters.AdapterFunc(func(fieldpath []string) (string, bool) {
			// containerd's local store's adaptor: any path under "ref".
			if len(fieldpath) > 0 && fieldpath[0] == "ref" {
				return st.Ref, true
			}
			return "", false
		})) {
			out = append(out, st)
		}
		return nil
	})
	return out, err
}

// AbortOwn clears what a crash left, as nothing else can be writing when
// the root has just been opened: the daemon's own ingests, ingests whose
// files are unreadable or missing, and labels whose blob is gone.
func (s *Store) AbortOwn(ctx context.Context) error {
	if err := s.refuseWrite("abort ingests"); err != nil {
		return err
	}
	all, err := s.listStatuses(ctx)
	if err != nil {
		return err
	}
	for _, st := range all {
		if strings.HasPrefix(st.Ref, OwnRefPrefix) {
			if err := s.Store.Abort(ctx, st.Ref); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("abort ingest %q: %w", st.Ref, err)
			}
			log.G(ctx).WithField("ref", st.Ref).Info("aborted an ingest left by a crash")
		}
	}
	return errors.Join(s.removeBrokenIngests(ctx), s.dropOrphanLabels(ctx))
}

// removeBrokenIngests removes the ingest directories whose files a crash
// left unreadable or incomplete (no data file: a writer killed before it
// made it, or in Commit after moving it to blobs/): no writer can resume
// them and no listing shows them. Only for the start, when no writer can be
// between making the directory and its files.
func (s *Store) removeBrokenIngests(ctx context.Context) error {
	dir := filepath.Join(s.root, "ingest")
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("list ingests: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		ref, err := os.ReadFile(filepath.Join(path, "ref"))
		if err == nil && len(ref) > 0 && s.ingestPath(string(ref)) == path {
			if _, err = s.Store.Status(ctx, string(ref)); err == nil {
				continue
			}
		}
		if err := os.RemoveAll(path); err != nil {
			return fmt.Errorf("remove broken ingest: %w", err)
		}
		log.G(ctx).WithError(err).WithField("path", path).Info("removed an ingest a crash left unreadable or without data")
	}
	return nil
}

// removeDataless removes the ingest directory of ref if it has no data
// file and no writer of this store has ref. No other process writes in
// the root, and this store's writers make and remove the directory holding
// their ref's lock; so, taking the lock, the directory is the remains of a
// writer killed meanwhile, however young. Holding the lock also keeps a
// writer for ref from starting while it goes (it is told to retry).
func (s *Store) removeDataless(ctx context.Context, ref string) error {
	if ref == "" || s.locks.tryLock(ref) != nil {
		return nil // no ref a writer can have, or being written or committed
	}
	defer s.locks.unlock(ref)
	path := s.ingestPath(ref)
	if _, err := os.Lstat(filepath.Join(path, "data")); !errors.Is(err, os.ErrNotExist) {
		return nil // has data (or cannot tell): not this function's
	}
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil // committed or aborted meanwhile
	}
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("remove ingest %q without data: %w", ref, err)
	}
	log.G(ctx).WithField("ref", ref).Info("removed an ingest without data")
	return nil
}

// dropOrphanLabels drops the labels of blobs that are not there: Commit
// writes a blob's labels before moving it in place, Delete drops them
// after unlinking it, and a crash between leaves them, claiming the image
// names and IDs among them for nobody.
func (s *Store) dropOrphanLabels(ctx context.Context) error {
	all, err := s.labels.All()
	if err != nil {
		return fmt.Errorf("list content labels: %w", err)
	}
	var errs []error
	for dgst := range all {
		p, err := s.blobPath(dgst)
		if err != nil {
			// Not a digest: no blob can ever be there.
			p = ""
		}
		if err := s.dropLabelsIfMissing(ctx, dgst, p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dropLabelsIfMissing drops the labels of dgst if its blob (at p; "" for
// none possible) is missing, under the blob's lock.
func (s *Store) dropLabelsIfMissing(ctx context.Context, dgst digest.Digest, p string) error {
	defer s.blobs.lock(dgst)()
	if p != "" {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			return nil // there (or cannot tell): keep
		}
	}
	if err := s.labels.Delete(dgst); err != nil {
		return fmt.Errorf("drop labels of missing blob %s: %w", dgst, err)
	}
	log.G(ctx).WithField("digest", dgst).Info("dropped the labels of a blob a crash left missing")
	return nil
}

// Status returns the status of the ingest ref.
func (s *Store) Status(ctx context.Context, ref string) (content.Status, error) {
	if ref == "" {
		return content.Status{}, fmt.Errorf("status of ingest: ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	return s.Store.Status(ctx, ref)
}

// Abort removes the ingest ref.
func (s *Store) Abort(ctx context.Context, ref string) error {
	if err := s.refuseWrite("abort ingest"); err != nil {
		return err
	}
	if ref == "" {
		return fmt.Errorf("abort ingest: ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	return s.Store.Abort(ctx, ref)
}

// Release drops reference label ref from blob dgst and deletes the blob once
// no cslabels.BlobRefPrefix label is left. It works on any content.Store, so
// the store can use it through the daemon's socket too.
func Release(ctx context.Context, cs content.Store, dgst digest.Digest, ref string) error {
	info, err := cs.Update(ctx, content.Info{Digest: dgst}, "labels."+ref)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	if referenced(info.Labels) != "" {
		return nil
	}
	if err := cs.Delete(ctx, dgst); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// referenced returns a reference label among labels, or "".
func referenced(labels map[string]string) string {
	for key := range labels {
		if strings.HasPrefix(key, cslabels.BlobRefPrefix) {
			return key
		}
	}
	return ""
}

// digestLocks serializes the changes to one blob: its appearance (Commit),
// its labels (Update) and its removal (Delete). The blob file and its
// labels live apart (the file system, the database); the lock makes each
// change of the pair whole to the others.
type digestLocks struct {
	mu sync.Mutex
	m  map[digest.Digest]*digestLock
}

type digestLock struct {
	sync.Mutex
	users int // holders and waiters; the entry goes with the last
}

// lock locks dgst and returns the unlock.
func (l *digestLocks) lock(dgst digest.Digest) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[digest.Digest]*digestLock{}
	}
	e := l.m[dgst]
	if e == nil {
		e = &digestLock{}
		l.m[dgst] = e
	}
	e.users++
	l.mu.Unlock()
	e.Lock()
	return func() {
		e.Unlock()
		l.mu.Lock()
		if e.users--; e.users == 0 {
			delete(l.m, dgst)
		}
		l.mu.Unlock()
	}
}
