package daemon_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	diffproxy "github.com/containerd/containerd/v2/core/diff/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cs-snapshotter/cs-snapshotter/config"
)

// TestUnpackAheadOverSocket: a layer blob written through the socket is
// unpacked while it arrives, and the Apply that follows moves it into its
// snapshot; a daemon started after a crash finds no staging left, nor
// its tar-split's ingest; with unpack_ahead = false nothing is staged.
func TestUnpackAheadOverSocket(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	root := t.TempDir()
	staging := filepath.Join(root, "unpack-ahead")
	stale := filepath.Join(staging, "stage-left-by-a-crash")
	if err := os.MkdirAll(filepath.Join(stale, "usr"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := serve(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.stop() }()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the staging a crash left is still there: %v", err)
	}

	applyOne := func(s *served, name string) (staged int) {
		t.Helper()
		blob := gzTar(t, name, "body of "+name)
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		if err := content.WriteBlob(ctx, s.client.Content, "layer-"+name, bytes.NewReader(blob), desc); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if entries, _ := os.ReadDir(staging); len(entries) > 0 {
				staged = len(entries)
				break
			}
		}
		conn, err := grpc.NewClient("unix://"+s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		applier := diffproxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(diff.Applier)
		mounts, err := s.client.Snapshotter.Prepare(ctx, "extract-"+name, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := applier.Apply(ctx, desc, mounts); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(mounts[0].Source, name)); err != nil || string(b) != "body of "+name {
			t.Errorf("applied layer holds %q, %v", b, err)
		}
		if entries, _ := os.ReadDir(staging); len(entries) != 0 {
			t.Errorf("staging holds %d entries after the apply: not adopted", len(entries))
		}
		return staged
	}
	if n := applyOne(s, "one"); n != 1 {
		t.Errorf("%d blobs staged while written, want 1", n)
	}
	rec := httptest.NewRecorder()
	s.d.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{`cs_snapshotter_unpack_ahead_total{outcome="adopted"} 1`, `cs_snapshotter_unpack_ahead_total{outcome="failed"} 0`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	s, err = serve(ctx, root, func(c *config.Config) { c.Snapshotter.UnpackAhead = false })
	if err != nil {
		t.Fatal(err)
	}
	if n := applyOne(s, "two"); n != 0 {
		t.Errorf("unpack_ahead = false: %d blobs staged", n)
	}
	if sts, err := s.client.Content.ListStatuses(ctx); err != nil || len(sts) != 0 {
		t.Errorf("ingests left: %v, %v", sts, err)
	}
}
