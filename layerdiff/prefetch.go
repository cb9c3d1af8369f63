package layerdiff

import (
	"hash"
	"io"
)

// prefetcher reads r ahead in its own goroutine, hashing what it reads
// (unless hash is nil). Apply runs the decompressor in one, so that
// decompression overlaps with tar-split's parsing and checksums.
type prefetcher struct {
	full chan chunk  // read, in order; the last one carries the error
	free chan []byte // buffers to read into
	stop chan struct{}
	done chan struct{}

	cur  chunk // being consumed
	off  int
	err  error
	hash hash.Hash
}

type chunk struct {
	buf []byte // the whole buffer, to recycle
	n   int
	err error
}

const (
	prefetchBuffers = 32
	prefetchSize    = 64 << 10
)

func newPrefetcher(r io.Reader, h hash.Hash) *prefetcher {
	p := &prefetcher{
		full: make(chan chunk, prefetchBuffers),
		free: make(chan []byte, prefetchBuffers),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		hash: h,
	}
	for range prefetchBuffers {
		p.free <- make([]byte, prefetchSize)
	}
	go p.run(r)
	return p
}

// run ends after r fails or reaches EOF, or when stopped while all buffers
// wait for a reader that no longer reads. Sending never blocks: the
// goroutine holds one of the buffers, so fewer than cap(full) chunks are
// queued.
func (p *prefetcher) run(r io.Reader) {
	defer close(p.done)
	for {
		var buf []byte
		select {
		case buf = <-p.free:
		case <-p.stop:
			return
		}
		n, err := r.Read(buf)
		if p.hash != nil {
			p.hash.Write(buf[:n])
		}
		if n == 0 && err == nil {
			p.free <- buf
			continue
		}
		p.full <- chunk{buf: buf, n: n, err: err}
		if err != nil {
			return
		}
	}
}

func (p *prefetcher) Read(b []byte) (int, error) {
	for p.off == p.cur.n {
		if p.err != nil {
			return 0, p.err
		}
		if p.cur.buf != nil {
			p.free <- p.cur.buf
		}
		p.cur, p.off = <-p.full, 0
		p.err = p.cur.err
	}
	n := copy(b, p.cur.buf[p.off:p.cur.n])
	p.off += n
	return n, nil
}

// buffered reports whether Read has bytes without waiting.
func (p *prefetcher) buffered() bool {
	return p.off < p.cur.n || len(p.full) > 0
}

// stop ends the goroutine and waits for it. If it is in a Read of r, that
// must return: close r's pipe first. Read must not be called afterwards.
func (p *prefetcher) stopAndWait() {
	close(p.stop)
	<-p.done
}
