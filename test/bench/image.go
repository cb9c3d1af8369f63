package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// bigLayer is one gzip layer built from a host directory.
type bigLayer struct {
	Dir       string        `json:"dir"`
	Path      string        `json:"path"` // the .tar.gz on disk
	Digest    digest.Digest `json:"digest"`
	DiffID    digest.Digest `json:"diff_id"`
	Size      int64         `json:"size"`       // compressed
	TarSize   int64         `json:"tar_size"`   // uncompressed tar stream
	FileBytes int64         `json:"file_bytes"` // regular file contents
	Entries   int           `json:"entries"`
}

// bigImage is the OCI archive of the layers.
type bigImage struct {
	Name    string     `json:"name"`
	Archive string     `json:"archive"`
	Layers  []bigLayer `json:"layers"`
}

func (im *bigImage) tarSize() (n int64) {
	for _, l := range im.Layers {
		n += l.TarSize
	}
	return n
}

func (im *bigImage) entries() (n int) {
	for _, l := range im.Layers {
		n += l.Entries
	}
	return n
}

func (im *bigImage) compressed() (n int64) {
	for _, l := range im.Layers {
		n += l.Size
	}
	return n
}

type hashWriter struct {
	h io.Writer
	w io.Writer
	n int64
}

func (hw *hashWriter) Write(p []byte) (int, error) {
	hw.h.Write(p)
	hw.n += int64(len(p))
	if hw.w == nil {
		return len(p), nil
	}
	return hw.w.Write(p)
}

// buildLayer writes dir (as the same path inside the layer) to out as a
// gzip tar, stopping after budget bytes of file contents.
func buildLayer(dir, out string, budget int64) (bigLayer, error) {
	l := bigLayer{Dir: dir, Path: out}
	f, err := os.Create(out)
	if err != nil {
		return l, err
	}
	defer f.Close()
	ch := sha256.New()
	cw := &hashWriter{h: ch, w: f}
	gz, _ := gzip.NewWriterLevel(cw, gzip.DefaultCompression)
	uh := sha256.New()
	uw := &hashWriter{h: uh, w: gz}
	tw := tar.NewWriter(uw)
	// parents of dir
	rel := strings.TrimPrefix(filepath.Clean(dir), "/")
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.Join(parts[:i], "/") + "/", Mode: 0o755, Format: tar.FormatPAX}); err != nil {
			return l, err
		}
		l.Entries++
	}
	errStop := errors.New("budget reached")
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode()
		var link string
		switch {
		case mode.IsRegular(), mode.IsDir():
		case mode&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			return nil // sockets, devices, fifos: not in these trees
		}
		if l.FileBytes >= budget-budget/100 {
			return errStop // within 1 % of the budget
		}
		if mode.IsRegular() && l.FileBytes+info.Size() > budget {
			return nil // does not fit: skip it, smaller files may
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = strings.TrimPrefix(p, "/")
		if mode.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.Format = tar.FormatPAX
		hdr.AccessTime, hdr.ChangeTime = hdr.ModTime, hdr.ModTime
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		l.Entries++
		if mode.IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			n, err := io.Copy(tw, src)
			src.Close()
			if err != nil {
				return err
			}
			l.FileBytes += n
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return l, err
	}
	if err := tw.Close(); err != nil {
		return l, err
	}
	if err := gz.Close(); err != nil {
		return l, err
	}
	l.TarSize = uw.n
	l.Size = cw.n
	l.DiffID = digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(uh.Sum(nil)))
	l.Digest = digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(ch.Sum(nil)))
	return l, f.Close()
}

// buildBigImage builds one layer per directory, with totalBytes of file
// contents spread over them (a directory smaller than its share leaves the
// rest to the following ones), and writes them as an OCI archive.
func buildBigImage(work, name string, dirs []string, totalBytes int64) (*bigImage, error) {
	stamp := filepath.Join(work, "big-image.json")
	key := fmt.Sprintf("%s|%v|%d", name, dirs, totalBytes)
	if b, err := os.ReadFile(stamp); err == nil {
		var cached struct {
			Key   string
			Image bigImage
		}
		if json.Unmarshal(b, &cached) == nil && cached.Key == key {
			if _, err := os.Stat(cached.Image.Archive); err == nil {
				logf("reusing %s (%s)", cached.Image.Archive, key)
				return &cached.Image, nil
			}
		}
	}
	im := &bigImage{Name: name, Archive: filepath.Join(work, "big.oci.tar")}
	// Budgets: each directory's share of what is left; the sizes are only
	// known after walking, so measure first.
	sizes := make([]int64, len(dirs))
	for i, d := range dirs {
		_ = filepath.WalkDir(d, func(p string, de fs.DirEntry, err error) error {
			if err == nil && de.Type().IsRegular() {
				if info, err := de.Info(); err == nil {
					sizes[i] += info.Size()
				}
			}
			return nil
		})
	}
	budgets := make([]int64, len(dirs))
	left := totalBytes
	// smallest first get what they have
	done := make([]bool, len(dirs))
	for range dirs {
		n := 0
		for i := range dirs {
			if !done[i] {
				n++
			}
		}
		share := left / int64(max(n, 1))
		small := -1
		for i := range dirs {
			if !done[i] && sizes[i] <= share && (small < 0 || sizes[i] < sizes[small]) {
				small = i
			}
		}
		if small < 0 {
			for i := range dirs {
				if !done[i] {
					budgets[i] = share
					done[i] = true
				}
			}
			break
		}
		budgets[small] = sizes[small]
		done[small] = true
		left -= sizes[small]
	}
	im.Layers = make([]bigLayer, len(dirs))
	errs := make([]error, len(dirs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.NumCPU())
	for i, d := range dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			im.Layers[i], errs[i] = buildLayer(d, filepath.Join(work, fmt.Sprintf("layer%d.tar.gz", i+1)), budgets[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := writeOCIArchive(im); err != nil {
		return nil, err
	}
	b, _ := json.MarshalIndent(struct {
		Key   string
		Image bigImage
	}{key, *im}, "", "  ")
	return im, os.WriteFile(stamp, b, 0o644)
}

func writeOCIArchive(im *bigImage) error {
	var diffIDs []digest.Digest
	var layers []ocispec.Descriptor
	var history []ocispec.History
	for _, l := range im.Layers {
		diffIDs = append(diffIDs, l.DiffID)
		layers = append(layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: l.Digest, Size: l.Size})
		history = append(history, ocispec.History{CreatedBy: "cs bench: " + l.Dir})
	}
	cfg := ocispec.Image{
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   ocispec.ImageConfig{Cmd: []string{"/bin/sh"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
		History:  history,
	}
	cfgB, _ := json.Marshal(cfg)
	cfgD := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgB), Size: int64(len(cfgB))}
	man := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfgD, Layers: layers}
	manB, _ := json.Marshal(man)
	manD := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manB), Size: int64(len(manB)),
		Annotations: map[string]string{"io.containerd.image.name": im.Name, ocispec.AnnotationRefName: "latest"}}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{manD}}
	idxB, _ := json.Marshal(idx)

	f, err := os.Create(im.Archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	add := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := add("index.json", idxB); err != nil {
		return err
	}
	for _, l := range im.Layers {
		src, err := os.Open(l.Path)
		if err != nil {
			return err
		}
		err = tw.WriteHeader(&tar.Header{Name: "blobs/sha256/" + l.Digest.Encoded(), Mode: 0o644, Size: l.Size, Typeflag: tar.TypeReg})
		if err == nil {
			_, err = io.Copy(tw, src)
		}
		src.Close()
		if err != nil {
			return err
		}
	}
	if err := add("blobs/sha256/"+cfgD.Digest.Encoded(), cfgB); err != nil {
		return err
	}
	if err := add("blobs/sha256/"+manD.Digest.Encoded(), manB); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}
