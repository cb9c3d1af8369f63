package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/content"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/snapshots"
	snapshotproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
)

// DaemonClient talks to cs-snapshotter's socket directly, with containerd's
// own proxy clients, as containerd does (snapshotter name "cs", namespace
// "default" in the request context).
type DaemonClient struct {
	conn        *grpc.ClientConn
	Snapshotter snapshots.Snapshotter
	Content     content.Store
}

// openStore opens the store on the daemon's root, through the daemon;
// it is freed when the test ends.
func (e *Env) openStore(t *testing.T) storage.Store {
	t.Helper()
	s, err := storage.GetStore(storage.StoreOptions{GraphRoot: e.CSRoot, RunRoot: filepath.Join(e.Dir, "store-run")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Free() })
	return s
}

// DialDaemon connects to the Env's cs-snapshotter socket. In
// CS_E2E_BASELINE mode it connects to containerd's socket instead, which
// serves the same two services (for its overlayfs snapshotter and its
// content store), so tests can check the same things on both.
func (e *Env) DialDaemon() *DaemonClient {
	e.t.Helper()
	sock, name := e.CSSocket, "cs"
	if baseline {
		sock, name = e.CtrdSocket, "overlayfs"
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatalf("dial %s: %v", sock, err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return &DaemonClient{
		conn:        conn,
		Snapshotter: snapshotproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name),
		Content:     contentproxy.NewContentStore(conn),
	}
}

func daemonCtx() (context.Context, context.CancelFunc) {
	// Marked as the store's: the tests inspect everything the daemon holds.
	ctx, cancel := context.WithTimeout(daemon.AsStore(context.Background()), 30*time.Second)
	return namespaces.WithNamespace(ctx, "default"), cancel
}

// Snapshots returns every snapshot the daemon holds, by name.
func (c *DaemonClient) Snapshots(t testing.TB) map[string]snapshots.Info {
	t.Helper()
	ctx, cancel := daemonCtx()
	defer cancel()
	out := map[string]snapshots.Info{}
	if err := c.Snapshotter.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		out[info.Name] = info
		return nil
	}); err != nil {
		t.Fatalf("walking the daemon's snapshots: %v", err)
	}
	return out
}

// BlobExists reports whether the daemon's content store has a blob.
func (c *DaemonClient) BlobExists(t testing.TB, d digest.Digest) bool {
	t.Helper()
	ctx, cancel := daemonCtx()
	defer cancel()
	_, err := c.Content.Info(ctx, d)
	if err == nil {
		return true
	}
	if errdefs.IsNotFound(err) {
		return false
	}
	t.Fatalf("content Info(%s) from the daemon: %v", d, err)
	return false
}

// ReadBlob reads a whole blob from the daemon.
func (c *DaemonClient) ReadBlob(d digest.Digest) ([]byte, error) {
	ctx, cancel := daemonCtx()
	defer cancel()
	info, err := c.Content.Info(ctx, d)
	if err != nil {
		return nil, err
	}
	return content.ReadBlob(ctx, c.Content, ocispec.Descriptor{Digest: d, Size: info.Size})
}

// chainSnapshot finds the daemon's snapshot for a chain ID. containerd
// names the backend's committed snapshots "<namespace>/<n>/<chain id>".
func chainSnapshot(snaps map[string]snapshots.Info, chainID digest.Digest) (snapshots.Info, bool) {
	for name, info := range snaps {
		if name == chainID.String() || strings.HasSuffix(name, "/"+chainID.String()) {
			return info, true
		}
	}
	return snapshots.Info{}, false
}

// describeSnapshots renders a snapshot listing for failure messages.
func describeSnapshots(snaps map[string]snapshots.Info) string {
	names := make([]string, 0, len(snaps))
	for n := range snaps {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		i := snaps[n]
		fmt.Fprintf(&b, "  %-9s %s (parent %q)\n", i.Kind, n, i.Parent)
	}
	if len(names) == 0 {
		b.WriteString("  (none)\n")
	}
	return b.String()
}

type snapshotInfo = snapshots.Info
