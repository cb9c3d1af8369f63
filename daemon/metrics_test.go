package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
)

// metric sums the samples of name in a text exposition whose labels
// include every one of labels (`key="value"`). found is false when no
// sample matched.
func metric(text, name string, labels ...string) (sum float64, found bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, labelText, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(labelText, l)
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

func scrape(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v\n%s", url, resp.Status, err, body)
	}
	return string(body)
}

func unixHTTPClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
}

// TestMetrics makes a few calls and scrapes: per-call counts, errors by
// code, latency histograms, snapshot and blob counts, bytes under the root
// and ingest bytes.
func TestMetrics(t *testing.T) {
	root := t.TempDir()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	s, err := serve(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	// Keep the test fast: walk again after a second instead of five.
	ttl := daemon.UsageCacheTTL
	daemon.UsageCacheTTL = time.Second
	defer func() { daemon.UsageCacheTTL = ttl }()
	ep, err := s.d.ServeMetrics(ctx, "127.0.0.1:0", config.Default().GRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	url := "http://" + ep.Addr() + "/metrics"

	before := scrape(t, http.DefaultClient, url)
	statNotFound, _ := metric(before, "cs_snapshotter_grpc_requests_total", `method="Stat"`, `code="NotFound"`)
	errNotFound, _ := metric(before, "cs_snapshotter_grpc_errors_total", `method="Stat"`, `code="NotFound"`)
	ingested, _ := metric(before, "cs_snapshotter_content_ingest_bytes_total")
	if n, ok := metric(before, "cs_snapshotter_snapshots"); !ok || n != 0 {
		t.Errorf("snapshots before any call: %v %v", n, ok)
	}

	sn := s.client.Snapshotter
	for i := 0; i < 3; i++ {
		if _, err := sn.Stat(ctx, "nothing"); !errdefs.IsNotFound(err) {
			t.Fatalf("stat: %v", err)
		}
	}
	if _, err := sn.Prepare(ctx, "a-active", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "a", "a-active"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "b", "a"); err != nil {
		t.Fatal(err)
	}
	blob := bytes.Repeat([]byte("metrics "), 64<<10) // 512 KiB
	if err := content.WriteBlob(ctx, s.client.Content, "blob", bytes.NewReader(blob), ocispecDescriptor(blob)); err != nil {
		t.Fatal(err)
	}

	// The walk cache: the counts may be up to UsageCacheTTL old.
	time.Sleep(time.Second)
	after := scrape(t, http.DefaultClient, url)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"cs_snapshotter_grpc_requests_total", []string{`service="containerd.services.snapshots.v1.Snapshots"`, `method="Stat"`, `code="NotFound"`}, statNotFound + 3},
		{"cs_snapshotter_grpc_errors_total", []string{`method="Stat"`, `code="NotFound"`}, errNotFound + 3},
		{"cs_snapshotter_content_ingest_bytes_total", nil, ingested + float64(len(blob))},
		{"cs_snapshotter_snapshots", []string{`kind="Committed"`}, 1},
		{"cs_snapshotter_snapshots", []string{`kind="Active"`}, 1},
		{"cs_snapshotter_snapshots", []string{`kind="View"`}, 0},
		{"cs_snapshotter_content_blobs", nil, 1},
		{"cs_snapshotter_content_blob_bytes", nil, float64(len(blob))},
	} {
		if got, ok := metric(after, c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if n, ok := metric(after, "cs_snapshotter_grpc_requests_total", `method="Prepare"`, `code="OK"`); !ok || n < 2 {
		t.Errorf("Prepare OK count %v", n)
	}
	if n, ok := metric(after, "cs_snapshotter_grpc_request_duration_seconds_count", `method="Commit"`); !ok || n < 1 {
		t.Errorf("Commit latency histogram count %v", n)
	}
	if _, ok := metric(after, "cs_snapshotter_grpc_request_duration_seconds_bucket", `method="Write"`, `le="0.001"`); !ok {
		t.Errorf("no latency buckets for the content Write stream")
	}
	// The blob alone takes 512 KiB on disk; the database more.
	if n, ok := metric(after, "cs_snapshotter_root_bytes"); !ok || n < float64(len(blob)) {
		t.Errorf("root bytes %v, want at least %d", n, len(blob))
	}
	if n, ok := metric(after, "cs_snapshotter_root_inodes"); !ok || n < 5 {
		t.Errorf("root inodes %v", n)
	}
	if _, ok := metric(after, "go_goroutines"); !ok {
		t.Errorf("no Go runtime metrics")
	}

	// Within the cache's lifetime a new snapshot is not counted yet: the
	// walk does not run on every scrape.
	if _, err := sn.Prepare(ctx, "c", "a"); err != nil {
		t.Fatal(err)
	}
	if n, _ := metric(scrape(t, http.DefaultClient, url), "cs_snapshotter_snapshots", `kind="Active"`); n != 1 {
		t.Errorf("active snapshots %v right after a scrape, want the cached 1", n)
	}
}

func ocispecDescriptor(b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(b), Size: int64(len(b))}
}

// TestMetricsAndDebugOnUnixSockets serves metrics and pprof on unix
// sockets, with the gRPC socket's mode, and removes them on close.
func TestMetricsAndDebugOnUnixSockets(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	s, err := serve(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	g := config.Default().GRPC
	metricsPath := filepath.Join(root, "run", "metrics.sock")
	debugPath := filepath.Join(root, "run", "debug.sock")
	m, err := s.d.ServeMetrics(ctx, metricsPath, g)
	if err != nil {
		t.Fatal(err)
	}
	dbg, err := daemon.ServeDebug(ctx, debugPath, g)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{metricsPath, debugPath} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want a 0600 socket", p, fi.Mode(), err)
		}
	}
	if text := scrape(t, unixHTTPClient(metricsPath), "http://metrics/metrics"); !strings.Contains(text, "cs_snapshotter_content_blobs 0") {
		t.Errorf("metrics over a unix socket:\n%s", text)
	}
	if text := scrape(t, unixHTTPClient(debugPath), "http://debug/debug/pprof/"); !strings.Contains(text, "goroutine") {
		t.Errorf("pprof index:\n%s", text)
	}
	if text := scrape(t, unixHTTPClient(debugPath), "http://debug/debug/pprof/goroutine?debug=1"); !strings.Contains(text, "goroutine profile") {
		t.Errorf("goroutine profile:\n%s", text)
	}
	// A second endpoint on a live socket is refused.
	if _, err := daemon.ServeDebug(ctx, metricsPath, g); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second endpoint on a live socket: %v", err)
	}
	if _, err := daemon.ServeDebug(ctx, "localhost:6060", g); err == nil {
		t.Error("pprof on TCP accepted")
	}
	m.Close()
	dbg.Close()
	for _, p := range []string{metricsPath, debugPath} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}
