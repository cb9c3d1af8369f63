package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"
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
	)
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
	for flagValue, field := range map[*string]*string{root: &cfg.Root, runRoot: &cfg.RunRoot, address: &cfg.GRPC.Address, logLevel: &cfg.LogLevel} {
		if *flagValue != "" {
			*field = *flagValue
		}
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
	d, err := daemon.Open(ctx, cfg, daemon.Holder{What: "cs-snapshotter serve", Address: addr})
	if err != nil {
		return err
	}
	serveErr := d.Serve(ctx, cfg.GRPC, addr)
	if err := d.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("close")
	}
	if serveErr == nil {
		log.G(ctx).Info("stopped")
	}
	return serveErr
}

func runConfig(_ context.Context, args []string) error {
	if len(args) != 1 || args[0] != "default" {
		return fmt.Errorf("usage: cs-snapshotter config default")
	}
	return toml.NewEncoder(os.Stdout).Encode(config.Default())
}
