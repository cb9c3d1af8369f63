package contentstore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// ErrIngestAbandoned is what a Tail reads once its ingest is closed,
// truncated or fails before it is committed.
var ErrIngestAbandoned = errors.New("ingest abandoned before its commit")

// A Tail reads an ingest's data while the ingest is being written, so that
// a blob can be worked on as it arrives instead of after its commit. Read
// blocks until the writer has put more in the file; it returns io.EOF at
// the end of a committed blob, and ErrIngestAbandoned if the ingest ends
// any other way. Close it when done; the writer never waits for it.
type Tail struct {
	f *os.File

	mu       sync.Mutex
	grew     *sync.Cond
	off      int64 // read so far
	avail    int64 // in the file
	digest   digest.Digest
	finished bool // committed (digest set) or abandoned
	closed   bool
}

// IngestHook is told of every new ingest (not a resumed one) and its ref;
// it must not block, and must Close the Tail.
type IngestHook func(ref string, t *Tail)

// SetIngestHook makes hook follow every ingest started from now on.
func (s *Store) SetIngestHook(hook IngestHook) {
	s.hookMu.Lock()
	s.hook = hook
	s.hookMu.Unlock()
}

func (s *Store) ingestHook() IngestHook {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	return s.hook
}

func openTail(path string) (*Tail, error) {
	// O_NOATIME: a read after the commit would move the blob's access
	// time, which is its UpdatedAt, to the kernel's coarse clock. Only the
	// file's owner or CAP_FOWNER may ask for it.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		f, err = os.Open(path)
	}
	if err != nil {
		return nil, err
	}
	t := &Tail{f: f}
	t.grew = sync.NewCond(&t.mu)
	return t, nil
}

// Read reads what the writer has written, waiting for it.
func (t *Tail) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	t.mu.Lock()
	for t.off >= t.avail && !t.finished && !t.closed {
		t.grew.Wait()
	}
	off, avail, committed, closed := t.off, t.avail, t.digest != "", t.closed
	t.mu.Unlock()
	switch {
	case closed:
		return 0, os.ErrClosed
	case off >= avail && committed:
		return 0, io.EOF
	case off >= avail:
		return 0, ErrIngestAbandoned
	}
	if int64(len(p)) > avail-off {
		p = p[:avail-off]
	}
	n, err := t.f.ReadAt(p, off)
	t.mu.Lock()
	t.off += int64(n)
	t.mu.Unlock()
	if err == io.EOF && n > 0 {
		err = nil
	}
	if err == io.EOF {
		err = fmt.Errorf("ingest data shorter than written: %w", io.ErrUnexpectedEOF)
	}
	return n, err
}

// Digest is the committed blob's digest, once Read has returned io.EOF.
func (t *Tail) Digest() digest.Digest {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.digest
}

// Close releases the file; a Read waiting returns.
func (t *Tail) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.grew.Broadcast()
	return t.f.Close()
}

// written says the file now holds n bytes.
func (t *Tail) written(n int64) {
	t.mu.Lock()
	t.avail = n
	t.mu.Unlock()
	t.grew.Broadcast()
}

// committed says the file holds all of blob dgst.
func (t *Tail) committed(dgst digest.Digest) {
	t.mu.Lock()
	t.digest, t.finished = dgst, true
	t.mu.Unlock()
	t.grew.Broadcast()
}

// abandon says nothing more will come.
func (t *Tail) abandon() {
	t.mu.Lock()
	t.finished = true
	t.mu.Unlock()
	t.grew.Broadcast()
}
