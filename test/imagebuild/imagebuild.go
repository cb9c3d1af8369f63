// Package imagebuild builds small, deterministic OCI image-layout archives
// (the tar format `ctr images import` and `nerdctl load` read) from files on
// the local machine: a statically linked busybox plus applet symlinks, and a
// few marker files spread over several layers so that layer chains,
// whiteouts and opaque directories are exercised.
//
// The same options always produce byte-identical archives (fixed mtimes,
// owners, ordering and gzip headers), so digests are stable across runs as
// long as the busybox binary does not change.
//
// Layer contents, for Layers = 3 (the default):
//
//	layer 1  /bin/busybox, /bin/<applet> -> busybox, /etc/cs-hello.txt,
//	         /etc/cs-remove-me.txt, /var/cs-gone/{f,sub/g}, /etc/passwd,
//	         /etc/group, empty /tmp, /root, /proc, /sys, /dev, /var
//	layer 2  /etc/cs-layer2.txt, /opt/cs/a.txt
//	layer 3  whiteouts /etc/.wh.cs-remove-me.txt and /var/.wh.cs-gone (a
//	         directory), opaque /opt/cs (/opt/cs/.wh..wh..opq) plus
//	         /opt/cs/b.txt
//	layer N  (N > 3) /etc/cs-layerN.txt
//
// Optional extra layers on top: a "fidelity" layer (Options.Fidelity, see
// FidelityEntries) with ownership, special modes, hard links, a fifo, a
// device node, a long name and an xattr under /opt/fid; and a layer with one
// big pseudo-random file (Options.BigFileSize) at BigFilePath.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	// DefaultName is the image name used when Options.Name is empty.
	DefaultName = "docker.io/library/cs-busybox:latest"
	// DefaultBusybox is where Debian's busybox-static installs its binary.
	DefaultBusybox = "/bin/busybox"
	// HelloPath is the file (in layer 1) whose content tests print.
	HelloPath = "/etc/cs-hello.txt"
	// HelloText is the default content of HelloPath.
	HelloText = "hello from cs-snapshotter\n"
	// Layer2Path is added by layer 2.
	Layer2Path = "/etc/cs-layer2.txt"
	// Layer2Text is the content of Layer2Path.
	Layer2Text = "added by layer 2\n"
	// RemovedPath exists in layer 1 and is deleted by a whiteout in layer 3.
	RemovedPath = "/etc/cs-remove-me.txt"
	// RemovedDir is a directory (with a file and a subdirectory) in layer 1
	// that layer 3 deletes with a single whiteout.
	RemovedDir = "/var/cs-gone"
	// OpaqueDir holds a.txt (layer 2); layer 3 makes it opaque and adds b.txt,
	// so in the final image it holds only b.txt.
	OpaqueDir = "/opt/cs"

	// FidelityDir holds the fidelity layer's files.
	FidelityDir = "/opt/fid"
	// BigFilePath is the file of the big-file layer.
	BigFilePath = "/opt/big.bin"

	// AnnotationImageName is containerd's annotation for the full image name.
	AnnotationImageName = "io.containerd.image.name"

	// DefaultPath is the PATH in the image config.
	DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Epoch is the fixed modification time of every file and of the image.
var Epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Applets are the busybox applets linked under /bin in layer 1. Tests can
// rely on all of them.
var Applets = []string{
	"[", "basename", "cat", "chmod", "cp", "cut", "date", "dirname", "du",
	"echo", "env", "false", "find", "grep", "head", "hostname", "id", "ln",
	"ls", "mkdir", "mv", "printf", "ps", "pwd", "readlink", "rm", "rmdir",
	"sed", "sh", "sha256sum", "sleep", "sort", "stat", "sync", "tail",
	"tee", "test", "touch", "true", "uname", "wc", "whoami", "xargs",
}

// Options controls Build.
type Options struct {
	// Name is the full image reference stored in index.json as
	// io.containerd.image.name; its tag (or "latest") goes to
	// org.opencontainers.image.ref.name. Default DefaultName.
	Name string
	// Layers is the number of layers, at least 1. Default 3.
	Layers int
	// Busybox is the path of a statically linked busybox. Default
	// DefaultBusybox.
	Busybox string
	// Hello is the content of HelloPath. Default HelloText.
	Hello string
	// Architecture of the image config; default runtime.GOARCH (busybox is
	// taken from this machine).
	Architecture string
	// Fidelity adds a layer with FidelityEntries on top.
	Fidelity bool
	// BigFileSize, if positive, adds a top layer holding BigFilePath with
	// that many deterministic pseudo-random bytes (BigFileData).
	BigFileSize int
}

// Layer describes one built layer.
type Layer struct {
	Descriptor ocispec.Descriptor // the compressed blob
	DiffID     digest.Digest      // digest of the uncompressed tar
	ChainID    digest.Digest      // chain ID up to and including this layer
	Comment    string             // what the layer does (also in history)
}

// Result describes a built image.
type Result struct {
	Name     string
	RefName  string
	Index    ocispec.Descriptor // descriptor of index.json's content
	Manifest ocispec.Descriptor
	Config   ocispec.Descriptor
	Layers   []Layer
	// Blobs maps each blob digest to its bytes (manifest, config, layers).
	Blobs map[digest.Digest][]byte
}

// ChainIDs returns the chain ID of every layer, bottom first. containerd
// names an image's committed snapshots by these.
func (r *Result) ChainIDs() []digest.Digest {
	out := make([]digest.Digest, len(r.Layers))
	for i, l := range r.Layers {
		out[i] = l.ChainID
	}
	return out
}

// DiffIDs returns the diff ID of every layer, bottom first.
func (r *Result) DiffIDs() []digest.Digest {
	out := make([]digest.Digest, len(r.Layers))
	for i, l := range r.Layers {
		out[i] = l.DiffID
	}
	return out
}

// BlobDigests returns the digests of manifest, config and layer blobs.
func (r *Result) BlobDigests() []digest.Digest {
	out := []digest.Digest{r.Manifest.Digest, r.Config.Digest}
	for _, l := range r.Layers {
		out = append(out, l.Descriptor.Digest)
	}
	return out
}

// CheckStaticBusybox returns an error unless path is a statically linked ELF
// executable (no PT_INTERP program header), so it runs in an image that has
// no libc.
func CheckStaticBusybox(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s: not a readable ELF binary (install busybox-static: scripts/install-deps.sh): %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; a static busybox is needed (apt-get install busybox-static, or run scripts/install-deps.sh)", p)
		}
	}
	// static-pie binaries have a dynamic section but no interpreter; they
	// still run without libc, so only PT_INTERP matters.
	return nil
}

func (o *Options) setDefaults() error {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Layers == 0 {
		o.Layers = 3
	}
	if o.Layers < 1 {
		return fmt.Errorf("imagebuild: Layers must be at least 1, got %d", o.Layers)
	}
	if o.Busybox == "" {
		o.Busybox = DefaultBusybox
	}
	if o.Hello == "" {
		o.Hello = HelloText
	}
	if o.Architecture == "" {
		o.Architecture = runtime.GOARCH
	}
	return nil
}

// RefName returns the tag of a reference ("latest" when it has none), the
// value for org.opencontainers.image.ref.name.
func RefName(name string) string {
	if i := strings.LastIndex(name, "@"); i >= 0 {
		name = name[:i]
	}
	slash := strings.LastIndex(name, "/")
	if i := strings.LastIndex(name, ":"); i > slash {
		return name[i+1:]
	}
	return "latest"
}

// entry is a file to put into a layer tar.
type entry struct {
	name         string // without leading slash; dirs without trailing slash
	typ          byte
	mode         int64
	data         []byte
	linkname     string
	uid, gid     int
	major, minor int64
	xattrs       map[string]string
}

func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func file(name string, mode int64, data []byte) entry {
	return entry{name: name, typ: tar.TypeReg, mode: mode, data: data}
}
func symlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, mode: 0o777, linkname: target}
}
func whiteout(p string) entry {
	return entry{name: path.Join(path.Dir(p), ".wh."+path.Base(p)), typ: tar.TypeReg, mode: 0o644}
}

// layerEntries returns the entries and a description of layer n (1-based).
func layerEntries(n int, o *Options, busybox []byte) ([]entry, string) {
	rel := func(p string) string { return strings.TrimPrefix(p, "/") }
	switch n {
	case 1:
		es := []entry{
			dir("bin"), dir("dev"), dir("etc"), dir("proc"), dir("root"),
			dir("sys"), {name: "tmp", typ: tar.TypeDir, mode: 0o1777}, dir("var"),
			file("bin/busybox", 0o755, busybox),
		}
		for _, a := range Applets {
			es = append(es, symlink("bin/"+a, "busybox"))
		}
		es = append(es,
			file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")),
			file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")),
			file(rel(HelloPath), 0o644, []byte(o.Hello)),
			file(rel(RemovedPath), 0o644, []byte("layer 3 deletes this file\n")),
			dir(rel(RemovedDir)),
			file(rel(RemovedDir)+"/f", 0o644, []byte("f\n")),
			dir(rel(RemovedDir)+"/sub"),
			file(rel(RemovedDir)+"/sub/g", 0o644, []byte("g\n")),
		)
		return es, "busybox, applets and " + HelloPath
	case 2:
		return []entry{
			dir("etc"),
			file(rel(Layer2Path), 0o644, []byte(Layer2Text)),
			dir("opt"), dir(rel(OpaqueDir)),
			file(rel(OpaqueDir)+"/a.txt", 0o644, []byte("a\n")),
		}, "add " + Layer2Path + " and " + OpaqueDir + "/a.txt"
	case 3:
		return []entry{
			dir("etc"),
			whiteout(rel(RemovedPath)),
			dir("opt"), dir(rel(OpaqueDir)),
			dir("var"), whiteout(rel(RemovedDir)),
			file(rel(OpaqueDir)+"/.wh..wh..opq", 0o644, nil),
			file(rel(OpaqueDir)+"/b.txt", 0o644, []byte("b\n")),
		}, "delete " + RemovedPath + " and " + RemovedDir + ", make " + OpaqueDir + " opaque, add b.txt"
	default:
		p := fmt.Sprintf("/etc/cs-layer%d.txt", n)
		return []entry{
			dir("etc"),
			file(rel(p), 0o644, fmt.Appendf(nil, "added by layer %d\n", n)),
		}, "add " + p
	}
}

// FidelityFile describes one entry of the fidelity layer as `stat -c
// '%n|%u|%g|%a|%h|%F'` (busybox) prints it inside a container.
type FidelityFile struct {
	Path string
	Stat string // expected stat output, without %n
}

// LongName is the base name of the fidelity layer's long-named file (longer
// than the 100 bytes a plain tar header holds).
var LongName = strings.Repeat("long-name-", 15) + "end"

// XattrName and XattrValue are set on FidelityDir/xattr.
const (
	XattrName  = "user.cs-snapshotter"
	XattrValue = "xattr value"
)

// fidelityEntries is the fidelity layer.
func fidelityEntries() []entry {
	d := strings.TrimPrefix(FidelityDir, "/")
	return []entry{
		dir("opt"), dir(d),
		{name: d + "/owned", typ: tar.TypeReg, mode: 0o640, uid: 1000, gid: 2000, data: []byte("owned\n")},
		{name: d + "/hardlink", typ: tar.TypeLink, mode: 0o640, uid: 1000, gid: 2000, linkname: d + "/owned"},
		{name: d + "/setuid", typ: tar.TypeReg, mode: 0o4755, data: []byte("#!/bin/sh\n")},
		{name: d + "/sticky", typ: tar.TypeDir, mode: 0o1777},
		{name: d + "/empty", typ: tar.TypeReg, mode: 0o600},
		{name: d + "/etclink", typ: tar.TypeSymlink, mode: 0o777, linkname: "/etc"},
		{name: d + "/fifo", typ: tar.TypeFifo, mode: 0o600},
		{name: d + "/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		{name: d + "/" + LongName, typ: tar.TypeReg, mode: 0o644, data: []byte("long\n")},
		{name: d + "/xattr", typ: tar.TypeReg, mode: 0o644, data: []byte("x\n"), xattrs: map[string]string{XattrName: XattrValue}},
		{name: d + "/deep/a/b/c/d", typ: tar.TypeDir, mode: 0o700, uid: 7, gid: 8},
	}
}

// FidelityFiles returns what the fidelity layer's entries look like in a
// container (busybox `stat -c '%u|%g|%a|%h|%F'`).
func FidelityFiles() []FidelityFile {
	d := FidelityDir
	return []FidelityFile{
		{d + "/owned", "1000|2000|640|2|regular file"},
		{d + "/hardlink", "1000|2000|640|2|regular file"},
		{d + "/setuid", "0|0|4755|1|regular file"},
		{d + "/sticky", "0|0|1777|2|directory"},
		{d + "/empty", "0|0|600|1|regular empty file"},
		{d + "/etclink", "0|0|777|1|symbolic link"},
		{d + "/fifo", "0|0|600|1|fifo"},
		{d + "/null", "0|0|666|1|character special file"},
		{d + "/" + LongName, "0|0|644|1|regular file"},
		{d + "/xattr", "0|0|644|1|regular file"},
		{d + "/deep/a/b/c/d", "7|8|700|2|directory"},
	}
}

// BigFileData returns the content of BigFilePath for a size: deterministic
// pseudo-random (incompressible) bytes.
func BigFileData(size int) []byte {
	b := make([]byte, size)
	var seed [32]byte
	copy(seed[:], "cs-snapshotter imagebuild bigfile")
	r := rand.NewChaCha8(seed)
	_, _ = r.Read(b)
	return b
}

// LayerFile returns the path of the marker file layer n (n >= 2) adds, or ""
// for layers that add none of the /etc/cs-layerN.txt files.
func LayerFile(n int) string {
	switch {
	case n == 2:
		return Layer2Path
	case n > 3:
		return fmt.Sprintf("/etc/cs-layer%d.txt", n)
	}
	return ""
}

// writeTar writes entries as a deterministic tar stream.
func writeTar(w io.Writer, es []entry) error {
	tw := tar.NewWriter(w)
	for _, e := range es {
		hdr := &tar.Header{
			Typeflag: e.typ,
			Name:     e.name,
			Linkname: e.linkname,
			Mode:     e.mode,
			Uid:      0,
			Gid:      0,
			ModTime:  Epoch,
			// Only fields USTAR can hold are set, so archive/tar writes
			// plain USTAR headers (no PAX records), deterministically.
			Format: tar.FormatUSTAR,
		}
		if e.typ == tar.TypeDir {
			hdr.Name += "/"
		}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.data))
		}
		hdr.Uid, hdr.Gid = e.uid, e.gid
		hdr.Devmajor, hdr.Devminor = e.major, e.minor
		if len(e.xattrs) > 0 || len(hdr.Name) > 100 {
			// Long names and xattrs need PAX records; archive/tar writes
			// them sorted, so this stays deterministic.
			hdr.Format = tar.FormatPAX
			for k, v := range e.xattrs {
				if hdr.PAXRecords == nil {
					hdr.PAXRecords = map[string]string{}
				}
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar header %s: %w", e.name, err)
		}
		if len(e.data) > 0 {
			if _, err := tw.Write(e.data); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// buildLayer returns the gzip blob and the diff ID of a layer.
func buildLayer(es []entry) (blob []byte, diffID digest.Digest, err error) {
	var raw bytes.Buffer
	if err := writeTar(&raw, es); err != nil {
		return nil, "", err
	}
	diffID = digest.FromBytes(raw.Bytes())
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if err != nil {
		return nil, "", err
	}
	// Zero header: no name, no mtime, so output depends on content only.
	zw.Header = gzip.Header{OS: 255}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), diffID, nil
}

func descriptorOf(mediaType string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

// Build builds the image described by opts and writes it as an OCI
// image-layout tar archive to w.
func Build(w io.Writer, opts Options) (*Result, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	if err := CheckStaticBusybox(opts.Busybox); err != nil {
		return nil, err
	}
	busybox, err := os.ReadFile(opts.Busybox)
	if err != nil {
		return nil, err
	}

	res := &Result{Name: opts.Name, RefName: RefName(opts.Name), Blobs: map[digest.Digest][]byte{}}
	var history []ocispec.History
	var diffIDs []digest.Digest
	type layerSpec struct {
		entries []entry
		comment string
	}
	var layerSpecs []layerSpec
	for n := 1; n <= opts.Layers; n++ {
		es, comment := layerEntries(n, &opts, busybox)
		layerSpecs = append(layerSpecs, layerSpec{es, comment})
	}
	if opts.Fidelity {
		layerSpecs = append(layerSpecs, layerSpec{fidelityEntries(), "fidelity: ownership, modes, links, fifo, device, long name, xattr under " + FidelityDir})
	}
	if opts.BigFileSize > 0 {
		layerSpecs = append(layerSpecs, layerSpec{[]entry{dir("opt"), file(strings.TrimPrefix(BigFilePath, "/"), 0o644, BigFileData(opts.BigFileSize))},
			fmt.Sprintf("add %s (%d pseudo-random bytes)", BigFilePath, opts.BigFileSize)})
	}
	for i, spec := range layerSpecs {
		n := i + 1
		es, comment := spec.entries, spec.comment
		blob, diffID, err := buildLayer(es)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", n, err)
		}
		diffIDs = append(diffIDs, diffID)
		desc := descriptorOf(ocispec.MediaTypeImageLayerGzip, blob)
		res.Blobs[desc.Digest] = blob
		res.Layers = append(res.Layers, Layer{Descriptor: desc, DiffID: diffID, Comment: comment})
		history = append(history, ocispec.History{Created: &Epoch, CreatedBy: "cs-snapshotter imagebuild: " + comment})
	}
	for i, c := range identity.ChainIDs(append([]digest.Digest(nil), diffIDs...)) {
		res.Layers[i].ChainID = c
	}

	cfg := ocispec.Image{
		Created:  &Epoch,
		Platform: ocispec.Platform{Architecture: opts.Architecture, OS: "linux"},
		Config: ocispec.ImageConfig{
			Env:        []string{"PATH=" + DefaultPath},
			Cmd:        []string{"/bin/sh"},
			WorkingDir: "/",
		},
		RootFS:  ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
		History: history,
	}
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	res.Config = descriptorOf(ocispec.MediaTypeImageConfig, cfgBytes)
	res.Blobs[res.Config.Digest] = cfgBytes

	mf := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    res.Config,
	}
	for _, l := range res.Layers {
		mf.Layers = append(mf.Layers, l.Descriptor)
	}
	mfBytes, err := json.Marshal(mf)
	if err != nil {
		return nil, err
	}
	res.Manifest = descriptorOf(ocispec.MediaTypeImageManifest, mfBytes)
	res.Blobs[res.Manifest.Digest] = mfBytes

	mdesc := res.Manifest
	mdesc.Platform = &ocispec.Platform{Architecture: opts.Architecture, OS: "linux"}
	mdesc.Annotations = map[string]string{
		AnnotationImageName:       opts.Name,
		ocispec.AnnotationRefName: res.RefName,
	}
	idx := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{mdesc},
	}
	idxBytes, err := json.Marshal(idx)
	if err != nil {
		return nil, err
	}
	res.Index = descriptorOf(ocispec.MediaTypeImageIndex, idxBytes)

	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return nil, err
	}

	// The archive: oci-layout, blobs (sorted by digest), index.json.
	tw := tar.NewWriter(w)
	add := func(name string, typ byte, mode int64, data []byte) error {
		hdr := &tar.Header{Typeflag: typ, Name: name, Mode: mode, ModTime: Epoch, Size: int64(len(data)), Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := add(ocispec.ImageLayoutFile, tar.TypeReg, 0o644, layout); err != nil {
		return nil, err
	}
	if err := add("blobs/", tar.TypeDir, 0o755, nil); err != nil {
		return nil, err
	}
	if err := add("blobs/sha256/", tar.TypeDir, 0o755, nil); err != nil {
		return nil, err
	}
	digests := make([]digest.Digest, 0, len(res.Blobs))
	for d := range res.Blobs {
		digests = append(digests, d)
	}
	sort.Slice(digests, func(i, j int) bool { return digests[i] < digests[j] })
	for _, d := range digests {
		if err := add("blobs/sha256/"+d.Encoded(), tar.TypeReg, 0o644, res.Blobs[d]); err != nil {
			return nil, err
		}
	}
	if err := add(ocispec.ImageIndexFile, tar.TypeReg, 0o644, idxBytes); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return res, nil
}

// BuildFile builds the image into the file at path (written atomically).
func BuildFile(p string, opts Options) (res *Result, err error) {
	tmp, err := os.CreateTemp(filepath.Dir(p), ".imagebuild-*")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	res, err = Build(tmp, opts)
	if err != nil {
		return nil, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return nil, errors.Join(err, os.Remove(tmp.Name()))
	}
	return res, nil
}

// Sha256File returns the sha256 digest of a file, for callers that want to
// compare archives.
func Sha256File(p string) (digest.Digest, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return digest.NewDigest(digest.SHA256, h), nil
}
