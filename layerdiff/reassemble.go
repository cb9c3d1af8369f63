package layerdiff

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"

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
// caller keeps tarSplit open until then.
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
	pr, pw := io.Pipe()
	done := make(chan struct{})
	// asm.NewOutputTarStream is this goroutine around the same
	// asm.WriteOutputTarStream, but it cannot say when it is finished with
	// the getter; here the root descriptor is closed only after it is.
	go func() {
		defer close(done)
		defer unix.Close(rootFd)
		defer zr.Close()
		ahead := newReadAhead(storage.NewJSONUnpacker(zr), rootFd, root)
		// Writes go to the pipe in large batches rather than one per
		// header and per payload chunk, each waiting for the reader.
		bw := bufio.NewWriterSize(pw, 256<<10)
		err := asm.WriteOutputTarStream(ahead, ahead, bw)
		if err == nil {
			err = bw.Flush()
		}
		ahead.stop()
		if err != nil {
			err = fmt.Errorf("layerdiff: reassembling layer from %s: %w", root, err)
		}
		pw.CloseWithError(err)
	}()
	return &reassembly{PipeReader: pr, done: done}, nil
}

type reassembly struct {
	*io.PipeReader
	done chan struct{}
}

// Close stops the goroutine (its next write fails) and waits for it, so that
// neither dir nor the tar-split reader is used after Close returns.
func (r *reassembly) Close() error {
	err := r.PipeReader.Close()
	<-r.done
	return err
}

// readAhead is the storage.Unpacker and storage.FileGetter of a
// reassembly. A goroutine of its own reads the tar-split entries ahead of
// the writer, opens the files they name (resolved within the root, as
// openRegularInRoot) and asks the kernel to read their first megabyte in
// (POSIX_FADV_WILLNEED), so that from a cold cache many reads are in
// flight instead of one file's at a time. Get hands over the file opened
// for the entry Next returned last.
type readAhead struct {
	ch    chan aheadEntry
	quit  chan struct{}
	ended chan struct{}
	last  aheadEntry
}

type aheadEntry struct {
	entry *storage.Entry
	file  *os.File
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
	go func() {
		defer close(a.ended)
		for {
			e, err := up.Next()
			ae := aheadEntry{entry: e, err: err}
			if err == nil && e.Type == storage.FileType && e.Size > 0 {
				ae.file, ae.open = openRegularInRoot(rootFd, root, e.GetName())
				if ae.open == nil {
					unix.Fadvise(int(ae.file.Fd()), 0, min(e.Size, readAheadBytes), unix.FADV_WILLNEED)
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

// stop ends the goroutine, closing the files it opened, and waits for it:
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
