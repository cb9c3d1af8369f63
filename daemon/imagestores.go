package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// ImageStore is an additional read-only image store (issue 8): another
// cs-snapshotter root, read and never written. When a daemon serves that
// root on this host it is read through the daemon's socket, so this
// process and that daemon never meet on the database file; otherwise its
// files are read directly (OpenReadOnly). Either way its lock is not
// taken, and every call is the store's (it sees the snapshots the store
// holds in that root).
type ImageStore struct {
	// Path is the root, absolute.
	Path string
	// Via says how it is read: "daemon ADDRESS" or "direct".
	Via         string
	Snapshotter snapshots.Snapshotter
	Content     content.Store
	close       func() error
}

// OpenImageStore opens root as an additional read-only image store.
// While an in-process store of another process holds the root's database
// (a short-lived command, usually) it waits up to wait, as a store waits
// for a root.
func OpenImageStore(ctx context.Context, root string, mountOptions []string, wait time.Duration) (*ImageStore, error) {
	path, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	is := &ImageStore{Path: path}
	if h, ok := ReadHolder(path); ok && h.Address != "" {
		c, err := DialStore(h.Address)
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = c.Snapshotter.Stat(pctx, "cs.probe")
			cancel()
			if err == nil || errdefs.IsNotFound(err) {
				is.Via, is.Snapshotter, is.Content, is.close = "daemon "+h.Address, c.Snapshotter, c.Content, c.Close
				return is, nil
			}
			c.Close()
		}
		// Nobody answers: a stale record; read the files.
	}
	cfg := config.Default()
	cfg.Root = path
	cfg.Snapshotter.MountOptions = mountOptions
	deadline := time.Now().Add(wait)
	for {
		ro, err := OpenReadOnly(ctx, cfg)
		if err == nil {
			is.Via, is.Snapshotter, is.Content, is.close = "direct", ro.Snapshotter(), ro.Content(), ro.Close
			return is, nil
		}
		if !errors.Is(err, metadata.ErrLocked) || time.Now().After(deadline) {
			if h, ok := ReadHolder(path); ok && errors.Is(err, metadata.ErrLocked) {
				return nil, fmt.Errorf("in use by %s, which does not serve it on a socket: %w", h, err)
			}
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Close lets go of the connection or the files.
func (is *ImageStore) Close() error {
	if is.close == nil {
		return nil
	}
	err := is.close()
	is.close = nil
	return err
}
