package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"

	"github.com/cs-snapshotter/cs-snapshotter/config"
)

// ServeOption adjusts Serve.
type ServeOption func(*serveOptions)

type serveOptions struct {
	ready    func()
	stopping func()
	listener net.Listener
}

// OnReady has Serve call f once the socket accepts calls.
func OnReady(f func()) ServeOption { return func(o *serveOptions) { o.ready = f } }

// OnStopping has Serve call f when its context ends, before it stops.
func OnStopping(f func()) ServeOption { return func(o *serveOptions) { o.stopping = f } }

// WithListener has Serve serve on l (a socket systemd passed in, say)
// instead of creating the socket itself. Serve closes l.
func WithListener(l net.Listener) ServeOption { return func(o *serveOptions) { o.listener = l } }

// Endpoint is an HTTP server on a side socket (metrics, debugging).
type Endpoint struct {
	srv     *http.Server
	address string
	addr    net.Addr
	unix    bool
	done    chan struct{}
}

// Addr is the address the endpoint listens on (the port chosen for
// "host:0").
func (e *Endpoint) Addr() string { return e.addr.String() }

// ServeMetrics serves d's Prometheus metrics at /metrics on address:
// host:port for TCP, an absolute path for a unix socket (created with the
// owner and mode of g, as the gRPC socket).
func (d *Daemon) ServeMetrics(ctx context.Context, address string, g config.GRPC) (*Endpoint, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.MetricsHandler())
	return serveHTTP(ctx, "metrics", address, g, mux)
}

// ServeDebug serves Go's net/http/pprof under /debug/pprof/ on the unix
// socket at address (created with the owner and mode of g).
func ServeDebug(ctx context.Context, address string, g config.GRPC) (*Endpoint, error) {
	if !filepath.IsAbs(address) {
		return nil, fmt.Errorf("debug address must be an absolute socket path, got %q", address)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return serveHTTP(ctx, "debug", address, g, mux)
}

func serveHTTP(ctx context.Context, what, address string, g config.GRPC, h http.Handler) (*Endpoint, error) {
	e := &Endpoint{address: address, unix: filepath.IsAbs(address), done: make(chan struct{})}
	var (
		l   net.Listener
		err error
	)
	if e.unix {
		l, err = Listen(address, g)
	} else {
		l, err = net.Listen("tcp", address)
	}
	if err != nil {
		return nil, fmt.Errorf("%s endpoint: %w", what, err)
	}
	e.addr = l.Addr()
	e.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(e.done)
		if err := e.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).WithField("address", address).Errorf("%s endpoint failed", what)
		}
	}()
	log.G(ctx).WithField("address", l.Addr().String()).Infof("serving %s", what)
	return e, nil
}

// Close stops the endpoint, giving requests in flight a second, and
// removes its unix socket.
func (e *Endpoint) Close() error {
	if e == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := e.srv.Shutdown(ctx)
	if err != nil {
		err = e.srv.Close()
	}
	<-e.done
	if e.unix {
		os.Remove(e.address)
	}
	return err
}
