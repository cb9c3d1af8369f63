package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/containerd/log"
	"github.com/coreos/go-systemd/v22/activation"
	sdnotify "github.com/coreos/go-systemd/v22/daemon"
	"github.com/pelletier/go-toml/v2"

	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/daemon"
)

func runServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var (
		configPath = fs.String("config", config.DefaultPath, "TOML configuration `file` (absent = defaults)")
		root       = fs.String("root", "", "root `directory` for the database, snapshots and blobs (default "+config.DefaultRoot+")")
		runRoot    = fs.String("run-root", "", "`directory` for state that does not survive a reboot (default "+config.DefaultRunRoot+")")
		address    = fs.String("address", "", "unix socket `path` (default <run-root>/"+config.SocketName+")")
		logLevel   = fs.String("log-level", "", "log `level`: trace, debug, info, warn, error (default "+config.DefaultLogLevel+")")
		imageStore = fs.String("image-store", "", "separate image store root `directory` (config image_store)")
		roStores   stringList
	)
	fs.Var(&roStores, "additional-image-store", "read-only image store root `directory`, repeatable (config additional_image_stores)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	cfg, err := config.Load(*configPath, explicit)
	if err != nil {
		return err
	}
	// Flags override the file.
	for flagValue, field := range map[*string]*string{root: &cfg.Root, runRoot: &cfg.RunRoot, address: &cfg.GRPC.Address, logLevel: &cfg.LogLevel, imageStore: &cfg.ImageStore} {
		if *flagValue != "" {
			*field = *flagValue
		}
	}
	if len(roStores) > 0 {
		cfg.AdditionalImageStores = roStores
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		return fmt.Errorf("log level %q: %w", cfg.LogLevel, err)
	}
	if err := log.SetFormat(log.TextFormat); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	addr := cfg.Address()
	var opts []daemon.ServeOption
	// systemd socket activation: serve on the socket systemd passes.
	l, err := activatedListener()
	if err != nil {
		return err
	}
	if l != nil {
		addr = l.Addr().String()
		opts = append(opts, daemon.WithListener(l))
		log.G(ctx).WithField("address", addr).Info("using the socket systemd passed")
	}
	if err := checkRoot(cfg.Root); err != nil {
		if l != nil {
			l.Close()
		}
		return err
	}
	d, err := daemon.Open(ctx, cfg, daemon.Holder{What: "cs-snapshotter serve", Address: addr})
	if err != nil {
		if l != nil {
			l.Close()
		}
		return err
	}
	serveErr := serveDaemon(ctx, d, cfg, addr, opts)
	if err := d.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("close")
	}
	if serveErr == nil {
		log.G(ctx).Info("stopped")
	}
	return serveErr
}

// serveDaemon starts the metrics and debug endpoints the configuration
// asks for, then serves d until ctx ends, telling systemd (when it started
// us with $NOTIFY_SOCKET) when the socket serves and when it stops.
func serveDaemon(ctx context.Context, d *daemon.Daemon, cfg config.Config, addr string, opts []daemon.ServeOption) error {
	if a := cfg.Metrics.Address; a != "" {
		e, err := d.ServeMetrics(ctx, a, cfg.GRPC)
		if err != nil {
			return err
		}
		defer e.Close()
	}
	if a := cfg.Debug.Address; a != "" {
		e, err := daemon.ServeDebug(ctx, a, cfg.GRPC)
		if err != nil {
			return err
		}
		defer e.Close()
	}
	opts = append(opts,
		daemon.OnReady(func() { notify(ctx, sdnotify.SdNotifyReady+"\nSTATUS=serving on "+addr) }),
		daemon.OnStopping(func() { notify(ctx, sdnotify.SdNotifyStopping+"\nSTATUS=stopping") }),
	)
	return d.Serve(ctx, cfg.GRPC, addr, opts...)
}

// notify sends state to systemd's notification socket, if there is one.
func notify(ctx context.Context, state string) {
	if _, err := sdnotify.SdNotify(false, state); err != nil {
		log.G(ctx).WithError(err).Warn("notify systemd")
	}
}

// activatedListener returns the socket systemd passed (socket activation),
// or nil when it passed none. It accepts exactly one.
func activatedListener() (net.Listener, error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("sockets passed by systemd: %w", err)
	}
	var found []net.Listener
	for _, l := range ls {
		if l != nil {
			found = append(found, l)
		}
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return found[0], nil
	}
	for _, l := range found {
		l.Close()
	}
	return nil, fmt.Errorf("systemd passed %d sockets, want one (ListenStream= the daemon's socket path)", len(found))
}

// checkRoot makes sure the root exists and takes writes, so that an
// unwritable root (a read-only mount, a full disk) is named as such.
func checkRoot(root string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("root %s cannot be created: %w", root, err)
	}
	f, err := os.CreateTemp(root, ".write-test-")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the test file's name says nothing
		}
		return fmt.Errorf("root %s is not writable: %w", root, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

func runConfig(_ context.Context, args []string) error {
	if len(args) != 1 || args[0] != "default" {
		return fmt.Errorf("usage: cs-snapshotter config default")
	}
	return toml.NewEncoder(os.Stdout).Encode(config.Default())
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
