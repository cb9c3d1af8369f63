package daemon_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	contentsuite "github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/containerd/v2/core/snapshots"
	snapshotsuite "github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
)

// served is a daemon serving root on a socket inside it, and a client of it.
type served struct {
	d      *daemon.Daemon
	client *daemon.Client
	addr   string
	stop   func() error
}

func serve(ctx context.Context, root string, edit ...func(*config.Config)) (*served, error) {
	cfg := config.Default()
	cfg.Root = root
	cfg.RunRoot = filepath.Join(root, "run")
	for _, e := range edit {
		e(&cfg)
	}
	addr := cfg.Address()
	d, err := daemon.Open(ctx, cfg, daemon.Holder{What: "test", Address: addr})
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	l, err := daemon.Listen(addr, cfg.GRPC)
	if err != nil {
		d.Close()
		cancel()
		return nil, err
	}
	srv := d.NewServer()
	go func() { done <- srv.Serve(l) }()
	client, err := daemon.Dial(addr)
	if err != nil {
		srv.Stop()
		d.Close()
		cancel()
		return nil, err
	}
	s := &served{d: d, client: client, addr: addr}
	s.stop = func() error {
		cancel()
		client.Close()
		srv.GracefulStop()
		<-done
		_ = sctx
		return d.Close()
	}
	return s, nil
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts overlayfs and must run as root")
	}
}

// TestSnapshotterSuiteOverSocket runs containerd's snapshotter suite through
// containerd's proxy client and the daemon's socket.
func TestSnapshotterSuiteOverSocket(t *testing.T) {
	requireRoot(t)
	snapshotsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		s, err := serve(ctx, root)
		if err != nil {
			return nil, nil, err
		}
		return s.client.Snapshotter, func() error { return errors.Join(s.client.Snapshotter.Close(), s.stop()) }, nil
	})
}

// TestContentSuiteOverSocket runs containerd's content suite through
// containerd's proxy client and the daemon's socket.
func TestContentSuiteOverSocket(t *testing.T) {
	contentsuite.ContentSuite(t, "cs", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		s, err := serve(ctx, root)
		if err != nil {
			return ctx, nil, nil, err
		}
		return ctx, s.client.Content, s.stop, nil
	})
}
