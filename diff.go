package storage

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/layerdiff"
	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
)

// Compression is a layer diff's compression, numbered as containers/storage
// numbers it.
type Compression int

// The compressions, with containers/storage's values.
const (
	Uncompressed Compression = iota
	Bzip2
	Gzip
	Xz
	Zstd
)

var compressionNames = map[Compression]string{Uncompressed: "none", Bzip2: "bzip2", Gzip: "gzip", Xz: "xz", Zstd: "zstd"}

func (c Compression) String() string {
	if n, ok := compressionNames[c]; ok {
		return n
	}
	return fmt.Sprintf("compression(%d)", int(c))
}

func parseCompression(s string) Compression {
	for c, n := range compressionNames {
		if n == s {
			return c
		}
	}
	return Uncompressed
}

func fromLayerdiff(c layerdiff.Compression) Compression {
	return parseCompression(c.String())
}

func toLayerdiff(c Compression) layerdiff.Compression {
	for _, lc := range []layerdiff.Compression{layerdiff.Uncompressed, layerdiff.Gzip, layerdiff.Zstd, layerdiff.Bzip2, layerdiff.Xz} {
		if lc.String() == c.String() {
			return lc
		}
	}
	return layerdiff.Uncompressed
}

// DiffOptions tune Diff.
type DiffOptions struct {
	// Compression of the result; nil means the layer's own.
	Compression *Compression
}

// layerDirs returns the directory holding layer r's own files and its
// parents' directories, nearest first; release frees what it took.
func (s *store) layerDirs(r *layerRecord) (upper string, lowers []string, release func(), err error) {
	if r.writeable {
		m, err := s.sn.Mounts(s.ctx, r.key)
		if err != nil {
			return "", nil, nil, mapErr(err)
		}
		upper, lowers, err := overlayutils.Dirs(m, false)
		return upper, lowers, func() {}, err
	}
	// Owned, so containerd's garbage collector (which removes backend
	// snapshots it does not know) neither takes it while it is read nor
	// races its removal.
	key := viewPrefix + newID()
	m, err := s.sn.View(s.ctx, key, r.key, snapshots.WithLabels(map[string]string{cslabels.Owned: "store"}))
	if err != nil {
		return "", nil, nil, mapErr(fmt.Errorf("view layer %s: %w", r.ID, err))
	}
	release = func() { s.deleteSnapshot(key) }
	upper, lowers, err = overlayutils.Dirs(m, true)
	if err != nil {
		release()
		return "", nil, nil, err
	}
	return upper, lowers, release, nil
}

// applyInto applies diff into upper (a layer's own directory, with lowers
// beneath it), storing its tar-split as a blob, and returns the labels that
// record it.
func (s *store) applyInto(id, upper string, lowers []string, diff io.Reader) (map[string]string, error) {
	ref := "cs.tar-split." + id
	w, err := content.OpenWriter(s.ctx, s.cs, content.WithRef(ref))
	if err != nil {
		return nil, fmt.Errorf("record tar-split of layer %s: %w", id, err)
	}
	defer w.Close()
	if err := w.Truncate(0); err != nil {
		return nil, fmt.Errorf("record tar-split of layer %s: %w", id, err)
	}
	// If the applied files cannot reproduce the diff (a sparse file, a
	// whiteout with content), the original is kept as a blob instead. A
	// seekable diff (a file) is read again for that; anything else is
	// spooled aside while it is applied.
	original, input, cleanup, err := rereadable(diff)
	if err != nil {
		return nil, fmt.Errorf("apply diff to layer %s: %w", id, err)
	}
	defer cleanup()
	res, err := layerdiff.Apply(s.ctx, upper, input, layerdiff.ApplyOptions{TarSplit: w, Parents: lowers, MaxUncompressed: s.opts.MaxLayerSize})
	if err != nil {
		s.cs.Abort(s.ctx, ref)
		return nil, fmt.Errorf("apply diff to layer %s: %w", id, err)
	}
	labels := map[string]string{
		cslabels.CompressedDigest:   res.CompressedDigest.String(),
		cslabels.CompressedSize:     strconv.FormatInt(res.CompressedSize, 10),
		cslabels.UncompressedDigest: res.UncompressedDigest.String(),
		cslabels.UncompressedSize:   strconv.FormatInt(res.UncompressedSize, 10),
		cslabels.Compression:        fromLayerdiff(res.Compression).String(),
		cslabels.UIDs:               formatIDSet(res.UIDs),
		cslabels.GIDs:               formatIDSet(res.GIDs),
	}
	if !res.Reproducible {
		s.cs.Abort(s.ctx, ref)
		again, err := original()
		if err != nil {
			return nil, fmt.Errorf("keep the diff of layer %s (%s): %w", id, res.NotReproducible, err)
		}
		dgst, err := s.writeBlob("cs.diff."+id, again, cslabels.BlobRefPrefix+id+".diff")
		if err != nil {
			return nil, fmt.Errorf("keep the diff of layer %s (%s): %w", id, res.NotReproducible, err)
		}
		labels[cslabels.DiffBlob] = dgst.String()
		return labels, nil
	}
	// The same tar-split may be another layer's already: it gets this
	// layer's reference too, in the same step.
	dgst, err := contentstore.CommitReferenced(s.ctx, s.cs, w, map[string]string{cslabels.BlobRefPrefix + id + ".tar-split": "tar-split"})
	if err != nil {
		return nil, fmt.Errorf("store tar-split of layer %s: %w", id, err)
	}
	labels[cslabels.TarSplit] = dgst.String()
	return labels, nil
}

// rereadable returns the reader to apply from diff, and a function giving
// the same bytes again afterwards: by seeking back when diff is a seekable
// file, from a spooled copy otherwise.
func rereadable(diff io.Reader) (again func() (io.Reader, error), input io.Reader, cleanup func(), err error) {
	if f, ok := diff.(io.ReadSeeker); ok {
		if start, err := f.Seek(0, io.SeekCurrent); err == nil {
			return func() (io.Reader, error) {
				_, err := f.Seek(start, io.SeekStart)
				return f, err
			}, f, func() {}, nil
		}
	}
	spool, err := os.CreateTemp("", "cs-diff-")
	if err != nil {
		return nil, nil, nil, err
	}
	os.Remove(spool.Name())
	return func() (io.Reader, error) {
		_, err := spool.Seek(0, io.SeekStart)
		return spool, err
	}, io.TeeReader(diff, spool), func() { spool.Close() }, nil
}

// releaseBlob drops layer id's reference (what) to blob dgst and deletes
// the blob once nothing references it.
func (s *store) releaseBlob(dgst, id, what string) {
	if dgst == "" {
		return
	}
	contentstore.Release(s.ctx, s.cs, digest.Digest(dgst), cslabels.BlobRefPrefix+id+"."+what)
}

// ApplyDiff applies diff to the layer to, returning the uncompressed bytes
// applied. While it applies, the layer is marked incomplete, so a crash
// leaves it to be removed at the next start.
func (s *store) ApplyDiff(to string, diff io.Reader) (int64, error) {
	r, err := s.layer(to)
	if err != nil {
		return -1, err
	}
	if _, err := s.sn.Update(s.ctx, snapshots.Info{Name: r.key, Labels: map[string]string{cslabels.Incomplete: "applying"}}, "labels."+cslabels.Incomplete); err != nil {
		return -1, mapErr(err)
	}
	upper, lowers, release, err := s.layerDirs(r)
	if err != nil {
		s.clearIncomplete(r)
		return -1, err
	}
	defer release()
	labels, err := s.applyInto(r.ID, upper, lowers, diff)
	if err != nil {
		// As containers/storage, a failed apply leaves the layer in place
		// (partly written); only a crash, which the label is for, removes it.
		s.clearIncomplete(r)
		return -1, err
	}
	old, oldDiff := r.labels[cslabels.TarSplit], r.labels[cslabels.DiffBlob]
	labels[cslabels.Incomplete] = ""
	paths := []string{"labels." + cslabels.Incomplete, "labels." + cslabels.TarSplit, "labels." + cslabels.DiffBlob}
	for k := range labels {
		paths = append(paths, "labels."+k)
	}
	if _, err := s.sn.Update(s.ctx, snapshots.Info{Name: r.key, Labels: labels}, paths...); err != nil {
		return -1, mapErr(err)
	}
	if old != "" && old != labels[cslabels.TarSplit] {
		s.releaseBlob(old, r.ID, "tar-split")
	}
	if oldDiff != "" && oldDiff != labels[cslabels.DiffBlob] {
		s.releaseBlob(oldDiff, r.ID, "diff")
	}
	return strconv.ParseInt(labels[cslabels.UncompressedSize], 10, 64)
}

func (s *store) clearIncomplete(r *layerRecord) {
	s.sn.Update(s.ctx, snapshots.Info{Name: r.key}, "labels."+cslabels.Incomplete)
}

// Diff returns the changes of layer to against from (its parent when
// empty) as a tar stream, compressed as options say (the layer's own
// compression by default). Against its parent, a layer with a tar-split
// reproduces the tar it was made from byte for byte.
func (s *store) Diff(from, to string, options *DiffOptions) (io.ReadCloser, error) {
	r, err := s.layerAgainst(from, to, "diff")
	if err != nil {
		return nil, err
	}
	compression := r.CompressionType
	if options != nil && options.Compression != nil {
		compression = *options.Compression
	}
	rc, err := s.rawDiff(r)
	if err != nil {
		return nil, err
	}
	if compression == Uncompressed {
		return rc, nil
	}
	pr, pw := io.Pipe()
	go func() {
		cw, err := layerdiff.Compress(pw, toLayerdiff(compression))
		if err == nil {
			_, err = io.Copy(cw, rc)
			if cerr := cw.Close(); err == nil {
				err = cerr
			}
		}
		rc.Close()
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// rawDiff is the uncompressed diff of r against its parent.
func (s *store) rawDiff(r *layerRecord) (io.ReadCloser, error) {
	upper, lowers, release, err := s.layerDirs(r)
	if err != nil {
		return nil, err
	}
	if d := r.labels[cslabels.DiffBlob]; d != "" {
		release()
		ra, err := s.blobReader(digest.Digest(d))
		if err != nil {
			return nil, fmt.Errorf("diff blob of layer %s: %w", r.ID, err)
		}
		rc, _, err := layerdiff.Decompress(content.NewReader(ra))
		if err != nil {
			ra.Close()
			return nil, fmt.Errorf("diff blob of layer %s: %w", r.ID, err)
		}
		return &closers{ReadCloser: rc, after: func() { ra.Close() }}, nil
	}
	if ts := r.labels[cslabels.TarSplit]; ts != "" {
		ra, err := s.blobReader(digest.Digest(ts))
		if err != nil {
			release()
			return nil, fmt.Errorf("tar-split of layer %s: %w", r.ID, err)
		}
		rc, err := layerdiff.Reassemble(upper, content.NewReader(ra))
		if err != nil {
			ra.Close()
			release()
			return nil, fmt.Errorf("reassemble layer %s: %w", r.ID, err)
		}
		return &closers{ReadCloser: rc, after: func() { ra.Close(); release() }}, nil
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := layerdiff.WriteDiff(s.ctx, pw, lowers, upper)
		release()
		pw.CloseWithError(err)
	}()
	// Closing early must still wait for WriteDiff to let go of its mounts
	// and the view, or a caller that exits right after leaves them behind.
	return &closers{ReadCloser: pr, after: func() { <-done }}, nil
}

type closers struct {
	io.ReadCloser
	after func()
}

// WriteTo lets io.Copy use the stream's own WriteTo (a reassembly writes
// straight into the destination).
func (c *closers) WriteTo(w io.Writer) (int64, error) { return io.Copy(w, c.ReadCloser) }

func (c *closers) Close() error {
	err := c.ReadCloser.Close()
	c.after()
	return err
}

// layerAgainst returns layer to, checking that from, if given, is its
// parent: diffs between other layers are not supported.
func (s *store) layerAgainst(from, to, what string) (*layerRecord, error) {
	idx, err := s.load()
	if err != nil {
		return nil, err
	}
	r, err := idx.get(to)
	if err != nil {
		return nil, err
	}
	if from != "" {
		f, err := idx.get(from)
		if err != nil {
			return nil, err
		}
		if f.ID != r.Parent {
			return nil, fmt.Errorf("%s of layer %s against %s, which is not its parent: %w", what, r.ID, f.ID, ErrNotSupported)
		}
	}
	return r, nil
}

// DiffSize returns what containers/storage's overlay driver does: against
// the parent, the bytes of the files in the layer's own directory (each
// hard-linked file once); against another layer, the size of the diff.
func (s *store) DiffSize(from, to string) (int64, error) {
	r, err := s.layerAgainst(from, to, "size")
	if err != nil {
		return -1, err
	}
	upper, _, release, err := s.layerDirs(r)
	if err != nil {
		return -1, err
	}
	defer release()
	return filesSize(upper)
}

func filesSize(dir string) (int64, error) {
	var size int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		size += info.Size()
		return nil
	})
	return size, err
}

// ChangeKind says how a path changed.
type ChangeKind int

// The kinds of change, numbered as containers/storage's archive package.
const (
	ChangeModify ChangeKind = iota
	ChangeAdd
	ChangeDelete
)

func (k ChangeKind) String() string {
	switch k {
	case ChangeModify:
		return "C"
	case ChangeAdd:
		return "A"
	case ChangeDelete:
		return "D"
	}
	return ""
}

// Change is a changed path of a layer.
type Change struct {
	Path string
	Kind ChangeKind
}

func (c *Change) String() string { return fmt.Sprintf("%s %s", c.Kind, c.Path) }

// Changes lists the paths layer to changes against from (its parent when
// empty).
func (s *store) Changes(from, to string) ([]Change, error) {
	r, err := s.layerAgainst(from, to, "changes")
	if err != nil {
		return nil, err
	}
	_, lowers, release, err := s.layerDirs(r)
	if err != nil {
		return nil, err
	}
	defer release()
	rc, err := s.rawDiff(r)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var changes []Change
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("changes of layer %s: %w", r.ID, err)
		}
		p := "/" + strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		dir, base := path.Split(p)
		switch {
		case base == ".wh..wh..opq":
			continue
		case strings.HasPrefix(base, ".wh."):
			changes = append(changes, Change{Path: path.Join(dir, strings.TrimPrefix(base, ".wh.")), Kind: ChangeDelete})
		case inLowers(lowers, p):
			changes = append(changes, Change{Path: p, Kind: ChangeModify})
		default:
			changes = append(changes, Change{Path: p, Kind: ChangeAdd})
		}
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i].Path < changes[j].Path })
	return changes, nil
}

// inLowers tells whether path p shows in the merged lower layers (nearest
// first), as overlay shows them: a whiteout of p or of a parent hides it and
// everything beneath, and so does an opaque parent directory.
func inLowers(lowers []string, p string) bool {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	for _, l := range lowers {
		dir := l
		for i, part := range parts {
			dir = filepath.Join(dir, part)
			var st unix.Stat_t
			if unix.Lstat(dir, &st) != nil {
				break // not in this layer; look lower
			}
			if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
				return false // whited out here
			}
			if i == len(parts)-1 {
				return true
			}
			if isOpaque(dir) {
				// Beneath an opaque directory only this layer counts.
				_, err := os.Lstat(filepath.Join(dir, filepath.Join(parts[i+1:]...)))
				return err == nil
			}
		}
	}
	return false
}

func isOpaque(dir string) bool {
	buf := make([]byte, 1)
	for _, attr := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if n, err := unix.Lgetxattr(dir, attr, buf); err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}
