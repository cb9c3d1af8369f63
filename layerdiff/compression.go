package layerdiff

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compression is the compression algorithm of a layer blob.
type Compression int

// The compressions a layer blob may use. The zero value is Uncompressed, as
// in containers/storage's pkg/archive.
const (
	Uncompressed Compression = iota
	Gzip
	Zstd
	Bzip2
	Xz
)

// String returns the name containers/storage and the OCI media types use.
func (c Compression) String() string {
	switch c {
	case Uncompressed:
		return "none"
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	case Bzip2:
		return "bzip2"
	case Xz:
		return "xz"
	}
	return fmt.Sprintf("Compression(%d)", int(c))
}

// ErrTruncated marks a stream that ended before its format said it would: a
// compressed stream cut short, or a tar that ends inside an entry.
var ErrTruncated = errors.New("truncated")

// magicLen is how many bytes DetectCompression needs to peek.
const magicLen = 10

// DetectCompression reports the compression of the stream r holds, by its
// magic bytes, without consuming anything. A stream too short for any magic,
// including an empty one, is Uncompressed (an empty layer is valid); only a
// read error is returned as an error.
func DetectCompression(r *bufio.Reader) (Compression, error) {
	head, err := r.Peek(magicLen)
	if err != nil && !errors.Is(err, io.EOF) {
		return Uncompressed, fmt.Errorf("layerdiff: detecting compression: %w", err)
	}
	return detect(head), nil
}

func detect(head []byte) Compression {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b, 0x08}):
		return Gzip
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd
	case len(head) >= 4 && head[0]&0xf0 == 0x50 && head[1] == 0x2a && head[2] == 0x4d && head[3] == 0x18:
		// A zstd skippable frame (magic 0x184D2A5?, little endian) may
		// precede the data frames; the decoder skips it.
		return Zstd
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return Xz
	case isBzip2(head):
		return Bzip2
	}
	return Uncompressed
}

// isBzip2 checks the block-size digit and the first block's (or the empty
// stream's end-of-stream) magic as well as "BZh": containers/storage checks
// only "BZh", which a plain tar whose first entry is named "BZh..." also
// starts with.
func isBzip2(head []byte) bool {
	if len(head) < magicLen || !bytes.HasPrefix(head, []byte("BZh")) || head[3] < '1' || head[3] > '9' {
		return false
	}
	block := head[4:10]
	return bytes.Equal(block, []byte{0x31, 0x41, 0x59, 0x26, 0x53, 0x59}) || // pi: a compressed block
		bytes.Equal(block, []byte{0x17, 0x72, 0x45, 0x38, 0x50, 0x90}) // sqrt(pi): end of stream
}

// Decompress detects the compression of r and returns a reader of the
// decompressed stream. gzip and zstd use klauspost/compress, several times
// faster than the standard library; bzip2 uses compress/bzip2 and xz
// github.com/ulikunitz/xz. Read errors name the compression, and a stream
// cut short matches ErrTruncated. Close releases the decoder (zstd runs
// goroutines) but does not close r.
func Decompress(r io.Reader) (io.ReadCloser, Compression, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	c, err := DetectCompression(br)
	if err != nil {
		return nil, c, err
	}
	rc, err := newDecompressor(br, c)
	return rc, c, err
}

// newDecompressor returns a reader of r decompressed as c.
func newDecompressor(r io.Reader, c Compression) (io.ReadCloser, error) {
	var (
		dec     io.Reader
		closeFn func() error
	)
	switch c {
	case Uncompressed:
		dec = r
	case Gzip:
		// Multistream (the default) reads concatenated members, as gzip(1)
		// does, so trailing members are part of the layer.
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("layerdiff: %w", wrapReadErr(c, "header", err))
		}
		dec, closeFn = zr, zr.Close
	case Zstd:
		zr, err := zstd.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("layerdiff: %w", wrapReadErr(c, "decoder", err))
		}
		dec = zr
		closeFn = func() error { zr.Close(); return nil }
	case Bzip2:
		dec = bzip2.NewReader(r)
	case Xz:
		zr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("layerdiff: %w", wrapReadErr(c, "header", err))
		}
		dec = zr
	default:
		return nil, fmt.Errorf("layerdiff: unknown compression %v", c)
	}
	return &decompressReader{r: dec, c: c, closeFn: closeFn}, nil
}

// decompressReader says which decompressor failed; the error otherwise
// surfaces from deep inside a tar reader as a bare "unexpected EOF".
type decompressReader struct {
	r       io.Reader
	c       Compression
	closeFn func() error
}

func (d *decompressReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		err = wrapReadErr(d.c, "stream", err)
	}
	return n, err
}

func (d *decompressReader) Close() error {
	if d.closeFn == nil {
		return nil
	}
	return d.closeFn()
}

// wrapReadErr names the stream, or part of it (what: "header", "stream",
// "decoder"), that failed.
func wrapReadErr(c Compression, what string, err error) error {
	format := c.String()
	if c == Uncompressed {
		format = "layer"
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || (c != Uncompressed && errors.Is(err, io.EOF)) {
		// An EOF while reading a header means the stream stopped before
		// the format allowed it to.
		return fmt.Errorf("%s %s: %w: %w", format, what, ErrTruncated, err)
	}
	return fmt.Errorf("%s %s: %w", format, what, err)
}

// Compress returns a writer compressing into w with c, for producing a
// layer blob (containers/storage's Diff with a compression). Uncompressed,
// Gzip and Zstd are what OCI media types name; Xz also works; Bzip2 has no
// writer and fails with errors.ErrUnsupported. Close flushes the compressor
// but does not close w.
func Compress(w io.Writer, c Compression) (io.WriteCloser, error) {
	switch c {
	case Uncompressed:
		return nopWriteCloser{w}, nil
	case Gzip:
		return gzip.NewWriter(w), nil
	case Zstd:
		zw, err := zstd.NewWriter(w)
		if err != nil {
			return nil, fmt.Errorf("layerdiff: starting zstd encoder: %w", err)
		}
		return zw, nil
	case Xz:
		zw, err := xz.NewWriter(w)
		if err != nil {
			return nil, fmt.Errorf("layerdiff: starting xz encoder: %w", err)
		}
		return zw, nil
	}
	return nil, fmt.Errorf("layerdiff: compressing as %v: %w", c, errors.ErrUnsupported)
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
