package layerdiff

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
)

// Reassemble returns the uncompressed layer tar that Apply extracted into
// dir, byte for byte, from the tar-split Apply recorded (gzip-compressed, as
// Apply writes and containers/storage stores it): raw headers and padding
// come from the tar-split, file contents from dir. The digest of the stream
// is the layer's UncompressedDigest when Apply reported it Reproducible. A
// file whose content no longer matches its recorded CRC-64 fails the read
// rather than yield different bytes; callers serving the stream as a known
// digest should still verify it.
//
// Files are looked up in dir the way Apply placed them, symlinks resolved
// within dir, so a crafted tar-split cannot read anything outside it, nor
// open a device or fifo. Close stops the reassembly and waits for it; the
// caller keeps tarSplit open until then. Read and Close may be called from
// different goroutines; WriteTo (which io.Copy uses, writing in the
// caller's goroutine without a pipe) is done before it returns.
func Reassemble(dir string, tarSplit io.Reader) (io.ReadCloser, error) {
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("layerdiff: reassemble: %w", err)
	}
	zr, err := gzip.NewReader(tarSplit)
	if err != nil {
		return nil, fmt.Errorf("layerdiff: reassemble: reading tar-split: %w", err)
	}
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		zr.Close()
		return nil, fmt.Errorf("layerdiff: reassemble: %w", &os.PathError{Op: "open", Path: root, Err: err})
	}
	return &reassembly{root: root, rootFd: rootFd, zr: zr}, nil
}

// reassembly writes the tar straight into the destination when the
// caller copies it out whole (WriteTo, which io.Copy prefers), so the bytes
// are not handed through a pipe and another buffer; a caller that Reads
// gets them from a goroutine through a pipe.
type reassembly struct {
	root   string
	rootFd int
	zr     *gzip.Reader

	mu    sync.Mutex
	state reassemblyState
	pr    *io.PipeReader // of a Read's goroutine
	done  chan struct{}  // closed when that goroutine ends
}

// reassemblyState is how the reassembly was first used; from then on write
// owns rootFd and zr, or Close released them.
type reassemblyState int8

const (
	unstarted   reassemblyState = iota
	piped                       // by Read: a goroutine writes into pr
	written                     // by WriteTo
	closedEarly                 // by Close, before any read
)

// write writes the tar to w and releases the root descriptor and the
// tar-split reader: asm.NewOutputTarStream runs the same
// asm.WriteOutputTarStream, but cannot say when it is done with the getter.
func (r *reassembly) write(w io.Writer) (int64, error) {
	defer unix.Close(r.rootFd)
	defer r.zr.Close()
	ahead := newReadAhead(newTarSplitEntries(r.zr), r.rootFd, r.root)
	// Writes go out in large batches rather than one per header and per
	// payload chunk.
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, 256<<10)
	err := asm.WriteOutputTarStream(ahead, ahead, bw)
	if err == nil {
		err = bw.Flush()
	}
	ahead.stop()
	if err != nil {
		err = fmt.Errorf("layerdiff: reassembling layer from %s: %w", r.root, err)
	}
	return cw.n, err
}

// begin returns the state before this call, having moved an unstarted
// reassembly to next (starting the goroutine of piped).
func (r *reassembly) begin(next reassemblyState) (reassemblyState, *io.PipeReader) {
	r.mu.Lock()
	defer r.mu.Unlock()
	was := r.state
	if was != unstarted {
		return was, r.pr
	}
	r.state = next
	if next == piped {
		var pw *io.PipeWriter
		r.pr, pw = io.Pipe()
		r.done = make(chan struct{})
		go func() {
			defer close(r.done)
			_, err := r.write(pw)
			pw.CloseWithError(err)
		}()
	}
	return was, r.pr
}

func (r *reassembly) Read(p []byte) (int, error) {
	switch was, pr := r.begin(piped); was {
	case written:
		return 0, io.EOF
	case closedEarly:
		return 0, io.ErrClosedPipe
	default:
		return pr.Read(p)
	}
}

// WriteTo writes the rest of the tar to w.
func (r *reassembly) WriteTo(w io.Writer) (int64, error) {
	switch was, pr := r.begin(written); was {
	case unstarted:
		return r.write(w)
	case piped:
		return io.Copy(w, pr)
	case closedEarly:
		return 0, io.ErrClosedPipe
	default:
		return 0, nil
	}
}

// Close stops the goroutine of a read (its next write fails) and waits for
// it, so that neither dir nor the tar-split reader is used after Close
// returns.
func (r *reassembly) Close() error {
	switch was, pr := r.begin(closedEarly); was {
	case unstarted:
		unix.Close(r.rootFd)
		return r.zr.Close()
	case piped:
		err := pr.Close()
		<-r.done
		return err
	default:
		return nil
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// readAhead is the storage.Unpacker and storage.FileGetter of a
// reassembly. Goroutines of its own decode the tar-split entries ahead of
// the writer and open the files they name (resolved within the root, as
// inRoot.openRegular) and asks the kernel to read their first megabyte in
// (POSIX_FADV_WILLNEED), so that from a cold cache many reads are in
// flight instead of one file's at a time. Get hands over the file opened
// for the entry Next returned last.
type readAhead struct {
	ch    chan aheadEntry
	quit  chan struct{}
	ended chan struct{} // closed when both goroutines have ended
	last  aheadEntry
}

type aheadEntry struct {
	entry *storage.Entry
	file  *regularFile
	err   error // of Next, or of opening file (openErr)
	open  error
}

const (
	readAheadEntries = 128
	readAheadBytes   = 1 << 20 // per file
)

func newReadAhead(up storage.Unpacker, rootFd int, root string) *readAhead {
	a := &readAhead{
		ch:    make(chan aheadEntry, readAheadEntries),
		quit:  make(chan struct{}),
		ended: make(chan struct{}),
	}
	// Decoding the entries and opening the files are each about half of
	// the work ahead of the writer: one goroutine each, so that on two
	// cores neither waits for the other.
	decoded := make(chan aheadEntry, readAheadEntries)
	decoderEnded := make(chan struct{})
	go func() {
		defer close(decoderEnded)
		defer close(decoded)
		for {
			e, err := up.Next()
			select {
			case decoded <- aheadEntry{entry: e, err: err}:
			case <-a.quit:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		defer close(a.ended)
		defer func() { <-decoderEnded }() // it uses up until then
		in := newInRoot(rootFd, root)
		defer in.close()
		for {
			ae, ok := <-decoded
			if !ok {
				return // quit
			}
			e, err := ae.entry, ae.err
			if err == nil && e.Type == storage.FileType && e.Size > 0 {
				ae.file, ae.open = in.openRegular(e.GetName(), e.Size)
				if ae.open == nil {
					unix.Fadvise(ae.file.fd, 0, min(e.Size, readAheadBytes), unix.FADV_WILLNEED)
				}
			}
			select {
			case a.ch <- ae:
			case <-a.quit:
				if ae.file != nil {
					ae.file.Close()
				}
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return a
}

func (a *readAhead) Next() (*storage.Entry, error) {
	if a.last.file != nil {
		a.last.file.Close() // not asked for
	}
	a.last = <-a.ch
	return a.last.entry, a.last.err
}

func (a *readAhead) Get(name string) (io.ReadCloser, error) {
	e := a.last
	a.last.file = nil
	switch {
	case e.entry == nil || e.entry.GetName() != name:
		if e.file != nil {
			e.file.Close()
		}
		return nil, fmt.Errorf("content of %q: not the current entry", name)
	case e.open != nil:
		return nil, fmt.Errorf("content of %q: %w", name, e.open)
	}
	return e.file, nil
}

// stop ends the goroutines, closing the files they opened, and waits for them:
// the unpacker is not used afterwards.
func (a *readAhead) stop() {
	close(a.quit)
	<-a.ended
	if a.last.file != nil {
		a.last.file.Close()
	}
	for {
		select {
		case e := <-a.ch:
			if e.file != nil {
				e.file.Close()
			}
		default:
			return
		}
	}
}
