// Package config reads the daemon's TOML configuration.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Defaults, documented in config.toml.example.
const (
	DefaultPath     = "/etc/cs-snapshotter/config.toml"
	DefaultRoot     = "/var/lib/cs-snapshotter"
	DefaultRunRoot  = "/run/cs-snapshotter"
	DefaultLogLevel = "info"
	DefaultMode     = "0600"
	SocketName      = "cs-snapshotter.sock"
)

// Config is the daemon's configuration.
type Config struct {
	// Root holds the database, snapshots and blobs.
	Root string `toml:"root"`
	// RunRoot holds what does not survive a reboot: the socket by default.
	RunRoot  string `toml:"run_root"`
	LogLevel string `toml:"log_level"`
	// AdditionalImageStores are other cs-snapshotter roots, read and never
	// written, whose layers containerd can use here without copying them
	// (containers/storage's additionalimagestores).
	AdditionalImageStores []string `toml:"additional_image_stores"`
	// ImageStore is a separate root, held by the daemon too, where the
	// layers containerd unpacks go, with the blobs, while containers'
	// snapshots stay in Root (containers/storage's imagestore).
	ImageStore string `toml:"image_store"`

	GRPC        GRPC        `toml:"grpc"`
	Snapshotter Snapshotter `toml:"snapshotter"`
	Metrics     Metrics     `toml:"metrics"`
	Debug       Debug       `toml:"debug"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Address serves /metrics over HTTP: host:port for TCP, an absolute
	// path for a unix socket; empty turns it off.
	Address string `toml:"address"`
}

// Debug configures the debugging endpoint.
type Debug struct {
	// Address is a unix socket path serving net/http/pprof under
	// /debug/pprof/; empty turns it off.
	Address string `toml:"address"`
}

// GRPC configures the socket.
type GRPC struct {
	// Address is the unix socket path; empty means <run_root>/cs-snapshotter.sock.
	Address string `toml:"address"`
	// UID and GID own the socket; -1 leaves the daemon's.
	UID int `toml:"uid"`
	GID int `toml:"gid"`
	// Mode is the socket's permission bits, in octal.
	Mode string `toml:"mode"`
}

// Snapshotter configures the overlay snapshotter.
type Snapshotter struct {
	// MountOptions are added to every overlay mount.
	MountOptions []string `toml:"mount_options"`
	// AsyncRemove defers removing the files of a snapshot containerd
	// removes to Cleanup, as containerd's overlay snapshotter does by
	// default; the store's own removals delete them at once.
	AsyncRemove bool `toml:"async_remove"`
	// MaxLayerSize bounds, in bytes, what one layer may expand to when it
	// is applied (a pull's unpacking, the store's ApplyDiff): its
	// uncompressed tar, and the sizes its files declare (a sparse file's
	// holes included). A layer over it fails with an error naming the
	// bound. 0 means no bound, as in containerd and containers/storage;
	// see config.toml.example.
	MaxLayerSize int64 `toml:"max_layer_size"`
	// UnpackAhead unpacks each compressed blob containerd writes as it
	// arrives, before containerd asks for it to be applied; the layer is
	// then moved into its snapshot instead of unpacked there (an import
	// overlaps its ingest with its unpacking). A blob nobody applies costs
	// the unpacking and, for up to ten minutes, its disk space.
	UnpackAhead bool `toml:"unpack_ahead"`
}

// Default returns the configuration used when no file sets anything.
func Default() Config {
	return Config{
		Root:        DefaultRoot,
		RunRoot:     DefaultRunRoot,
		LogLevel:    DefaultLogLevel,
		GRPC:        GRPC{UID: -1, GID: -1, Mode: DefaultMode},
		Snapshotter: Snapshotter{AsyncRemove: true, UnpackAhead: true},
	}
}

// Load reads path over the defaults. A missing file is not an error unless
// required is set (the user named the file).
func Load(path string, required bool) (Config, error) {
	c := Default()
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !required {
			return c, nil
		}
		return c, fmt.Errorf("read config: %w", err)
	}
	if err := Parse(data, &c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes TOML data over c, rejecting keys it does not know.
func Parse(data []byte, c *Config) error {
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			var keys []string
			for _, e := range strict.Errors {
				row, _ := e.Position()
				keys = append(keys, fmt.Sprintf("%q (line %d)", strings.Join(e.Key(), "."), row))
			}
			return fmt.Errorf("unknown key %s", strings.Join(keys, ", "))
		}
		var derr *toml.DecodeError
		if errors.As(err, &derr) {
			row, col := derr.Position()
			return fmt.Errorf("line %d, column %d: %s", row, col, derr.Error())
		}
		return err
	}
	return c.Validate()
}

// Validate checks values a decoder cannot.
func (c *Config) Validate() error {
	if c.Root == "" || !filepath.IsAbs(c.Root) {
		return fmt.Errorf("root must be an absolute path, got %q", c.Root)
	}
	if c.RunRoot == "" || !filepath.IsAbs(c.RunRoot) {
		return fmt.Errorf("run_root must be an absolute path, got %q", c.RunRoot)
	}
	seen := map[string]bool{}
	for _, p := range c.AdditionalImageStores {
		switch {
		case p == "" || !filepath.IsAbs(p):
			return fmt.Errorf("additional_image_stores: each must be an absolute path, got %q", p)
		case filepath.Clean(p) == filepath.Clean(c.Root):
			return fmt.Errorf("additional_image_stores: %q is the root itself", p)
		case seen[filepath.Clean(p)]:
			return fmt.Errorf("additional_image_stores: %q is listed twice", p)
		}
		seen[filepath.Clean(p)] = true
	}
	if p := c.ImageStore; p != "" {
		switch {
		case !filepath.IsAbs(p):
			return fmt.Errorf("image_store must be an absolute path, got %q", p)
		case filepath.Clean(p) == filepath.Clean(c.Root):
			return fmt.Errorf("image_store: %q is the root itself", p)
		case seen[filepath.Clean(p)]:
			return fmt.Errorf("image_store: %q is also in additional_image_stores", p)
		}
	}
	if c.GRPC.Address != "" && !filepath.IsAbs(c.GRPC.Address) {
		return fmt.Errorf("grpc.address must be an absolute path, got %q", c.GRPC.Address)
	}
	if _, err := c.GRPC.FileMode(); err != nil {
		return err
	}
	if a := c.Metrics.Address; a != "" && !filepath.IsAbs(a) {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("metrics.address must be host:port or an absolute socket path, got %q", a)
		}
	}
	if c.Snapshotter.MaxLayerSize < 0 {
		return fmt.Errorf("snapshotter.max_layer_size must be a number of bytes, 0 for no limit, got %d", c.Snapshotter.MaxLayerSize)
	}
	if a := c.Debug.Address; a != "" && !filepath.IsAbs(a) {
		return fmt.Errorf("debug.address must be an absolute socket path, got %q", a)
	}
	return nil
}

// Address is the socket path, defaulted from RunRoot.
func (c *Config) Address() string {
	if c.GRPC.Address != "" {
		return c.GRPC.Address
	}
	return filepath.Join(c.RunRoot, SocketName)
}

// FileMode parses Mode.
func (g GRPC) FileMode() (os.FileMode, error) {
	m, err := strconv.ParseUint(g.Mode, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("grpc.mode must be octal permission bits like \"0660\", got %q", g.Mode)
	}
	return os.FileMode(m), nil
}
