package contentstore

import (
	"container/list"
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Readers of a blob share one open file. containerd's local store opens
// (and stats) the blob for every ReaderAt, and containerd's content server
// asks for a ReaderAt on every Read call, which is every ReadAt of a remote
// client. A file stays open while readers hold it and, once the last lets
// go, for up to idleTTL among the idleMax most recently used, so a
// sequence of calls for one blob opens it once.
//
// Delete drops the blob's file from the cache (readers still holding it
// read on, as they would from a file unlinked under them), and a file is
// only cached or reused while it still has a link, so a blob deleted in
// any way is never served from the cache afterwards.
const (
	idleMax = 64
	idleTTL = 30 * time.Second
)

type readerCache struct {
	mu    sync.Mutex
	files map[digest.Digest]*blobFile
	idle  list.List // of *blobFile with no readers, most recently used first
}

type blobFile struct {
	dgst   digest.Digest
	f      *os.File
	size   int64
	refs   int
	cached bool          // in files
	idle   *list.Element // in the idle list
	since  time.Time     // idle since
}

// ReaderAt returns a reader of the blob desc.Digest. Its ReadAt may be
// called from several goroutines at once.
func (s *Store) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	p, err := s.blobPath(desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("reader of blob: %w", err)
	}
	bf, err := s.readers.get(desc.Digest, p)
	if err != nil {
		return nil, err
	}
	return &reader{c: &s.readers, bf: bf}, nil
}

func (c *readerCache) get(dgst digest.Digest, path string) (*blobFile, error) {
	c.mu.Lock()
	if bf := c.files[dgst]; bf != nil {
		if linked(bf.f) {
			c.take(bf)
			c.mu.Unlock()
			return bf, nil
		}
		c.drop(bf) // unlinked behind the store's back
	}
	c.mu.Unlock()

	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("blob %s expected at %s: %w", dgst, path, errdefs.ErrNotFound)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	bf := &blobFile{dgst: dgst, f: f, size: fi.Size(), refs: 1}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.expire(time.Now())
	if other := c.files[dgst]; other != nil {
		// Opened meanwhile by another reader.
		f.Close()
		c.take(other)
		return other, nil
	}
	// Checked under the lock: Delete unlinks first and then drops what is
	// cached, so a file unlinked after this check is dropped by it.
	if linked(f) {
		if c.files == nil {
			c.files = map[digest.Digest]*blobFile{}
		}
		c.files[dgst] = bf
		bf.cached = true
	}
	return bf, nil
}

// take adds a reader to bf. c.mu is held.
func (c *readerCache) take(bf *blobFile) {
	if bf.idle != nil {
		c.idle.Remove(bf.idle)
		bf.idle = nil
	}
	bf.refs++
}

// release lets a reader of bf go. The file is kept for the next reader if
// it is still cached, closed otherwise.
func (c *readerCache) release(bf *blobFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	bf.refs--
	if bf.refs > 0 {
		return
	}
	if !bf.cached {
		bf.f.Close()
		return
	}
	now := time.Now()
	bf.since = now
	bf.idle = c.idle.PushFront(bf)
	c.expire(now)
}

// expire closes the idle files over idleMax or idle longer than idleTTL.
// c.mu is held.
func (c *readerCache) expire(now time.Time) {
	for e := c.idle.Back(); e != nil; e = c.idle.Back() {
		bf := e.Value.(*blobFile)
		if c.idle.Len() <= idleMax && now.Sub(bf.since) < idleTTL {
			return
		}
		c.drop(bf)
	}
}

// drop takes bf out of the cache, closing its file if no reader holds it.
// c.mu is held.
func (c *readerCache) drop(bf *blobFile) {
	if bf.cached {
		delete(c.files, bf.dgst)
		bf.cached = false
	}
	if bf.idle != nil {
		c.idle.Remove(bf.idle)
		bf.idle = nil
	}
	if bf.refs == 0 {
		bf.f.Close()
	}
}

// forget drops the cached file of dgst, after the blob was deleted.
func (c *readerCache) forget(dgst digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if bf := c.files[dgst]; bf != nil {
		c.drop(bf)
	}
}

// closeIdle closes every file no reader holds and forgets the others,
// which close with their last reader.
func (c *readerCache) closeIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, bf := range c.files {
		c.drop(bf)
	}
}

// linked tells whether f still has a name: a blob deleted by whatever
// means is not served again.
func linked(f *os.File) bool {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return st.Nlink > 0
}

// reader is one holder of a blob's shared file.
type reader struct {
	c      *readerCache
	bf     *blobFile
	closed atomic.Bool
}

func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, os.ErrClosed
	}
	return r.bf.f.ReadAt(p, off)
}

func (r *reader) Size() int64 { return r.bf.size }

func (r *reader) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	r.c.release(r.bf)
	return nil
}
