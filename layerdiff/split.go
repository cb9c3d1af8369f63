package layerdiff

import (
	"context"
	"errors"
	"hash"
	"io"

	"github.com/vbatts/tar-split/archive/tar"
	"github.com/vbatts/tar-split/tar/storage"
)

// splitStream runs tar-split's parser over src in its own goroutine, with
// rec as its packer and file putter, as
// asm.NewInputTarStreamWithDone does, and hands the bytes it read on to the
// returned reader, hashed into h. asm tees them into an io.Pipe, whose
// every write (a header, a payload, a padding: a few per entry) waits for
// the reader; here they go in batches of up to batchSize bytes, sent when
// a batch is full or the parser is about to wait for src, so that the
// reader never waits for bytes the parser already has.
//
// done receives the parser's error (nil at EOF) once it no longer reads
// src. Stopping the returned stream makes the parser fail with
// io.ErrClosedPipe at its next hand-off, and ctx's end with ctx's error;
// rec checks both between payload chunks too, since a sparse file's holes
// take nothing from src.
func splitStream(ctx context.Context, src *prefetcher, h hash.Hash, rec *recorder) (*batchStream, <-chan error) {
	s := &batchStream{
		full: make(chan chunk, batchBuffers+1), // every buffer, and the end
		free: make(chan []byte, batchBuffers),
		stop: make(chan struct{}),
	}
	for range batchBuffers {
		s.free <- make([]byte, 0, batchSize)
	}
	done := make(chan error, 1)
	t := &teeBatcher{src: src, dst: s, hash: h, ctx: ctx}
	s.tee = t
	rec.stream = t // it counts what a payload took of the stream
	go func() {
		err := errors.New("panic in tar-split parser")
		defer func() {
			// The last batch carries the parser's end.
			last := err
			if last == nil {
				last = io.EOF
			}
			t.send(last)
			done <- err
		}()
		err = splitTar(t, rec, rec, rec.header)
	}()
	return s, done
}

const (
	batchBuffers = 16
	batchSize    = 128 << 10
)

// batchStream is the reading end of splitStream.
type batchStream struct {
	tee  *teeBatcher // the parser's side
	full chan chunk
	free chan []byte
	stop chan struct{}

	cur chunk
	off int
	err error
}

func (s *batchStream) Read(b []byte) (int, error) {
	for s.off == s.cur.n {
		if s.err != nil {
			return 0, s.err
		}
		if s.cur.buf != nil {
			s.free <- s.cur.buf[:0]
		}
		s.cur, s.off = <-s.full, 0
		s.err = s.cur.err
	}
	n := copy(b, s.cur.buf[s.off:s.cur.n])
	s.off += n
	return n, nil
}

// Close makes the parser stop at its next hand-off. Read must not be
// called afterwards.
func (s *batchStream) Close() error {
	close(s.stop)
	return nil
}

// teeBatcher is what the parser reads: src, whose bytes it also collects
// (and hashes) for dst.
type teeBatcher struct {
	src    *prefetcher
	dst    *batchStream
	hash   hash.Hash
	ctx    context.Context // nil: not checked
	n      int64           // bytes read
	buf    []byte          // the batch being filled, nil if none
	failed error
}

func (t *teeBatcher) Read(p []byte) (int, error) {
	if t.failed != nil {
		return 0, t.failed
	}
	if len(t.buf) > 0 && !t.src.buffered() {
		// The parser may wait for src: hand over what it has.
		if err := t.send(nil); err != nil {
			return 0, err
		}
	}
	n, err := t.src.Read(p)
	t.n += int64(n)
	if n > 0 {
		t.hash.Write(p[:n])
		for b := p[:n]; len(b) > 0; {
			if t.buf == nil {
				select {
				case t.buf = <-t.dst.free:
				case <-t.dst.stop:
					t.failed = io.ErrClosedPipe
					return 0, t.failed
				}
			}
			m := min(len(b), cap(t.buf)-len(t.buf))
			t.buf = append(t.buf, b[:m]...)
			b = b[m:]
			if len(t.buf) == cap(t.buf) {
				if err := t.send(nil); err != nil {
					return 0, err
				}
			}
		}
	}
	return n, err
}

// send hands the batch over, with err if it is the last. Sending never
// blocks: the batcher holds one of the buffers or none is queued yet.
func (t *teeBatcher) send(err error) error {
	select {
	case <-t.dst.stop:
		t.failed = io.ErrClosedPipe
		return t.failed
	default:
	}
	if t.buf == nil && err == nil {
		return nil
	}
	t.dst.full <- chunk{buf: t.buf, n: len(t.buf), err: err}
	t.buf = nil
	return nil
}

// stopped returns the error the parser should stop with: the stream was
// closed, or the context the batcher was given is done.
func (t *teeBatcher) stopped() error {
	if t.failed != nil {
		return t.failed
	}
	select {
	case <-t.dst.stop:
		t.failed = io.ErrClosedPipe
		return t.failed
	default:
	}
	if t.ctx != nil {
		if err := t.ctx.Err(); err != nil {
			t.failed = err
			return err
		}
	}
	return nil
}

// splitTar is tar-split's asm.runInputTarStream (v0.12.3): it parses the
// tar stream from r and records it into p, payloads through fp, then reads
// what follows the archive. vet, if not nil, sees each header before its
// payload is read, and can refuse it.
func splitTar(r io.Reader, p storage.Packer, fp storage.FilePutter, vet func(*tar.Header) error) error {
	tr := tar.NewReader(r)
	tr.RawAccounting = true
	segment := func() error {
		if b := tr.RawBytes(); len(b) > 0 {
			if _, err := p.AddEntry(storage.Entry{Type: storage.SegmentType, Payload: b}); err != nil {
				return err
			}
		}
		return nil
	}
	for {
		hdr, err := tr.Next()
		if err != nil {
			if err != io.EOF {
				return err
			}
			// The end-of-archive blocks.
			if err := segment(); err != nil {
				return err
			}
			break
		}
		if hdr == nil {
			break
		}
		if err := segment(); err != nil {
			return err
		}
		if vet != nil {
			if err := vet(hdr); err != nil {
				return err
			}
		}
		var csum []byte
		if hdr.Size > 0 {
			if _, csum, err = fp.Put(hdr.Name, tr); err != nil {
				return err
			}
		}
		entry := storage.Entry{Type: storage.FileType, Size: hdr.Size, Payload: csum}
		entry.SetName(hdr.Name) // for names that are not UTF-8
		if _, err := p.AddEntry(entry); err != nil {
			return err
		}
		if err := segment(); err != nil {
			return err
		}
	}
	// Padding after the end-of-archive blocks, in bounded chunks.
	chunk := make([]byte, 1<<20)
	for {
		n, err := r.Read(chunk)
		if n != 0 {
			if _, aerr := p.AddEntry(storage.Entry{Type: storage.SegmentType, Payload: chunk[:n]}); aerr != nil {
				return aerr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
