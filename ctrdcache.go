package storage

// What a blob is to the listing of containerd's images (ctrdimages.go: a
// manifest, an index, a config, or none of these) depends on its bytes
// only, so it is kept by digest across processes, in a file of the run
// root for each root listed. A listing through a daemon's socket then
// reads only the blobs no earlier listing has seen, instead of every
// manifest and config and the start of every layer (a round trip each).
// The file is a cache: unreadable, it is ignored; lost, it is remade.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const ctrdCacheVersion = 1

type ctrdCacheFile struct {
	Version int                                `json:"version"`
	Blobs   map[digest.Digest]ctrdCachedBlob   `json:"blobs"`
	Configs map[digest.Digest]ctrdCachedConfig `json:"configs"`
}

type ctrdCachedBlob struct {
	Manifest bool                 `json:"m,omitempty"`
	Index    bool                 `json:"i,omitempty"`
	Raw      []byte               `json:"r,omitempty"`
	Config   *ocispec.Descriptor  `json:"c,omitempty"`
	Children []ocispec.Descriptor `json:"ch,omitempty"`
}

type ctrdCachedConfig struct {
	Created time.Time       `json:"t"`
	Chain   []digest.Digest `json:"chain"`
	Size    int64           `json:"s"`
}

// ctrdCacheLoaded records the cache files this process has read.
var ctrdCacheLoaded sync.Map // path -> struct{}

// ctrdCachePath is the cache file of s's root in its run root.
func (s *store) ctrdCachePath() string {
	sum := sha256.Sum256([]byte(s.opts.GraphRoot))
	return filepath.Join(s.opts.RunRoot, "ctrd-blobs-"+hex.EncodeToString(sum[:8])+".json")
}

// loadCtrdCache fills the process's caches from s's file, once.
func (s *store) loadCtrdCache() {
	path := s.ctrdCachePath()
	if _, done := ctrdCacheLoaded.LoadOrStore(path, struct{}{}); done {
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var f ctrdCacheFile
	if json.Unmarshal(data, &f) != nil || f.Version != ctrdCacheVersion {
		return
	}
	for d, b := range f.Blobs {
		blob := notAnImageBlob
		if b.Manifest || b.Index {
			blob = &ctrdBlob{manifest: b.Manifest, index: b.Index, raw: b.Raw, children: b.Children}
			if b.Config != nil {
				blob.config = *b.Config
			}
		}
		ctrdBlobCache.LoadOrStore(d, blob)
	}
	for d, c := range f.Configs {
		ctrdConfigCache.LoadOrStore(d, &ctrdConfig{created: c.Created, chain: c.Chain, size: c.Size})
	}
}

// saveCtrdCache writes what is known of the blobs infos (one listing of
// s's content store, so blobs since deleted drop out) to s's file, unless
// it holds that already.
func (s *store) saveCtrdCache(infos []content.Info) {
	f := ctrdCacheFile{Version: ctrdCacheVersion, Blobs: map[digest.Digest]ctrdCachedBlob{}, Configs: map[digest.Digest]ctrdCachedConfig{}}
	for _, info := range infos {
		if v, ok := ctrdBlobCache.Load(info.Digest); ok {
			b := v.(*ctrdBlob)
			cb := ctrdCachedBlob{Manifest: b.manifest, Index: b.index, Raw: b.raw, Children: b.children}
			if b.manifest {
				cfg := b.config
				cb.Config = &cfg
			}
			f.Blobs[info.Digest] = cb
		}
		if v, ok := ctrdConfigCache.Load(info.Digest); ok {
			c := v.(*ctrdConfig)
			f.Configs[info.Digest] = ctrdCachedConfig{Created: c.created, Chain: c.chain, Size: c.size}
		}
	}
	data, err := json.Marshal(f)
	if err != nil {
		return
	}
	path := s.ctrdCachePath()
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return
	}
	tmp, err := os.CreateTemp(s.opts.RunRoot, ".ctrd-blobs-*")
	if err != nil {
		return
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
}
