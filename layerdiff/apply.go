package layerdiff

import (
	"archive/tar"
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash"
	"hash/crc64"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	tstar "github.com/vbatts/tar-split/archive/tar"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
)

// ErrTooLarge is returned when a layer decompresses to more than
// ApplyOptions.MaxUncompressed bytes.
var ErrTooLarge = errors.New("layer too large")

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// TarSplit receives the tar-split metadata: the gzip-compressed stream
	// of tar-split JSON entries that containers/storage keeps as
	// <layer>.tar-split.gz. With it and the extracted files, Reassemble
	// reproduces the layer. nil records nothing.
	TarSplit io.Writer
	// MaxUncompressed bounds what the layer may expand to, against
	// decompression bombs: the decompressed stream (what follows the tar's
	// end included), and the sum of the sizes its regular files declare (a
	// sparse file declares its expanded size, its holes are not in the
	// stream). Both are checked before anything past the bound is written
	// or expanded; past it, Apply fails with ErrTooLarge and names the
	// bound.
	//
	// 0 means no bound, as containerd and containers/storage have none: a
	// layer then expands until it is done or the disk is full, whatever
	// its compressed size (a sparse file of 1 TiB takes a few hundred
	// bytes, and zstd expands zeros more than 10,000 times). Which bound
	// suits depends on the disk, so it is the caller's to set.
	MaxUncompressed int64
	// Parents are the lower directories of the layer, nearest first.
	// Directories the tar implies but does not list are created in dir
	// with the attributes of the same directory in the nearest parent that
	// has it, instead of root 0755, so they do not mask the lower ones
	// (containerd passes the same for overlay).
	Parents []string
	// Unparented, when set, extracts the layer before its parents are
	// known: Parents must be empty, and what the extraction would have
	// looked up in them is recorded here for Adopt, which moves the
	// layer onto them.
	Unparented *Unparented
}

// ApplyResult describes an applied layer, as containers/storage records it
// in its layers.json.
type ApplyResult struct {
	Compression        Compression
	CompressedDigest   digest.Digest // of every byte read from the input
	CompressedSize     int64
	UncompressedDigest digest.Digest // of every decompressed byte, trailing padding included
	UncompressedSize   int64
	// UIDs and GIDs are the sorted sets of owners in the layer's entries,
	// whiteouts excluded, as containers/storage records them.
	UIDs, GIDs []uint32
	// Reproducible reports whether Reassemble, given the tar-split written
	// to ApplyOptions.TarSplit, returns the layer byte for byte. It is
	// false when nothing was recorded, and when the layer defeats
	// reassembly from the extracted tree: a file whose content a later
	// entry overwrites or removes, a whiteout with content, a sparse file.
	// Reassemble then fails (a checksum mismatch, a missing file) rather
	// than return other bytes; the caller should keep the blob instead.
	Reproducible bool
	// NotReproducible says why Reproducible is false when a tar-split was
	// recorded.
	NotReproducible string
}

// Apply reads the layer blob r exactly once — compressed digest, then
// decompression, then uncompressed digest and tar-split recording — and
// extracts it into dir as an overlay upper directory: ".wh.name" whiteouts
// become 0/0 character devices, ".wh..wh..opq" the trusted.overlay.opaque=y
// xattr of its directory. Extraction does what containerd's archive.Apply
// does (extract.go), with fewer system calls.
//
// Entries that would land outside dir are refused with an error wrapping
// ErrEscape and naming the entry, as containers/storage refuses them: a
// name or hard link target that leaves dir once cleaned ("../x",
// "a/../../x"), and an entry or hard link target whose parent path goes
// through a symlink leading outside dir (an absolute one, or one with too
// many ".."), whether an earlier entry of the layer made it, dir already
// held it or a lower directory in Parents does. Absolute names and hard
// link targets are taken relative to dir ("/etc/x" is "etc/x"), as
// containers/storage does. Symlink entries are never refused for their
// target (absolute targets are normal), nor writes through symlinks that
// stay inside dir. containerd's containment (every path resolved within
// dir) remains behind this check. Whatever follows the tar's end-of-archive marker is read too, so that
// digests, sizes and tar-split cover every byte.
//
// Errors name the problem and the tar entry: a corrupt or truncated
// (ErrTruncated) compressed stream or tar, a layer over MaxUncompressed
// (ErrTooLarge), an entry escaping dir (ErrEscape), an owner out of range,
// an old GNU sparse file, a hard link to nothing in dir, and, when recording a tar-split, two entries for the
// same path (tar-split's storage.ErrDuplicatePath), which containers/storage
// refuses too. On error the ApplyResult is zero, dir is left partly written
// and TarSplit holds an incomplete record; the caller is expected to discard
// both. Cancelling ctx stops Apply at the next read, entry or megabyte
// written (a sparse file's holes read nothing), but a Read of r already
// blocked is waited for.
//
// A tar that ends at an entry boundary without its end-of-archive blocks
// is complete as far as Go's tar reader, containerd's and
// containers/storage's can tell, and applies; the layer's digest is the
// caller's check. Device nodes and fifos are made as the tar says (as root;
// in a user namespace character and block devices are skipped, as
// containerd skips them), set-user-ID and set-group-ID bits kept, like any
// other entry only inside dir.
func Apply(ctx context.Context, dir string, r io.Reader, opts ApplyOptions) (ApplyResult, error) {
	root, err := filepath.Abs(dir)
	if err != nil {
		return ApplyResult{}, fmt.Errorf("layerdiff: apply: %w", err)
	}
	if opts.Unparented != nil && len(opts.Parents) > 0 {
		return ApplyResult{}, fmt.Errorf("layerdiff: apply: both Parents and Unparented given")
	}
	if fi, err := os.Lstat(root); err != nil {
		return ApplyResult{}, fmt.Errorf("layerdiff: apply: %w", err)
	} else if !fi.IsDir() {
		return ApplyResult{}, fmt.Errorf("layerdiff: apply: %s is not a directory", root)
	}

	compressed := &hashCounter{h: digest.Canonical.Hash()}
	// r is read, and hashed, ahead in a goroutine of its own, off the
	// decompressor's.
	raw := newPrefetcher(io.TeeReader(ctxReader{ctx, r}, compressed), nil)
	rawStopped := false
	stopRaw := func() {
		if !rawStopped {
			rawStopped = true
			raw.stopAndWait()
		}
	}
	defer stopRaw()
	br := bufio.NewReaderSize(raw, 128<<10)
	comp, err := DetectCompression(br)
	if err != nil {
		return ApplyResult{}, err
	}
	dec, err := newDecompressor(br, comp)
	if err != nil {
		return ApplyResult{}, err
	}
	if comp == Uncompressed {
		// Both digests are of the same bytes: hash them once, on the
		// uncompressed side, which sees the peeked bytes too.
		compressed.skip.Store(true)
	}
	// Released before the compressed tail is drained below; this one is
	// for the error paths.
	defer dec.Close()

	uncompressed := &limitReader{r: dec, max: opts.MaxUncompressed}
	rec := &recorder{max: opts.MaxUncompressed}
	var tsz *gzip.Writer
	if opts.TarSplit != nil {
		// BestSpeed, as containers/storage: the metadata is mostly
		// headers, and this runs in the extraction's critical path.
		tsz, err = gzip.NewWriterLevel(opts.TarSplit, gzip.BestSpeed)
		if err != nil {
			return ApplyResult{}, fmt.Errorf("layerdiff: tar-split compressor: %w", err)
		}
		rec.packer = storage.NewJSONPacker(tsz)
	}
	// The decompressor runs in a goroutine of its own too, ahead of
	// tar-split's parser and its
	// checksums: on two cores, decompression is then alone on the critical
	// path. tar-split parses the stream in another goroutine, hashes it,
	// and hands the same bytes on to the extractor.
	decoded := newPrefetcher(uncompressed, nil)
	uncompressedHash := digest.Canonical.Hash()
	tarStream, done := splitStream(ctx, decoded, uncompressedHash, rec)

	v := &vetter{
		root:  root,
		esc:   escapeChecker{root: root, lowers: opts.Parents, upper: plainResolver{root: root}, unp: opts.Unparented},
		max:   opts.MaxUncompressed,
		track: opts.TarSplit != nil,
		uids:  map[uint32]struct{}{},
		gids:  map[uint32]struct{}{},
	}
	defer v.esc.close()
	ex := newExtractor(root, opts.Parents, v)
	ex.unp = opts.Unparented
	applyErr := ex.apply(ctx, tarStream)
	afterEnd := false
	if applyErr == nil {
		// The extractor stops at the end-of-archive marker; tar-split goes
		// on reading what follows (the second zero block, blocking-factor
		// padding) and needs someone to take it.
		afterEnd = true
		_, applyErr = io.Copy(io.Discard, tarStream)
	}
	// On error, closing makes the parser's next hand-off fail so that it
	// stops; it always sends on done once it no longer reads.
	tarStream.Close()
	recErr := <-done
	// tar-split no longer reads: it is at EOF, or failed, or stopped.
	decoded.stopAndWait()
	if errors.Is(recErr, io.ErrClosedPipe) {
		recErr = nil // our own Close above, after applyErr
	}
	decErr := dec.Close()

	// A failure in the recorder's goroutine (decompression, tar-split)
	// reaches the extractor through the pipe, so applyErr usually holds it
	// already; recErr alone is a failure after the extractor was done.
	if err := cmp.Or(applyErr, recErr); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) && uncompressed.eof && !errors.Is(err, ErrTruncated) {
			err = fmt.Errorf("%w: tar ends inside an entry: %w", ErrTruncated, err)
		}
		// Which entry was being read or written when it failed, or its
		// predecessor when the failure is in reading the next header.
		where := fmt.Sprintf("last entry %q", v.lastName)
		switch {
		case afterEnd:
			where = "after the end of the archive"
		case !v.seen:
			where = "before the first entry"
		}
		return ApplyResult{}, fmt.Errorf("layerdiff: applying %s layer to %s (%s): %w", comp, root, where, err)
	}
	if decErr != nil {
		return ApplyResult{}, fmt.Errorf("layerdiff: closing %s decompressor: %w", comp, decErr)
	}
	// The blob's digest covers any bytes after the compressed stream too.
	// There should be none: the decoders read on to EOF for a next
	// stream or member, and fail on garbage, above.
	tail := io.Reader(br)
	if opts.MaxUncompressed > 0 {
		tail = io.LimitReader(br, opts.MaxUncompressed+1)
	}
	if n, err := io.Copy(io.Discard, tail); err != nil {
		return ApplyResult{}, fmt.Errorf("layerdiff: reading the rest of the layer blob: %w", err)
	} else if opts.MaxUncompressed > 0 && n > opts.MaxUncompressed {
		return ApplyResult{}, fmt.Errorf("layerdiff: %w: more than %d bytes after the %s stream", ErrTooLarge, opts.MaxUncompressed, comp)
	}
	stopRaw() // at EOF: compressed is complete
	if tsz != nil {
		if err := tsz.Close(); err != nil {
			return ApplyResult{}, fmt.Errorf("layerdiff: writing tar-split: %w", err)
		}
	}

	res := ApplyResult{
		Compression:        comp,
		CompressedSize:     compressed.n,
		UncompressedDigest: digest.NewDigest(digest.Canonical, uncompressedHash),
		UncompressedSize:   uncompressed.n,
		UIDs:               sortedIDs(v.uids),
		GIDs:               sortedIDs(v.gids),
	}
	res.CompressedDigest = res.UncompressedDigest
	if !compressed.skip.Load() {
		res.CompressedDigest = digest.NewDigest(digest.Canonical, compressed.h)
	}
	if opts.TarSplit != nil {
		if rec.notReproducible != "" {
			v.markNotReproducible("%s", rec.notReproducible)
		} else if rec.total != uncompressed.n {
			v.markNotReproducible("tar-split accounts for %d bytes of %d", rec.total, uncompressed.n)
		}
		v.checkReassembly(rec.payloads, ex.disturbed)
		res.NotReproducible = v.notReproducible
		res.Reproducible = v.notReproducible == ""
	}
	return res, nil
}

const whiteoutPrefix = ".wh."

// maxID is the largest owner id a file can have: (uid_t)-1 means "leave
// unchanged" to chown.
const maxID = math.MaxUint32 - 1

// vetter is the extractor's filter: it sees every header, in the
// extracting goroutine, just before the entry is written.
type vetter struct {
	root       string
	esc        escapeChecker
	max        int64
	declared   int64 // sizes regular files declare, for max
	uids, gids map[uint32]struct{}
	seen       bool
	lastName   string

	// track: a tar-split is recorded; find what would defeat reassembly.
	track bool
	// payloadAt maps where a file with content was written to its entry
	// name, to notice when a later entry replaces it.
	payloadAt       map[string]string
	payloads        []payload
	notReproducible string
}

// payload is a tar entry with content: where its content is, and how big.
type payload struct {
	name string // as the tar names it (cleaned, for the extractor's side)
	path string // where the extractor wrote it (extractor's side only)
	size int64
}

func (v *vetter) filter(hdr *tar.Header) (bool, error) {
	v.seen = true
	v.lastName = hdr.Name // the extractor has cleaned it
	if hdr.Uid < 0 || hdr.Uid > maxID || hdr.Gid < 0 || hdr.Gid > maxID {
		return false, fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	if !strings.HasPrefix(path.Base(hdr.Name), whiteoutPrefix) {
		v.uids[uint32(hdr.Uid)] = struct{}{}
		v.gids[uint32(hdr.Gid)] = struct{}{}
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		// Not a file. archive.Apply would still resolve its name and
		// remove whatever is there.
		return false, nil
	}
	// Refused before anything is written for the entry; archive.Apply's
	// own containment stays behind it.
	if err := v.esc.check(hdr); err != nil {
		return false, err
	}
	if hdr.Typeflag == tar.TypeGNUSparse {
		// archive.Apply would fail with "unhandled tar header type 83".
		return false, errors.New("old GNU sparse files are not supported")
	}
	if hdr.Typeflag == tar.TypeReg {
		if err := declare(&v.declared, hdr.Size, v.max); err != nil {
			return false, err
		}
	}
	return true, nil
}

// declare adds a regular file's declared size to *total and fails with
// ErrTooLarge once the total passes max (0: no bound). A sparse file declares
// its expanded size, beyond its bytes in the stream; sizes up to
// math.MaxInt64 do not wrap the total around.
func declare(total *int64, size, max int64) error {
	if max <= 0 {
		return nil
	}
	if size > max-*total {
		return fmt.Errorf("%w: files declare more than %d bytes", ErrTooLarge, max)
	}
	*total += size
	return nil
}

// trackEntry follows where content lands, so that Apply can tell whether
// the extracted tree still holds every payload the tar-split refers to. p
// is where the extractor is about to write hdr.
func (v *vetter) trackEntry(hdr *tar.Header, p string) error {
	if earlier, ok := v.payloadAt[p]; ok {
		v.markNotReproducible("entry %q replaces the content of entry %q", hdr.Name, earlier)
		delete(v.payloadAt, p)
	}
	if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
		return nil
	}
	if strings.HasPrefix(path.Base(hdr.Name), whiteoutPrefix) {
		v.markNotReproducible("whiteout %q has content, which an overlay whiteout cannot keep", hdr.Name)
		return nil
	}
	if v.payloadAt == nil {
		v.payloadAt = map[string]string{}
	}
	v.payloadAt[p] = hdr.Name
	v.payloads = append(v.payloads, payload{name: hdr.Name, path: p, size: hdr.Size})
	return nil
}

// removesDir notes that the directory p is removed, with its contents, to
// make way for hdr.
func (v *vetter) removesDir(hdr *tar.Header, p string) {
	for q, earlier := range v.payloadAt {
		if strings.HasPrefix(q, p+"/") {
			v.markNotReproducible("entry %q removes entry %q", hdr.Name, earlier)
			delete(v.payloadAt, q)
		}
	}
}

func (v *vetter) markNotReproducible(format string, args ...any) {
	if v.notReproducible == "" {
		v.notReproducible = fmt.Sprintf(format, args...)
	}
}

// checkReassembly checks that each payload tar-split recorded can be read
// back where Reassemble will look for it, and is the file the extractor
// wrote for that entry: the two parse the stream independently, and the
// extractor resolves symlinks at the time of the entry, which later entries
// can change (a directory symlink re-pointed).
//
// Looking is needed only when the extractor replaced or removed something,
// or wrote an entry through a symlink (disturbed): otherwise each payload
// was written at the path its name spells, through plain directories that
// are all still there, and nothing has been written over it (trackEntry
// would have seen it).
func (v *vetter) checkReassembly(recorded []payload, disturbed bool) {
	if v.notReproducible != "" {
		return
	}
	if len(recorded) != len(v.payloads) {
		v.markNotReproducible("tar-split recorded %d files with content, the extractor wrote %d", len(recorded), len(v.payloads))
		return
	}
	for i, ts := range recorded {
		ex := v.payloads[i]
		if relName(ts.name) != relName(ex.name) || ts.size != ex.size {
			v.markNotReproducible("tar-split and the extractor disagree on entry %q (%d bytes) vs %q (%d bytes)", ts.name, ts.size, ex.name, ex.size)
			return
		}
	}
	if !disturbed {
		return
	}
	rootFd, err := unix.Open(v.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		v.markNotReproducible("opening %s: %v", v.root, err)
		return
	}
	defer unix.Close(rootFd)
	in := newInRoot(rootFd, v.root)
	defer in.close()
	for i, ts := range recorded {
		ex := v.payloads[i]
		got, _, _, err := in.statRegular(ts.name)
		if err != nil {
			v.markNotReproducible("content of %q: %v", ts.name, err)
			return
		}
		var want unix.Stat_t
		if err := unix.Lstat(ex.path, &want); err != nil {
			v.markNotReproducible("content of %q: %v", ts.name, err)
			return
		}
		if got.Dev != want.Dev || got.Ino != want.Ino || got.Size != ts.size {
			v.markNotReproducible("%q no longer names the file its entry wrote", ts.name)
			return
		}
	}
}

// recorder sits between tar-split's parser and its JSON packer, in the
// parser's goroutine. As FilePutter it checksums payloads without storing
// them (they are in the extracted files); as Packer it corrects what
// tar-split would get wrong, and notes the payloads and the bytes accounted
// for.
type recorder struct {
	packer storage.Packer // nil: not recording
	// max bounds the sizes regular files declare, as the vetter does:
	// the parser expands a sparse file's holes itself, before the
	// extractor sees the entry.
	max      int64
	declared int64
	holes    int64 // bytes the parser returned beyond those it read
	// stream is what the parser reads; its count tells how many stream
	// bytes a payload took.
	stream   *teeBatcher
	buf      [32 << 10]byte
	lastPut  int64 // payload bytes the parser returned for the entry
	lastRaw  int64 // stream bytes it read for them
	total    int64 // bytes Reassemble will write
	payloads []payload

	notReproducible string
}

// header vets each header tar-split's parser reads, before the parser reads
// its payload. The vetter sees the same headers later, in the extractor; a
// sparse file must be refused here already, since its holes come from
// the parser, not the stream, and nothing else would bound them.
func (rc *recorder) header(hdr *tstar.Header) error {
	if hdr.Typeflag == tstar.TypeGNUSparse {
		// The vetter refuses them; do not expand one first.
		return fmt.Errorf("entry %q: old GNU sparse files are not supported", hdr.Name)
	}
	sparse := false
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			sparse = true // of whatever type: the parser expands it
			break
		}
	}
	if hdr.Typeflag == tstar.TypeReg || hdr.Typeflag == tstar.TypeRegA || sparse { //nolint:staticcheck // TypeRegA may still come in a tar
		if err := declare(&rc.declared, hdr.Size, rc.max); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	if sparse {
		// Expanding the holes reads nothing from the stream: hand the
		// extractor what the batch holds, this entry's header included,
		// so that it works meanwhile.
		return rc.stream.send(nil)
	}
	return nil
}

// Put is called for every entry whose header declares a size, just before
// AddEntry for it. It stops when the stream is closed or the context done,
// between chunks: a sparse file's holes read nothing from the stream, which
// would otherwise notice.
func (rc *recorder) Put(_ string, r io.Reader) (n int64, crc []byte, err error) {
	before := rc.stream.n
	var h hash.Hash64
	if rc.packer != nil {
		h = crc64.New(storage.CRCTable)
	}
	for {
		if err = rc.stream.stopped(); err != nil {
			break
		}
		var m int
		m, err = r.Read(rc.buf[:])
		if m > 0 && h != nil {
			h.Write(rc.buf[:m])
		}
		n += int64(m)
		if rc.max > 0 && rc.holes+n-(rc.stream.n-before) > rc.max {
			// Behind header's check, whatever made the parser expand.
			err = fmt.Errorf("%w: sparse files expand to more than %d bytes", ErrTooLarge, rc.max)
			break
		}
		if err == io.EOF {
			err = nil
			break
		}
		if err != nil {
			break
		}
	}
	if h != nil {
		crc = h.Sum(nil)
	}
	rc.lastPut, rc.lastRaw = n, rc.stream.n-before
	rc.holes += rc.lastPut - rc.lastRaw
	return n, crc, err
}

func (rc *recorder) AddEntry(e storage.Entry) (int, error) {
	switch {
	case e.Type == storage.SegmentType:
		rc.total += int64(len(e.Payload))
	case e.Size > 0:
		// Hard links, symlinks, devices, fifos and directories have no
		// payload whatever size their header declares, and tar-split
		// would have Reassemble copy in the file the name points to.
		// Record what the stream held.
		if rc.lastPut != e.Size {
			e.Size = rc.lastPut
			if e.Size == 0 {
				e.Payload = nil
			}
		}
		if rc.lastRaw != rc.lastPut && rc.notReproducible == "" {
			// A sparse file: the parser returns it expanded, holes as
			// zeros, and Reassemble would write it so. Leave the
			// checksum empty so that Reassemble fails on it instead.
			rc.notReproducible = fmt.Sprintf("%q is a sparse file (%d bytes in the tar, %d expanded), which tar-split cannot reassemble", e.GetName(), rc.lastRaw, rc.lastPut)
		}
		if rc.lastRaw != rc.lastPut {
			e.Payload = nil
		}
		rc.total += e.Size
		rc.lastPut, rc.lastRaw = 0, 0
		if e.Size > 0 {
			rc.payloads = append(rc.payloads, payload{name: e.GetName(), size: e.Size})
		}
	}
	if rc.packer == nil {
		return 0, nil
	}
	pos, err := rc.packer.AddEntry(e)
	if err != nil {
		return pos, fmt.Errorf("tar-split entry %q: %w", e.GetName(), err)
	}
	return pos, nil
}

// hashCounter is the writer side of a tee: it hashes (until skip is set) and
// counts.
type hashCounter struct {
	h    hash.Hash
	n    int64
	skip atomic.Bool // stop hashing (set from another goroutine)
}

func (c *hashCounter) Write(p []byte) (int, error) {
	if !c.skip.Load() {
		c.h.Write(p)
	}
	c.n += int64(len(p))
	return len(p), nil
}

// limitReader counts the decompressed stream, enforces the size bound, and
// remembers whether it ended cleanly (so that a tar reader's "unexpected
// EOF" can be blamed on the tar, not the compression).
type limitReader struct {
	r   io.Reader
	n   int64
	max int64
	eof bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.max > 0 && int64(len(p)) > l.max-l.n+1 {
		// Read at most one byte past the bound: enough to know.
		p = p[:l.max-l.n+1]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.max > 0 && l.n > l.max {
		return 0, fmt.Errorf("%w: decompresses to more than %d bytes", ErrTooLarge, l.max)
	}
	if err == io.EOF {
		l.eof = true
	}
	return n, err
}

// ctxReader fails reads once ctx is done, so that a cancelled Apply stops
// reading a long payload instead of finishing it.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func sortedIDs(set map[uint32]struct{}) []uint32 {
	ids := make([]uint32, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
