package main

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// registry serves the image of an OCI archive over the distribution API,
// read-only and plain HTTP on 127.0.0.1, so that containerd can pull it (a
// pull, unlike an import, unpacks layers in parallel). Blobs are read
// straight out of the archive.
type registry struct {
	archive  *os.File
	blobs    map[digest.Digest]blobAt
	manifest ocispec.Descriptor
	srv      *http.Server
	addr     string
	// pace, when set, bounds what all blob downloads together send per
	// second, as a link to a remote registry would.
	pace *pacer
}

// pacer spreads bytes over time at bps bytes per second, shared by every
// connection.
type pacer struct {
	mu   sync.Mutex
	next time.Time
	bps  float64
}

func (p *pacer) wait(n int) {
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(float64(n) / p.bps * float64(time.Second)))
	until := p.next
	p.mu.Unlock()
	time.Sleep(time.Until(until))
}

// pacedReader sends at most 64 KiB per Read, paced.
type pacedReader struct {
	*io.SectionReader
	p *pacer
}

func (r pacedReader) Read(b []byte) (int, error) {
	if len(b) > 64<<10 {
		b = b[:64<<10]
	}
	n, err := r.SectionReader.Read(b)
	r.p.wait(n)
	return n, err
}

// blobAt is where a blob lies in the archive.
type blobAt struct{ off, size int64 }

const (
	registryRepo = "bench/big"
	registryTag  = "latest"
)

// serveRegistry serves archive's image; mbps > 0 bounds the blobs'
// download rate, in MB/s for all connections together.
func serveRegistry(archive string, mbps float64) (*registry, error) {
	f, err := os.Open(archive)
	if err != nil {
		return nil, err
	}
	r := &registry{archive: f, blobs: map[digest.Digest]blobAt{}}
	if mbps > 0 {
		r.pace = &pacer{bps: mbps * 1e6}
	}
	if err := r.index(); err != nil {
		f.Close()
		return nil, fmt.Errorf("registry: %s: %w", archive, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Close()
		return nil, err
	}
	r.addr = l.Addr().String()
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve)}
	go r.srv.Serve(l)
	return r, nil
}

// index finds every blob's offset in the archive and the manifest
// index.json names.
func (r *registry) index() error {
	tr := tar.NewReader(r.archive)
	var idx ocispec.Index
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		switch name := strings.TrimPrefix(hdr.Name, "./"); {
		case name == "index.json":
			if err := json.NewDecoder(tr).Decode(&idx); err != nil {
				return fmt.Errorf("index.json: %w", err)
			}
		case strings.HasPrefix(name, "blobs/sha256/"):
			off, err := r.archive.Seek(0, io.SeekCurrent)
			if err != nil {
				return err
			}
			r.blobs[digest.NewDigestFromEncoded(digest.SHA256, strings.TrimPrefix(name, "blobs/sha256/"))] = blobAt{off, hdr.Size}
		}
	}
	if len(idx.Manifests) != 1 {
		return fmt.Errorf("index.json names %d manifests, want 1", len(idx.Manifests))
	}
	r.manifest = idx.Manifests[0]
	return nil
}

// ref is the image's reference in the registry.
func (r *registry) ref() string { return r.addr + "/" + registryRepo + ":" + registryTag }

func (r *registry) close() {
	r.srv.Close()
	r.archive.Close()
}

func (r *registry) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "read-only registry", http.StatusMethodNotAllowed)
		return
	}
	if req.URL.Path == "/v2/" || req.URL.Path == "/v2" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		return
	}
	rest, ok := strings.CutPrefix(req.URL.Path, "/v2/"+registryRepo+"/")
	if !ok {
		http.NotFound(w, req)
		return
	}
	mediaType := "application/octet-stream"
	var d digest.Digest
	if ref, ok := strings.CutPrefix(rest, "manifests/"); ok {
		if ref != registryTag && ref != r.manifest.Digest.String() {
			http.NotFound(w, req)
			return
		}
		d, mediaType = r.manifest.Digest, r.manifest.MediaType
	} else if ref, ok := strings.CutPrefix(rest, "blobs/"); ok {
		d = digest.Digest(ref)
	}
	at, ok := r.blobs[d]
	if !ok {
		http.NotFound(w, req)
		return
	}
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Docker-Content-Digest", d.String())
	var body io.ReadSeeker = io.NewSectionReader(r.archive, at.off, at.size)
	if r.pace != nil && d != r.manifest.Digest {
		body = pacedReader{io.NewSectionReader(r.archive, at.off, at.size), r.pace}
	}
	http.ServeContent(w, req, "", time.Time{}, body)
}
