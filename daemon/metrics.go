package daemon

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/cs-snapshotter/cs-snapshotter/differ"
	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// UsageCacheTTL is how long the counts that need a walk (snapshots, blobs,
// bytes under the root) are reused between scrapes. MetricsHandler reads it
// when called.
var UsageCacheTTL = 5 * time.Second

const namespace = "cs_snapshotter"

// The per-call metrics are process-wide: every server of every daemon in
// the process counts into them, as the interceptors have no daemon.
var (
	rpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Subsystem: "grpc",
		Name:      "requests_total",
		Help:      "gRPC calls handled, by service, method and gRPC status code.",
	}, []string{"service", "method", "code"})
	rpcErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Subsystem: "grpc",
		Name:      "errors_total",
		Help:      "gRPC calls that failed, by service, method and gRPC status code.",
	}, []string{"service", "method", "code"})
	rpcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace,
		Subsystem: "grpc",
		Name:      "request_duration_seconds",
		Help:      "Time to handle a gRPC call (a streaming call: the whole stream), by service and method.",
		Buckets:   []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"service", "method"})
	ingestBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace,
		Subsystem: "content",
		Name:      "ingest_bytes_total",
		Help:      "Bytes received by content Write (ingest) calls; its rate is the ingest throughput.",
	})
)

const contentWriteMethod = "/containerd.services.content.v1.Content/Write"

// splitMethod turns "/pkg.Service/Method" into its service and method.
func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}

func observe(fullMethod string, start time.Time, err error) {
	service, method := splitMethod(fullMethod)
	code := status.Code(err).String()
	rpcRequests.WithLabelValues(service, method, code).Inc()
	if err != nil {
		rpcErrors.WithLabelValues(service, method, code).Inc()
	}
	rpcDuration.WithLabelValues(service, method).Observe(time.Since(start).Seconds())
}

// metricsUnary and metricsStream count every call, its errors by code and
// its duration.
func metricsUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	observe(info.FullMethod, start, err)
	return resp, err
}

func metricsStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	if info.FullMethod == contentWriteMethod {
		ss = ingestCounter{ss}
	}
	err := handler(srv, ss)
	observe(info.FullMethod, start, err)
	return err
}

// ingestCounter counts the data of content Write requests as they arrive.
type ingestCounter struct{ grpc.ServerStream }

func (s ingestCounter) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		if req, ok := m.(*contentapi.WriteContentRequest); ok && len(req.Data) > 0 {
			ingestBytes.Add(float64(len(req.Data)))
		}
	}
	return err
}

// MetricsHandler serves the daemon's metrics in Prometheus' formats: the
// per-call metrics, the usage of the root (computed at scrape time and
// reused for UsageCacheTTL) and the Go runtime's and the process's own.
func (d *Daemon) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		rpcRequests, rpcErrors, rpcDuration, ingestBytes,
		&usageCollector{d: d, ttl: UsageCacheTTL},
		aheadCollector{d},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: promLogger{}})
}

type promLogger struct{}

func (promLogger) Println(v ...any) { log.L.Warn(v...) }

var (
	snapshotsDesc = prometheus.NewDesc(namespace+"_snapshots", "Snapshots, by kind (Active, View, Committed).", []string{"kind"}, nil)
	blobsDesc     = prometheus.NewDesc(namespace+"_content_blobs", "Blobs in the content store.", nil, nil)
	blobBytesDesc = prometheus.NewDesc(namespace+"_content_blob_bytes", "Sum of the sizes of the blobs in the content store.", nil, nil)
	ingestsDesc   = prometheus.NewDesc(namespace+"_content_ingests", "Ingests in progress (containerd's; the daemon's own are not listed).", nil, nil)
	rootBytesDesc = prometheus.NewDesc(namespace+"_root_bytes", "Bytes allocated on disk under the root (database, snapshots, blobs), hard links counted once, other file systems mounted inside not counted.", nil, nil)
	rootFilesDesc = prometheus.NewDesc(namespace+"_root_inodes", "Inodes under the root, hard links counted once.", nil, nil)
)

var aheadDesc = prometheus.NewDesc(namespace+"_unpack_ahead_total",
	"Blobs unpacked while containerd wrote them, by how that ended: adopted (moved into the snapshot applied), not_fitting (unpacked again onto parents that did not fit), failed, unused (never applied, dropped), late (applied before the unpacking started).",
	[]string{"outcome"}, nil)

// aheadCollector reports the unpacking ahead of the root containerd's
// layers are unpacked in.
type aheadCollector struct{ d *Daemon }

func (aheadCollector) Describe(ch chan<- *prometheus.Desc) { ch <- aheadDesc }

func (c aheadCollector) Collect(ch chan<- prometheus.Metric) {
	to := c.d
	if to.img != nil {
		to = to.img
	}
	counts := to.diff.AheadCounts()
	for i, outcome := range differ.AheadOutcomes {
		ch <- prometheus.MustNewConstMetric(aheadDesc, prometheus.CounterValue, float64(counts[i]), outcome)
	}
}

// usage is what the walks found.
type usage struct {
	snapshots          map[snapshots.Kind]int
	blobs              int
	blobBytes          int64
	ingests            int
	rootBytes, inodes  int64
	snapErr, blobErr   error
	ingestErr, rootErr error
}

// usageCollector walks at scrape time, at most once per ttl.
type usageCollector struct {
	d   *Daemon
	ttl time.Duration

	mu   sync.Mutex
	at   time.Time
	last usage
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{snapshotsDesc, blobsDesc, blobBytesDesc, ingestsDesc, rootBytesDesc, rootFilesDesc} {
		ch <- d
	}
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	u := c.get()
	if u.snapErr != nil {
		ch <- prometheus.NewInvalidMetric(snapshotsDesc, u.snapErr)
	} else {
		for _, k := range []snapshots.Kind{snapshots.KindActive, snapshots.KindView, snapshots.KindCommitted} {
			ch <- prometheus.MustNewConstMetric(snapshotsDesc, prometheus.GaugeValue, float64(u.snapshots[k]), k.String())
		}
	}
	if u.blobErr != nil {
		ch <- prometheus.NewInvalidMetric(blobsDesc, u.blobErr)
	} else {
		ch <- prometheus.MustNewConstMetric(blobsDesc, prometheus.GaugeValue, float64(u.blobs))
		ch <- prometheus.MustNewConstMetric(blobBytesDesc, prometheus.GaugeValue, float64(u.blobBytes))
	}
	if u.ingestErr != nil {
		ch <- prometheus.NewInvalidMetric(ingestsDesc, u.ingestErr)
	} else {
		ch <- prometheus.MustNewConstMetric(ingestsDesc, prometheus.GaugeValue, float64(u.ingests))
	}
	if u.rootErr != nil {
		ch <- prometheus.NewInvalidMetric(rootBytesDesc, u.rootErr)
	} else {
		ch <- prometheus.MustNewConstMetric(rootBytesDesc, prometheus.GaugeValue, float64(u.rootBytes))
		ch <- prometheus.MustNewConstMetric(rootFilesDesc, prometheus.GaugeValue, float64(u.inodes))
	}
}

// get returns the cached usage, walking again when it is older than ttl.
// Concurrent scrapes wait for one walk.
func (c *usageCollector) get() usage {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < c.ttl {
		return c.last
	}
	// All snapshots count, the store's too.
	c.last = c.d.usage(snapshotter.WithStoreCaller(context.Background()))
	c.at = time.Now()
	return c.last
}

func (d *Daemon) usage(ctx context.Context) usage {
	u := usage{snapshots: map[snapshots.Kind]int{}}
	u.snapErr = d.sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		u.snapshots[info.Kind]++
		return nil
	})
	u.blobErr = d.cs.Walk(ctx, func(info content.Info) error {
		u.blobs++
		u.blobBytes += info.Size
		return nil
	})
	statuses, err := d.cs.ListStatuses(ctx)
	u.ingests, u.ingestErr = len(statuses), err
	u.rootBytes, u.inodes, u.rootErr = diskUsage(d.root)
	return u
}

// diskUsage sums the blocks allocated under root, like `du -s` (hard links
// once, not crossing into other file systems), and counts the inodes.
func diskUsage(root string) (bytes, inodes int64, err error) {
	var rootSt syscall.Stat_t
	if err := syscall.Lstat(root, &rootSt); err != nil {
		return 0, 0, err
	}
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	err = filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			// Files come and go while the daemon works.
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if uint64(st.Dev) != uint64(rootSt.Dev) {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if st.Nlink > 1 && !e.IsDir() {
			k := inode{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		bytes += st.Blocks * 512
		inodes++
		return nil
	})
	return bytes, inodes, err
}
