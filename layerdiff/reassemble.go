package layerdiff

import (
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
		getter := &rootGetter{rootFd: rootFd, root: root}
		err := asm.WriteOutputTarStream(getter, storage.NewJSONUnpacker(zr), pw)
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

// rootGetter is a storage.FileGetter for payloads under a layer directory.
type rootGetter struct {
	rootFd int
	root   string
}

func (g *rootGetter) Get(name string) (io.ReadCloser, error) {
	f, err := openRegularInRoot(g.rootFd, g.root, name)
	if err != nil {
		return nil, fmt.Errorf("content of %q: %w", name, err)
	}
	return f, nil
}
