package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// Opened through containerd, the store uses containerd's snapshot service
// for the cs snapshotter and containerd's content store: the same two
// interfaces, so the same store code runs, and containerd records what the
// store makes in its own metadata. There, what keeps an object alive is
// containerd's garbage collector's labels, not the daemon's refusal to
// remove it: the wrappers below translate the store's ownership label into
// a gc.root label (and a marker saying the store made it) on the way in,
// and back on the way out.

// gcRoot is the label containerd's garbage collector keeps things by.
const gcRoot = "containerd.io/gc.root"

// DefaultContainerdSnapshotter is the name containerd's config gives the
// cs-snapshotter proxy plugin in the README.
const DefaultContainerdSnapshotter = "cs"

// openContainerd points the store at containerd.
func (s *store) openContainerd() error {
	o := s.opts
	ns := o.ContainerdNamespace
	if ns == "" {
		ns = namespaces.Default
	}
	if err := identifiers.Validate(ns); err != nil {
		return fmt.Errorf("containerd namespace %q: %w", ns, err)
	}
	name := o.ContainerdSnapshotter
	if name == "" {
		name = DefaultContainerdSnapshotter
	}
	c, err := client.New(o.ContainerdAddress, client.WithDefaultNamespace(ns), client.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", o.ContainerdAddress, err)
	}
	s.ctx = namespaces.WithNamespace(context.Background(), ns)
	s.containerd = c
	s.sn = &gcRootedSnapshots{Snapshotter: c.SnapshotService(name)}
	s.cs = &gcRootedContent{Store: nativeReads{c.ContentStore()}}
	// Reach the snapshotter once, so a wrong name or a containerd without
	// the cs proxy plugin is one clear error now, not a puzzle later.
	if err := s.sn.Walk(s.ctx, func(context.Context, snapshots.Info) error { return nil }, `name=="cs.none"`); err != nil {
		c.Close()
		return fmt.Errorf("snapshotter %q of containerd at %s: %w", name, o.ContainerdAddress, err)
	}
	return nil
}

// rootLabels marks a new object the store holds, in containerd's terms.
func rootLabels(into map[string]string) {
	into[cslabels.Made] = "store"
	into[gcRoot] = time.Now().UTC().Format(time.RFC3339)
}

// gcRootedSnapshots turns the store's ownership label into gc.root labels.
type gcRootedSnapshots struct {
	snapshots.Snapshotter
}

func toContainerd(labels map[string]string) map[string]string {
	if labels[cslabels.Owned] == "" {
		return labels
	}
	out := make(map[string]string, len(labels)+1)
	for k, v := range labels {
		out[k] = v
	}
	delete(out, cslabels.Owned)
	rootLabels(out)
	return out
}

func fromContainerd(info snapshots.Info) snapshots.Info {
	if info.Labels[cslabels.Made] != "" && info.Labels[gcRoot] != "" {
		l := make(map[string]string, len(info.Labels)+1)
		for k, v := range info.Labels {
			l[k] = v
		}
		l[cslabels.Owned] = "store"
		info.Labels = l
	}
	return info
}

func withContainerdLabels(opts []snapshots.Opt) []snapshots.Opt {
	var info snapshots.Info
	for _, o := range opts {
		o(&info)
	}
	return []snapshots.Opt{snapshots.WithLabels(toContainerd(info.Labels))}
}

// claimRefused gives back the code of the daemon's refusal of a name
// claim, which containerd's metadata store passes on as Unknown
// ("unexpected error from snapshotter"); its text still says what it was.
func claimRefused(err error) error {
	if err != nil && !errdefs.IsAlreadyExists(err) && strings.Contains(err.Error(), "is already used by snapshot") {
		return fmt.Errorf("%w: %w", errdefs.ErrAlreadyExists, err)
	}
	return err
}

func (g *gcRootedSnapshots) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	m, err := g.Snapshotter.Prepare(ctx, key, parent, withContainerdLabels(opts)...)
	return m, claimRefused(err)
}

func (g *gcRootedSnapshots) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	m, err := g.Snapshotter.View(ctx, key, parent, withContainerdLabels(opts)...)
	return m, claimRefused(err)
}

func (g *gcRootedSnapshots) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return claimRefused(g.Snapshotter.Commit(ctx, name, key, withContainerdLabels(opts)...))
}

func (g *gcRootedSnapshots) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	info, err := g.Snapshotter.Stat(ctx, key)
	return fromContainerd(info), err
}

func (g *gcRootedSnapshots) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return g.Snapshotter.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		return fn(ctx, fromContainerd(info))
	}, filters...)
}

func (g *gcRootedSnapshots) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	info.Labels = toContainerd(info.Labels)
	info, err := g.Snapshotter.Update(ctx, info, fieldpaths...)
	return fromContainerd(info), claimRefused(err)
}

// gcRootedContent gives every blob the store writes, and every blob it
// takes a reference on, a gc.root label.
type gcRootedContent struct {
	content.Store
}

func (g *gcRootedContent) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	w, err := g.Store.Writer(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return &gcRootedWriter{Writer: w}, nil
}

func (g *gcRootedContent) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	for k, v := range info.Labels {
		if v != "" && strings.HasPrefix(k, cslabels.BlobRefPrefix) {
			l := make(map[string]string, len(info.Labels)+1)
			for k, v := range info.Labels {
				l[k] = v
			}
			l[gcRoot] = time.Now().UTC().Format(time.RFC3339)
			info.Labels = l
			fieldpaths = append(fieldpaths, "labels."+gcRoot)
			break
		}
	}
	return g.Store.Update(ctx, info, fieldpaths...)
}

type gcRootedWriter struct {
	content.Writer
}

func (w *gcRootedWriter) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	var info content.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return err
		}
	}
	labels := map[string]string{gcRoot: time.Now().UTC().Format(time.RFC3339)}
	for k, v := range info.Labels {
		labels[k] = v
	}
	// containerd's metadata store keeps the labels itself and answers
	// AlreadyExists for a blob it has: the daemon never sees the request
	// to add references, which would only stay behind as a label.
	// contentstore.CommitReferenced adds them by an Update then.
	delete(labels, cslabels.CommitAddRefs)
	return w.Writer.Commit(ctx, size, expected, content.WithLabels(labels))
}

// lockImages serializes image ID and name claims among the processes using
// a store opened through containerd, where no daemon transaction enforces
// them (containerd passes no content labels to the daemon). Through the
// daemon, it does nothing.
func (s *store) lockImages() (func(), error) {
	if s.containerd == nil {
		return func() {}, nil
	}
	f, err := os.OpenFile(filepath.Join(s.opts.RunRoot, "images.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock images: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock images: %w", err)
	}
	return func() { f.Close() }, nil
}
