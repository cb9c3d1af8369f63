// Package daemon puts the daemon together: it takes the root, opens the
// database, the snapshotter and the content store, and serves them to
// containerd over one unix socket.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/differ"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// StopTimeout bounds how long Serve waits for in-flight calls after its
// context ends before cutting them off.
const StopTimeout = 8 * time.Second

// Daemon holds an open root.
type Daemon struct {
	root string
	lock *rootLock
	db   *metadata.DB
	sn   *snapshotter.Snapshotter
	cs   *contentstore.Store
	diff *differ.Service
	// stores are the additional read-only image stores.
	stores []*ImageStore
	// img is the separate image store, opened as a root of its own.
	img *Daemon
}

// cleanPaths cleans cfg's roots, as the lock records them for stores that
// compare them with their own cleaned paths.
func cleanPaths(cfg *config.Config) {
	cfg.Root = filepath.Clean(cfg.Root)
	if cfg.ImageStore != "" {
		cfg.ImageStore = filepath.Clean(cfg.ImageStore)
	}
	stores := make([]string, len(cfg.AdditionalImageStores))
	for i, p := range cfg.AdditionalImageStores {
		stores[i] = filepath.Clean(p)
	}
	cfg.AdditionalImageStores = stores
}

// Open takes the root of cfg for this process and opens everything in it.
// holder says who takes it, for whoever comes next: when another process
// holds the root, Open fails with an *InUseError naming it.
func Open(ctx context.Context, cfg config.Config, holder Holder) (_ *Daemon, err error) {
	cleanPaths(&cfg)
	root := cfg.Root
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create root: %w", err)
	}
	d := &Daemon{root: root}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	holder.ImageStores = cfg.AdditionalImageStores
	if d.lock, err = lockRoot(root, holder); err != nil {
		return nil, err
	}
	// The read-only image stores before the root's own files: a bad one
	// fails the start with the root untouched.
	for _, p := range cfg.AdditionalImageStores {
		is, err := OpenImageStore(ctx, p, cfg.Snapshotter.MountOptions, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("additional image store %s (additional_image_stores): %w", p, err)
		}
		d.stores = append(d.stores, is)
		log.G(ctx).WithFields(log.Fields{"store": is.Path, "via": is.Via()}).Info("serving the layers of a read-only image store")
	}
	if d.db, err = metadata.Open(ctx, filepath.Join(root, metadata.FileName)); err != nil {
		return nil, err
	}
	if d.cs, err = contentstore.New(filepath.Join(root, "content"), d.db); err != nil {
		return nil, err
	}
	if d.sn, err = snapshotter.New(ctx, root, d.db, snapshotter.Options{
		MountOptions: cfg.Snapshotter.MountOptions,
		AsyncRemove:  cfg.Snapshotter.AsyncRemove,
		Removed:      func(ctx context.Context, id string, l map[string]string) { d.diff.Released(ctx, id, l) },
	}); err != nil {
		return nil, err
	}
	d.diff = differ.New(d.sn, d.containerdContent(), d.db, cfg.Snapshotter.MaxLayerSize)
	// Nobody else has the root, so a layer still marked incomplete is the
	// remains of a crash.
	if err := removeIncomplete(ctx, d.sn); err != nil {
		log.G(ctx).WithError(err).Warn("removing incomplete layers failed")
	}
	if err := d.diff.ReleaseOrphans(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("releasing tar-splits of removed snapshots failed")
	}
	if err := d.cs.AbortOwn(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("aborting ingests left by a crash failed")
	}
	// Finish removals a crash or an asynchronous Remove left behind.
	if err := d.sn.Cleanup(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("cleanup at start failed")
	}
	if cfg.ImageStore != "" {
		icfg := cfg
		icfg.Root, icfg.ImageStore, icfg.AdditionalImageStores = cfg.ImageStore, "", nil
		icfg.Snapshotter.UnpackAhead = false // set up below, with its differ
		// No address: a store opening it must not take this daemon's
		// union of both roots for the image store alone.
		if d.img, err = Open(ctx, icfg, Holder{What: holder.What, ImageStoreOf: root}); err != nil {
			return nil, fmt.Errorf("image store %s (image_store): %w", cfg.ImageStore, err)
		}
		// Either root's unpacking reads the blobs of both, and writes
		// the tar-splits of its layers to its own root: that root's
		// start releases those of snapshots it does not have.
		d.diff = differ.New(d.sn, splitContent{Store: d.rootContent(), other: d.img.cs}, d.db, cfg.Snapshotter.MaxLayerSize)
		d.img.diff = differ.New(d.img.sn, d.containerdContent(), d.img.db, cfg.Snapshotter.MaxLayerSize)
		logSplit(ctx, root, cfg.ImageStore)
	}
	if cfg.Snapshotter.UnpackAhead {
		// Where containerd's blobs are written and its layers unpacked.
		to := d
		if d.img != nil {
			to = d.img
		}
		hook, err := to.diff.UnpackAhead(ctx, filepath.Join(to.root, "unpack-ahead"))
		if err != nil {
			return nil, err
		}
		to.cs.SetIngestHook(hook)
	}
	return d, nil
}

// containerdContent is the content store containerd reads through the
// daemon, the diff service's unpacking included: the root's (rootContent),
// under the image store's, which blobs are written to, when there is one.
func (d *Daemon) containerdContent() content.Store {
	if d.img != nil {
		return splitContent{Store: d.img.cs, other: d.rootContent()}
	}
	return d.rootContent()
}

// rootContent is the root's content store, and the read-only image stores'
// blobs it lacks.
func (d *Daemon) rootContent() content.Store {
	if len(d.stores) > 0 {
		return imageStoreContent{Store: d.cs, stores: d.stores}
	}
	return d.cs
}

// Snapshotter returns the daemon's snapshotter.
func (d *Daemon) Snapshotter() *snapshotter.Snapshotter { return d.sn }

// Content returns the daemon's content store.
func (d *Daemon) Content() *contentstore.Store { return d.cs }

// Close closes the database and releases the root.
func (d *Daemon) Close() error {
	var errs []error
	if d.img != nil {
		errs = append(errs, d.img.Close())
		d.img = nil
	}
	for _, is := range d.stores {
		errs = append(errs, is.Close())
	}
	if d.cs != nil {
		d.cs.SetIngestHook(nil)
	}
	if d.diff != nil {
		d.diff.Close(context.Background())
	}
	if d.sn != nil {
		errs = append(errs, d.sn.Close())
	}
	if d.cs != nil {
		errs = append(errs, d.cs.Close())
	}
	if d.db != nil {
		errs = append(errs, d.db.Close())
		d.db = nil
	}
	errs = append(errs, d.lock.release())
	d.lock = nil
	return errors.Join(errs...)
}

// NewServer returns a gRPC server with the snapshots, content and diff
// services.
func (d *Daemon) NewServer() *grpc.Server {
	// The message limits are containerd's own, so every request containerd
	// sends through a proxy plugin fits.
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
		grpc.MaxSendMsgSize(defaults.DefaultMaxSendMsgSize),
		grpc.ChainUnaryInterceptor(recoverUnary, metricsUnary, logUnary, storeCallerUnary),
		grpc.ChainStreamInterceptor(recoverStream, metricsStream, logStream, storeCallerStream),
	)
	var sn snapshots.Snapshotter = d.sn
	var diff diffapi.DiffServer = d.diff
	if d.img != nil {
		sn = splitRoot{root: d.sn, img: d.img.sn}
		diff = splitDiffer{root: d.diff, img: d.img.diff, imgSn: d.img.sn}
	}
	if len(d.stores) > 0 {
		sn = imageStoreLayers{Snapshotter: sn, root: d.sn, stores: d.stores}
	}
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotsService{snapshotservice.FromSnapshotter(sn), sn})
	contentapi.RegisterContentServer(srv, contentstore.NewService(d.containerdContent()))
	diffapi.RegisterDiffServer(srv, diff)
	return srv
}

// Serve serves on the socket of cfg until ctx ends, then stops gracefully:
// in-flight calls get StopTimeout to finish.
func (d *Daemon) Serve(ctx context.Context, g config.GRPC, address string, opts ...ServeOption) error {
	var o serveOptions
	for _, opt := range opts {
		opt(&o)
	}
	l := o.listener
	if l == nil {
		var err error
		if l, err = Listen(address, g); err != nil {
			return err
		}
		defer os.Remove(address)
	} else {
		address = l.Addr().String()
	}
	srv := d.NewServer()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	log.G(ctx).WithField("address", address).Info("serving")
	// The socket is listening, so calls made from now on are answered.
	if o.ready != nil {
		o.ready()
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	if o.stopping != nil {
		o.stopping()
	}
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(StopTimeout):
		log.G(ctx).Warn("calls still running after stop timeout; cutting them off")
		srv.Stop()
		<-stopped
	}
	return nil
}

// Listen creates the unix socket at address with the configured owner and
// mode. A socket file nobody answers on is stale and replaced; one that
// answers belongs to a live daemon and is left alone.
func Listen(address string, g config.GRPC) (net.Listener, error) {
	mode, err := g.FileMode()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(address), 0o711); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(address); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket path %s exists and is not a socket", address)
		}
		if c, err := net.DialTimeout("unix", address, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is in use by another process", address)
		}
		if err := os.Remove(address); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", address, err)
		}
	}
	// Create the socket with no access and open it up afterwards, so it is
	// never reachable with wider permissions than configured.
	old := syscall.Umask(0o777)
	l, err := net.Listen("unix", address)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", address, err)
	}
	if g.UID != -1 || g.GID != -1 {
		if err := os.Chown(address, g.UID, g.GID); err != nil {
			l.Close()
			return nil, fmt.Errorf("chown socket %s: %w", address, err)
		}
	}
	if err := os.Chmod(address, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", address, err)
	}
	return l, nil
}

// snapshotsService mends two things in containerd's contrib snapshot
// service: List returns Walk's error without a gRPC code (a malformed filter
// must reach the client as InvalidArgument, not Unknown), and Commit drops
// the request's parent, which containerd's parallel unpack (the "rebase"
// capability) sends to stack a layer prepared without one.
type snapshotsService struct {
	snapshotsapi.SnapshotsServer
	sn snapshots.Snapshotter
}

func (s snapshotsService) Commit(ctx context.Context, req *snapshotsapi.CommitSnapshotRequest) (*emptypb.Empty, error) {
	var opts []snapshots.Opt
	if req.Labels != nil {
		opts = append(opts, snapshots.WithLabels(req.Labels))
	}
	if req.Parent != "" {
		opts = append(opts, snapshots.WithParent(req.Parent))
	}
	if err := s.sn.Commit(ctx, req.Name, req.Key, opts...); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// Update refuses a request without Info, which containerd's service
// dereferences.
func (s snapshotsService) Update(ctx context.Context, req *snapshotsapi.UpdateSnapshotRequest) (*snapshotsapi.UpdateSnapshotResponse, error) {
	if req.GetInfo() == nil {
		return nil, status.Error(codes.InvalidArgument, "update snapshot: no info given")
	}
	return s.SnapshotsServer.Update(ctx, req)
}

func (s snapshotsService) List(req *snapshotsapi.ListSnapshotsRequest, stream snapshotsapi.Snapshots_ListServer) error {
	return errgrpc.ToGRPC(s.SnapshotsServer.List(req, stream))
}

// removeIncomplete removes every snapshot marked incomplete, as the store
// that made it would have. One that cannot go (it has children) is
// reported.
func removeIncomplete(ctx context.Context, sn snapshots.Snapshotter) error {
	ctx = snapshotter.WithStoreCaller(ctx)
	var found []string
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		found = append(found, info.Name)
		return nil
	}, fmt.Sprintf("labels.%q", cslabels.Incomplete)); err != nil {
		return err
	}
	var errs []error
	for _, key := range found {
		if err := sn.Remove(ctx, key); err != nil {
			errs = append(errs, fmt.Errorf("incomplete layer %s: %w", key, err))
			continue
		}
		log.G(ctx).WithField("key", key).Info("removed incomplete layer")
	}
	return errors.Join(errs...)
}
