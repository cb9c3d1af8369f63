package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/overlayutils"
)

// ImageStore is an additional read-only image store (issue 8): another
// cs-snapshotter root, read and never written. When a daemon serves that
// root on this host it is read through the daemon's socket, so this
// process and that daemon never meet on the database file; otherwise its
// files are read directly (OpenReadOnly). Either way its lock is not
// taken, and every call is the store's (it sees the snapshots the store
// holds in that root).
//
// The way it is read follows that daemon: a read that finds the daemon
// gone, or the files held by a daemon that started since, opens the store
// again and is tried once more.
type ImageStore struct {
	// Path is the root, absolute.
	Path string
	// Snapshotter and Content read the store; their writes are for the
	// caller to refuse (the store's roSnapshotter does).
	Snapshotter snapshots.Snapshotter
	Content     content.Store

	mountOptions []string
	mu           sync.Mutex
	cur          *storeConn
}

// storeConn is one way of reading the store.
type storeConn struct {
	via   string
	sn    snapshots.Snapshotter
	cs    content.Store
	close func() error
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
	is := &ImageStore{Path: path, mountOptions: mountOptions}
	deadline := time.Now().Add(wait)
	for {
		is.cur, err = is.open(ctx)
		if err == nil {
			// Its layers become lower layers of this host's overlay
			// mounts: better refused now than at a container's start.
			if err := overlayutils.CheckLower(filepath.Join(path, "snapshots")); err != nil {
				is.Close()
				return nil, err
			}
			is.Snapshotter, is.Content = storeSnapshotter{is}, storeContent{is}
			return is, nil
		}
		if !errors.Is(err, metadata.ErrLocked) || time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (is *ImageStore) open(ctx context.Context) (*storeConn, error) {
	if h, ok := ReadHolder(is.Path); ok && h.Address != "" {
		c, err := DialStore(h.Address)
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = c.Snapshotter.Stat(pctx, "cs.probe")
			cancel()
			if err == nil || errdefs.IsNotFound(err) {
				return &storeConn{via: "daemon " + h.Address, sn: c.Snapshotter, cs: c.Content, close: c.Close}, nil
			}
			c.Close()
		}
		// Nobody answers: a stale record; read the files.
	}
	cfg := config.Default()
	cfg.Root = is.Path
	cfg.Snapshotter.MountOptions = is.mountOptions
	ro, err := OpenReadOnly(ctx, cfg)
	if err != nil {
		if h, ok := ReadHolder(is.Path); ok && errors.Is(err, metadata.ErrLocked) {
			return nil, fmt.Errorf("in use by %s, which does not serve it on a socket: %w", h, err)
		}
		return nil, err
	}
	return &storeConn{via: "direct", sn: ro.Snapshotter(), cs: ro.Content(), close: ro.Close}, nil
}

// Via says how the store is read: "daemon ADDRESS" or "direct".
func (is *ImageStore) Via() string {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.cur == nil {
		return "closed"
	}
	return is.cur.via
}

func (is *ImageStore) conn() (*storeConn, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.cur == nil {
		return nil, fmt.Errorf("read-only image store %s is closed: %w", is.Path, errdefs.ErrUnavailable)
	}
	return is.cur, nil
}

// reopen replaces failed, unless another call did already.
func (is *ImageStore) reopen(ctx context.Context, failed *storeConn) error {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.cur != failed {
		return nil
	}
	c, err := is.open(ctx)
	if err != nil {
		return err
	}
	failed.close()
	is.cur = c
	log.G(ctx).WithFields(log.Fields{"store": is.Path, "was": failed.via, "via": c.via}).Info("reading a read-only image store another way")
	return nil
}

// gone reports whether err says the way the store was read no longer
// works: its daemon went away, or a daemon now holds its files.
func gone(err error) bool {
	return errors.Is(err, metadata.ErrLocked) || errdefs.IsUnavailable(err) || status.Code(err) == codes.Unavailable
}

// read calls call on the current way of reading the store, and once more
// on a new one if that way is gone.
func read[T any](ctx context.Context, is *ImageStore, call func(*storeConn) (T, error)) (T, error) {
	c, err := is.conn()
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := call(c)
	if err == nil || !gone(err) {
		return v, err
	}
	if rerr := is.reopen(ctx, c); rerr != nil {
		log.G(ctx).WithError(rerr).WithField("store", is.Path).Warn("reopening a read-only image store failed")
		return v, err
	}
	if c, err = is.conn(); err != nil {
		return v, err
	}
	return call(c)
}

// Close lets go of the connection or the files.
func (is *ImageStore) Close() error {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.cur == nil {
		return nil
	}
	err := is.cur.close()
	is.cur = nil
	return err
}

// storeSnapshotter reads the store's snapshots through its current way.
type storeSnapshotter struct{ is *ImageStore }

func (s storeSnapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	return read(ctx, s.is, func(c *storeConn) (snapshots.Info, error) { return c.sn.Stat(ctx, key) })
}

func (s storeSnapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	return read(ctx, s.is, func(c *storeConn) (snapshots.Info, error) { return c.sn.Update(ctx, info, fieldpaths...) })
}

func (s storeSnapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	return read(ctx, s.is, func(c *storeConn) (snapshots.Usage, error) { return c.sn.Usage(ctx, key) })
}

func (s storeSnapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	return read(ctx, s.is, func(c *storeConn) ([]mount.Mount, error) { return c.sn.Mounts(ctx, key) })
}

func (s storeSnapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return read(ctx, s.is, func(c *storeConn) ([]mount.Mount, error) { return c.sn.Prepare(ctx, key, parent, opts...) })
}

func (s storeSnapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return read(ctx, s.is, func(c *storeConn) ([]mount.Mount, error) { return c.sn.View(ctx, key, parent, opts...) })
}

func (s storeSnapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	_, err := read(ctx, s.is, func(c *storeConn) (struct{}, error) { return struct{}{}, c.sn.Commit(ctx, name, key, opts...) })
	return err
}

func (s storeSnapshotter) Remove(ctx context.Context, key string) error {
	_, err := read(ctx, s.is, func(c *storeConn) (struct{}, error) { return struct{}{}, c.sn.Remove(ctx, key) })
	return err
}

// Walk is tried again only when the first try reached nothing, so fn
// never sees a snapshot twice.
func (s storeSnapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	_, err := read(ctx, s.is, func(c *storeConn) (struct{}, error) {
		called := false
		err := c.sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
			called = true
			return fn(ctx, info)
		}, filters...)
		if called && gone(err) {
			err = fmt.Errorf("walk of read-only image store %s cut off: %w", s.is.Path, errdefs.ErrAborted)
		}
		return struct{}{}, err
	})
	return err
}

// Close leaves the store to ImageStore.Close.
func (s storeSnapshotter) Close() error { return nil }

// storeContent reads the store's blobs through its current way.
type storeContent struct{ is *ImageStore }

func (s storeContent) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	return read(ctx, s.is, func(c *storeConn) (content.Info, error) { return c.cs.Info(ctx, d) })
}

func (s storeContent) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	return read(ctx, s.is, func(c *storeConn) (content.Info, error) { return c.cs.Update(ctx, info, fieldpaths...) })
}

func (s storeContent) Walk(ctx context.Context, fn content.WalkFunc, filters ...string) error {
	_, err := read(ctx, s.is, func(c *storeConn) (struct{}, error) {
		called := false
		err := c.cs.Walk(ctx, func(info content.Info) error {
			called = true
			return fn(info)
		}, filters...)
		if called && gone(err) {
			err = fmt.Errorf("walk of read-only image store %s cut off: %w", s.is.Path, errdefs.ErrAborted)
		}
		return struct{}{}, err
	})
	return err
}

func (s storeContent) Delete(ctx context.Context, d digest.Digest) error {
	_, err := read(ctx, s.is, func(c *storeConn) (struct{}, error) { return struct{}{}, c.cs.Delete(ctx, d) })
	return err
}

func (s storeContent) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	return read(ctx, s.is, func(c *storeConn) (content.ReaderAt, error) { return c.cs.ReaderAt(ctx, desc) })
}

func (s storeContent) Status(ctx context.Context, ref string) (content.Status, error) {
	return read(ctx, s.is, func(c *storeConn) (content.Status, error) { return c.cs.Status(ctx, ref) })
}

func (s storeContent) ListStatuses(ctx context.Context, filters ...string) ([]content.Status, error) {
	return read(ctx, s.is, func(c *storeConn) ([]content.Status, error) { return c.cs.ListStatuses(ctx, filters...) })
}

func (s storeContent) Abort(ctx context.Context, ref string) error {
	_, err := read(ctx, s.is, func(c *storeConn) (struct{}, error) { return struct{}{}, c.cs.Abort(ctx, ref) })
	return err
}

func (s storeContent) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	return read(ctx, s.is, func(c *storeConn) (content.Writer, error) { return c.cs.Writer(ctx, opts...) })
}
