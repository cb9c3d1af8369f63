package contentstore

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// The ingest writer replaces the one of containerd's local store, keeping
// its on-disk layout (ingest/<sha256 of ref>/{ref,startedat,updatedat,total,data}),
// so the local store's Status, ListStatuses and Abort, which the Store still
// uses, see its ingests, and an ingest either started resumes with the
// other. What it does differently is the cost:
//
//   - The ingest's bookkeeping files are written without O_SYNC (the local
//     store syncs two of them when an ingest starts: two journal commits,
//     ~2 ms here, as much as the rest of a small blob's ingest). Only Commit
//     syncs, once for the data and once for its directory. An ingest whose
//     files a crash left unreadable is started afresh by the next Writer for
//     its ref, skipped by ListStatuses and removed by AbortOwn.
//   - Writes of writeDirect bytes or more go to the file on another goroutine
//     while the caller's goroutine digests them: one pass over the data, no
//     copy, the two halves in parallel.
//   - Smaller writes are gathered into a buffer of bufSize and written
//     together (compress/flate, under the daemon's tar-splits, writes 240
//     bytes at a time). They are digested as they come, so Status and Digest
//     never need to flush.
//   - Every writebackChunk bytes the kernel is told to start writing the
//     data out (sync_file_range), so the fsync at Commit finds most of it on
//     disk already instead of writing a whole large blob then.
const (
	bufSize        = 1 << 20
	writeDirect    = 128 << 10
	writebackChunk = 8 << 20
)

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, bufSize)
	return &b
}}

// refLocks holds the refs being written, one writer per ref.
type refLocks struct {
	mu    sync.Mutex
	since map[string]time.Time
}

func (l *refLocks) tryLock(ref string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if since, ok := l.since[ref]; ok {
		return fmt.Errorf("ref %s locked for %s (since %s): %w", ref, time.Since(since), since, errdefs.ErrUnavailable)
	}
	if l.since == nil {
		l.since = map[string]time.Time{}
	}
	l.since[ref] = time.Now()
	return nil
}

func (l *refLocks) unlock(ref string) {
	l.mu.Lock()
	delete(l.since, ref)
	l.mu.Unlock()
}

// Writer starts or resumes the ingest ref. Only one writer per ref may be
// open at a time; another gets ErrUnavailable.
func (s *Store) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	if err := s.refuseWrite("write content"); err != nil {
		return nil, err
	}
	var wOpts content.WriterOpts
	for _, opt := range opts {
		if err := opt(&wOpts); err != nil {
			return nil, err
		}
	}
	ref := wOpts.Ref
	if err := validateRef(ref); err != nil {
		return nil, err
	}
	if err := s.locks.tryLock(ref); err != nil {
		return nil, err
	}
	w, err := s.newWriter(ctx, ref, wOpts.Desc.Size, wOpts.Desc.Digest)
	if err != nil {
		s.locks.unlock(ref)
		return nil, err
	}
	return w, nil // the lock is the writer's now
}

// validateRef refuses the refs no ingest can have: empty ones, and those
// containerd's gRPC API cannot carry (not UTF-8), which would make every
// listing of ingests over the socket fail.
func validateRef(ref string) error {
	if ref == "" {
		return fmt.Errorf("ingest ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if !utf8.ValidString(ref) {
		return fmt.Errorf("ingest ref %q is not valid UTF-8: %w", ref, errdefs.ErrInvalidArgument)
	}
	return nil
}

func (s *Store) ingestPath(ref string) string {
	// The local store's layout: a digest of the ref keeps paths short.
	return filepath.Join(s.root, "ingest", digest.FromString(ref).Encoded())
}

func (s *Store) blobPath(dgst digest.Digest) (string, error) {
	if err := dgst.Validate(); err != nil {
		return "", fmt.Errorf("invalid digest %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	return filepath.Join(s.root, "blobs", dgst.Algorithm().String(), dgst.Encoded()), nil
}

func (s *Store) newWriter(ctx context.Context, ref string, total int64, expected digest.Digest) (*writer, error) {
	if expected != "" {
		p, err := s.blobPath(expected)
		if err != nil {
			return nil, fmt.Errorf("writer for %q: expected digest: %w", ref, err)
		}
		if _, err := os.Stat(p); err == nil {
			return nil, fmt.Errorf("content %v: %w", expected, errdefs.ErrAlreadyExists)
		}
	}
	if err := os.MkdirAll(filepath.Join(s.root, "ingest"), 0o777); err != nil {
		return nil, err
	}
	w := &writer{
		s:        s,
		ref:      ref,
		path:     s.ingestPath(ref),
		total:    total,
		digester: digest.Canonical.Digester(),
	}
	data := filepath.Join(w.path, "data")
	resumed := false
	if err := os.Mkdir(w.path, 0o755); err != nil {
		if !os.IsExist(err) {
			return nil, err
		}
		if err := w.resume(ctx, total); err == nil {
			resumed = true
		} else {
			log.G(ctx).WithError(err).WithField("ref", ref).Info("cannot resume ingest; starting it afresh")
			w.digester = digest.Canonical.Digester()
		}
	}
	if !resumed {
		w.startedAt = time.Now()
		w.updatedAt = w.startedAt
		w.offset = 0
		if err := writeIngestFile(filepath.Join(w.path, "ref"), []byte(ref), false); err != nil {
			return nil, err
		}
		if err := writeTimestamp(filepath.Join(w.path, "startedat"), w.startedAt, false); err != nil {
			return nil, err
		}
		if err := writeTimestamp(filepath.Join(w.path, "updatedat"), w.updatedAt, false); err != nil {
			return nil, err
		}
		if total > 0 {
			if err := writeIngestFile(filepath.Join(w.path, "total"), fmt.Appendf(nil, "%d", total), false); err != nil {
				return nil, err
			}
		} else if err := os.Remove(filepath.Join(w.path, "total")); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
	flags := os.O_WRONLY | os.O_CREATE
	if !resumed {
		flags |= os.O_TRUNC
	}
	fp, err := os.OpenFile(data, flags, 0o666)
	if err != nil {
		return nil, fmt.Errorf("open ingest data of %q: %w", ref, err)
	}
	if _, err := fp.Seek(w.offset, io.SeekStart); err != nil {
		fp.Close()
		return nil, fmt.Errorf("seek ingest data of %q to %d: %w", ref, w.offset, err)
	}
	w.fp = fp
	w.written, w.writeback = w.offset, w.offset
	if hook := s.ingestHook(); hook != nil && !resumed {
		// Best effort: without a tail the ingest is only not followed.
		if t, err := openTail(data); err == nil {
			w.tail = t
			hook(ref, t)
		}
	}
	return w, nil
}

// resume takes up an ingest left by an earlier writer: its status, and the
// digest of what it wrote.
func (w *writer) resume(ctx context.Context, total int64) error {
	st, err := w.s.Store.Status(ctx, w.ref)
	if err != nil {
		return err
	}
	if st.Ref != w.ref {
		return fmt.Errorf("ingest directory holds ref %q", st.Ref)
	}
	if total > 0 && st.Total > 0 && total != st.Total {
		return fmt.Errorf("provided total differs from status: %v != %v", total, st.Total)
	}
	fp, err := os.Open(filepath.Join(w.path, "data"))
	if err != nil {
		return err
	}
	defer fp.Close()
	p := bufPool.Get().(*[]byte)
	n, err := io.CopyBuffer(w.digester.Hash(), fp, (*p)[:cap(*p)])
	bufPool.Put(p)
	if err != nil {
		return err
	}
	w.offset = n
	w.total = st.Total
	w.startedAt = st.StartedAt
	w.updatedAt = st.UpdatedAt
	return nil
}

// writer is an open ingest. Like every content.Writer it is used by one
// goroutine at a time.
type writer struct {
	s         *Store
	fp        *os.File // nil once committed or closed
	ref       string
	path      string // the ingest directory
	offset    int64  // bytes taken, buffered ones included
	total     int64
	digester  digest.Digester
	startedAt time.Time
	updatedAt time.Time

	buf       *[]byte // small writes not yet in the file
	written   int64   // bytes in the file
	writeback int64   // offset up to which writeback was started
	err       error   // a failed file write: the ingest no longer matches its digest
	done      chan result
	tail      *Tail // told of what reaches the file; nil when not followed
}

// endTail tells the tail, if any, how the ingest ended: committed as dgst,
// or abandoned when dgst is empty.
func (w *writer) endTail(dgst digest.Digest) {
	if w.tail == nil {
		return
	}
	if dgst != "" {
		w.tail.committed(dgst)
	} else {
		w.tail.abandon()
	}
	w.tail = nil
}

type result struct {
	n   int
	err error
}

func (w *writer) Status() (content.Status, error) {
	return content.Status{
		Ref:       w.ref,
		Offset:    w.offset,
		Total:     w.total,
		StartedAt: w.startedAt,
		UpdatedAt: w.updatedAt,
	}, nil
}

// Digest returns the digest of everything written so far.
func (w *writer) Digest() digest.Digest {
	return w.digester.Digest()
}

func (w *writer) Write(p []byte) (int, error) {
	if w.fp == nil {
		return 0, fmt.Errorf("write to ingest %q: writer is closed: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	if w.err != nil {
		return 0, w.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	w.updatedAt = time.Now()
	if len(p) < writeDirect {
		if w.buf == nil {
			w.buf = bufPool.Get().(*[]byte)
		}
		if len(*w.buf)+len(p) > cap(*w.buf) {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
		*w.buf = append(*w.buf, p...)
		w.digester.Hash().Write(p)
		w.offset += int64(len(p))
		return len(p), nil
	}
	if err := w.flush(); err != nil {
		return 0, err
	}
	if w.done == nil {
		w.done = make(chan result, 1)
	}
	go func() {
		n, err := w.fp.Write(p)
		w.done <- result{n, err}
	}()
	w.digester.Hash().Write(p)
	r := <-w.done
	w.offset += int64(r.n)
	if r.err != nil {
		w.fail(r.err)
		return r.n, w.err
	}
	w.wrote(r.n)
	return r.n, nil
}

// flush writes the buffered small writes to the file.
func (w *writer) flush() error {
	if w.err != nil {
		return w.err
	}
	if w.buf == nil || len(*w.buf) == 0 {
		return nil
	}
	n, err := w.fp.Write(*w.buf)
	*w.buf = (*w.buf)[:0]
	if err != nil {
		w.fail(err)
		return w.err
	}
	w.wrote(n)
	return nil
}

// fail makes the writer refuse everything but Truncate(0), Close and
// Abort: the digest covers bytes the file does not have.
func (w *writer) fail(err error) {
	w.err = fmt.Errorf("write to ingest %q: %w", w.ref, err)
}

// wrote accounts for n bytes written to the file, starting their writeback
// once enough have gathered.
func (w *writer) wrote(n int) {
	w.written += int64(n)
	if w.tail != nil {
		w.tail.written(w.written)
	}
	if w.written-w.writeback >= writebackChunk {
		// Advisory: a failure here only leaves the work to Commit's fsync.
		unix.SyncFileRange(int(w.fp.Fd()), w.writeback, w.written-w.writeback, unix.SYNC_FILE_RANGE_WRITE)
		w.writeback = w.written
	}
}

func (w *writer) releaseBuf() {
	if w.buf != nil {
		*w.buf = (*w.buf)[:0]
		bufPool.Put(w.buf)
		w.buf = nil
	}
}

// Commit makes the ingest the blob of its digest: one fsync of the data,
// the labels, the rename, one fsync of the directory. The labels are
// checked against containerd's limits first; a refusal leaves the writer
// open. Labels refused later (an image name another blob holds) leave the
// ingest to be resumed or aborted.
//
// A blob of the same digest already there is AlreadyExists, as containerd
// answers, unless the labels carry cslabels.CommitAddRefs: then the
// commit's references (cslabels.BlobRefPrefix labels) are added to the
// blob under its lock and the commit succeeds (see CommitReferenced).
func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	var base content.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return err
		}
	}
	if err := metadata.ValidateLabels(base.Labels); err != nil {
		return fmt.Errorf("commit ingest %q: %w", w.ref, err)
	}
	labels, addRefs, err := addRefsRequest(base.Labels)
	if err != nil {
		return fmt.Errorf("commit ingest %q: %w", w.ref, err)
	}
	if expected != "" {
		if err := expected.Validate(); err != nil {
			return fmt.Errorf("commit ingest %q: expected digest %q: %v: %w", w.ref, expected, err, errdefs.ErrInvalidArgument)
		}
	}
	fp := w.fp
	if fp == nil {
		return fmt.Errorf("cannot commit on closed writer: %w", errdefs.ErrFailedPrecondition)
	}
	// Whatever happens now, the writer is done and the ref free; a failed
	// commit leaves the ingest to be resumed or aborted, as containerd's.
	var committed digest.Digest
	defer func() { w.endTail(committed) }()
	err = w.flush()
	w.fp = nil
	defer w.s.locks.unlock(w.ref)
	defer w.releaseBuf()
	if err != nil {
		fp.Close()
		return err
	}
	if err := fp.Sync(); err != nil {
		fp.Close()
		return fmt.Errorf("sync failed: %w", err)
	}
	fi, err := fp.Stat()
	closeErr := fp.Close()
	if err != nil {
		return fmt.Errorf("stat on ingest file failed: %w", err)
	}
	if closeErr != nil {
		return fmt.Errorf("failed to close ingest file: %w", closeErr)
	}
	if size > 0 && size != fi.Size() {
		return fmt.Errorf("unexpected commit size %d, expected %d: %w", fi.Size(), size, errdefs.ErrFailedPrecondition)
	}
	dgst := w.digester.Digest()
	if expected != "" && expected != dgst {
		return fmt.Errorf("unexpected commit digest %s, expected %s: %w", dgst, expected, errdefs.ErrFailedPrecondition)
	}

	ingest := filepath.Join(w.path, "data")
	target, _ := w.s.blobPath(dgst) // computed here, so valid
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("commit ingest %q: %w", w.ref, err)
	}
	// Delete (containerd's garbage collector) keeps a blob only if it has
	// a reference label: it must not run between the labels and the
	// rename, when they would be dropped for a blob about to appear.
	defer w.s.blobs.lock(dgst)()
	if _, err := os.Stat(target); err == nil {
		if addRefs {
			// The blob is someone else's too now: the reference lands
			// under the lock, so a Delete waiting for it sees it, and
			// one that went before left no blob to find here. A failure
			// leaves the ingest, as any failed commit.
			if err := w.s.addRefs(dgst, labels); err != nil {
				return fmt.Errorf("commit ingest %q: %w", w.ref, err)
			}
		}
		if err := os.RemoveAll(w.path); err != nil {
			log.G(ctx).WithError(err).WithField("ref", w.ref).Error("failed to remove ingest directory")
		}
		if addRefs {
			return nil
		}
		return fmt.Errorf("content %v: %w", dgst, errdefs.ErrAlreadyExists)
	}
	// The labels land before the blob: a crash between leaves labels
	// without a blob, which AbortOwn drops at the next start, never a
	// blob without the labels that keep it. Labels a crash left for this
	// digest are replaced, not inherited.
	if err := w.s.commitLabels(dgst, labels); err != nil {
		return fmt.Errorf("commit ingest %q: %w", w.ref, err)
	}
	if err := os.Rename(ingest, target); err != nil {
		w.s.dropLabels(ctx, dgst, labels)
		return fmt.Errorf("commit ingest %q: %w", w.ref, err)
	}
	if err := syncDir(filepath.Dir(target)); err != nil {
		return fmt.Errorf("commit ingest %q: %w", w.ref, err)
	}
	if w.s.verity {
		if err := enableVerity(target); err != nil {
			log.G(ctx).WithError(err).WithField("digest", dgst).Warn("failed to enable integrity for blob")
		}
	}

	// The blob is in place; what follows cannot be rolled back, so errors
	// are only logged, as containerd's local store does.
	now := time.Now()
	if err := os.Chtimes(target, now, now); err != nil {
		log.G(ctx).WithError(err).WithField("digest", dgst).Error("failed to change file time to commit time")
	}
	if err := os.RemoveAll(w.path); err != nil {
		log.G(ctx).WithError(err).WithField("ref", w.ref).Error("failed to remove ingest directory")
	}
	// Read-only from now on, within the creation umask.
	if err := os.Chmod(target, (fi.Mode()&os.ModePerm)&^0o333); err != nil {
		log.G(ctx).WithError(err).WithField("ref", w.ref).Error("failed to make readonly")
	}
	committed = dgst
	return nil
}

// commitLabels gives blob dgst, about to be committed, labels (nil for
// none), dropping whatever labels a crash left for it. The caller holds
// the blob's lock.
func (s *Store) commitLabels(dgst digest.Digest, labels map[string]string) error {
	if len(labels) == 0 {
		// Most commits (all of containerd's) have none: a read, not a
		// write transaction, unless a crash left some.
		old, err := s.labels.Get(dgst)
		if err != nil {
			return fmt.Errorf("labels of %s: %w", dgst, err)
		}
		if old == nil {
			return nil
		}
	}
	if err := s.labels.Set(dgst, labels); err != nil {
		return fmt.Errorf("set labels of %s: %w", dgst, err)
	}
	return nil
}

// dropLabels undoes commitLabels after the blob failed to appear. Labels
// left by a failure here are dropped at the next start.
func (s *Store) dropLabels(ctx context.Context, dgst digest.Digest, labels map[string]string) {
	if len(labels) == 0 {
		return
	}
	if err := s.labels.Delete(dgst); err != nil {
		log.G(ctx).WithError(err).WithField("digest", dgst).Error("failed to drop the labels of a blob not committed")
	}
}

// Close leaves the ingest to be resumed: the data is synced and the update
// time recorded, as containerd's local store does.
func (w *writer) Close() error {
	if w.fp == nil {
		return nil
	}
	fp := w.fp
	err := w.flush()
	w.fp = nil
	w.endTail("")
	defer w.s.locks.unlock(w.ref)
	defer w.releaseBuf()
	if w.written > 0 {
		// The buffer may have reached the file only now; its modification
		// time, which Status prefers when later, is that of the last Write.
		mtime := unix.NsecToTimespec(w.updatedAt.UnixNano())
		unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(w.path, "data"), []unix.Timespec{{Nsec: unix.UTIME_OMIT}, mtime}, 0)
	}
	fp.Sync()
	if cerr := fp.Close(); err == nil {
		err = cerr
	}
	if terr := writeTimestamp(filepath.Join(w.path, "updatedat"), w.updatedAt, true); err == nil {
		err = terr
	}
	return err
}

// Truncate(0) starts the ingest over; other sizes are not supported.
func (w *writer) Truncate(size int64) error {
	if size != 0 {
		return fmt.Errorf("truncate ingest %q to %d: only 0 is supported: %w", w.ref, size, errdefs.ErrInvalidArgument)
	}
	if w.fp == nil {
		return fmt.Errorf("truncate ingest %q: writer is closed: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	if w.buf != nil {
		*w.buf = (*w.buf)[:0]
	}
	w.endTail("")
	if _, err := w.fp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := w.fp.Truncate(0); err != nil {
		return err
	}
	w.err = nil
	w.offset, w.written, w.writeback = 0, 0, 0
	w.digester.Hash().Reset()
	return nil
}

func writeTimestamp(path string, t time.Time, sync bool) error {
	b, err := t.MarshalText()
	if err != nil {
		return err
	}
	return writeIngestFile(path, b, sync)
}

// writeIngestFile replaces path with data through a temporary file, as the
// local store writes its ingest files, but synced only if asked.
func writeIngestFile(path string, data []byte, sync bool) error {
	tmp := path + ".tmp"
	flags := os.O_RDWR | os.O_CREATE | os.O_TRUNC
	if sync {
		flags |= os.O_SYNC
	}
	f, err := os.OpenFile(tmp, flags, 0o666)
	if err != nil {
		return fmt.Errorf("create tmp file: %w", err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write tmp file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename tmp file: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("failed to open dir %s: %w", dir, err)
	}
	err = d.Sync()
	d.Close()
	if err != nil {
		return fmt.Errorf("failed to sync dir %s: %w", dir, err)
	}
	return nil
}

// verityProbe tells whether root's file system can protect blobs with
// fs-verity, as containerd's local store checks.
func verityProbe(root string) bool {
	dir, err := os.MkdirTemp(root, ".fsverity-check-*")
	if err != nil {
		return false
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "supported")
	f, err := os.Create(p)
	if err != nil {
		return false
	}
	f.Close()
	return enableVerity(p) == nil
}

// enableVerity turns fs-verity on for the file at path (SHA-256, the block
// size the smaller of the page and the file system block), as containerd's
// local store does for committed blobs where it can.
func enableVerity(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	blockSize := unix.Getpagesize()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err == nil && int(st.Blksize) > 0 && int(st.Blksize) < blockSize {
		blockSize = int(st.Blksize)
	}
	arg := unix.FsverityEnableArg{
		Version:        1,
		Hash_algorithm: unix.FS_VERITY_HASH_ALG_SHA256,
		Block_size:     uint32(blockSize),
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_ENABLE_VERITY, uintptr(unsafe.Pointer(&arg)))
	if errno != 0 {
		return fmt.Errorf("enable fs-verity: %w", errno)
	}
	return nil
}
