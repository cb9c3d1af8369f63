// Package storageconf reads a containers/storage storage.conf (the TOML
// file of containers-storage.conf(5), as containers/storage v1.50 reads it)
// and maps it to what cs-snapshotter's store takes: the roots, the driver,
// the separate and the additional read-only image stores, the transient
// flag and the overlay options. Every option it does not know, and every
// option cs-snapshotter does not apply, comes back as a warning naming it;
// a driver other than overlay and a file that is not valid TOML (or has a
// value of the wrong type) are errors naming the file and the line.
//
// The package touches nothing but the file it reads (and stats the
// standard locations in Find).
package storageconf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// The places containers/storage v1.50 looks for storage.conf, for root:
// $CONTAINERS_STORAGE_CONF when it is set (the file must then exist), else
// the administrator's OverrideFile when it exists, else the distribution's
// SystemFile (which may be missing: then no file is read).
const (
	EnvVar       = "CONTAINERS_STORAGE_CONF"
	OverrideFile = "/etc/containers/storage.conf"
	SystemFile   = "/usr/share/containers/storage.conf"
)

// Options is what a storage.conf sets, with the field names of
// cs-snapshotter's (and containers/storage's) StoreOptions. Empty fields
// were not set by the file.
type Options struct {
	RunRoot   string
	GraphRoot string
	// ImageStore is [storage] imagestore: a separate image store.
	ImageStore string
	// GraphDriverName is "" (not set) or "overlay" ("overlay2" is read as
	// "overlay", as containers/storage does).
	GraphDriverName string
	// GraphDriverOptions are the overlay options the file sets, as
	// containers/storage passes them to its driver ("overlay.mountopt=...",
	// "overlay.ignore_chown_errors=...", "overlay.force_mask=..."). Only
	// those cs-snapshotter takes into account (check uses the last two) or
	// that it records (mountopt, reported by GraphOptions) are kept; the
	// warnings say what each does here.
	GraphDriverOptions []string
	// ROImageStores are [storage.options] additionalimagestores.
	ROImageStores []string
	// TransientStore is [storage] transient_store.
	TransientStore bool
}

// Warning names an option of the file that is unknown or that
// cs-snapshotter does not apply.
type Warning struct {
	File string
	// Line is the option's line, when known (unknown options); 0 otherwise.
	Line int
	// Key is the option's dotted path: "storage.options.overlay.mount_program".
	Key string
	Msg string
}

func (w Warning) String() string {
	if w.Line > 0 {
		return fmt.Sprintf("%s:%d: %s: %s", w.File, w.Line, w.Key, w.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", w.File, w.Key, w.Msg)
}

// Config is a storage.conf read.
type Config struct {
	// File is the path read.
	File     string
	Options  Options
	Warnings []Warning
}

// Error is a storage.conf that cannot be used: not TOML, a value of the
// wrong type, or a setting cs-snapshotter refuses (another driver).
type Error struct {
	File string
	// Line and Column are where the problem is, when known (1-based).
	Line, Column int
	// Key is the option's dotted path, when known.
	Key string
	Msg string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// The file's tables, with containers/storage v1.50's keys and types
// (types.TomlConfig, pkg/config.OptionsConfig).
type tomlConfig struct {
	Storage struct {
		Driver              string        `toml:"driver"`
		DriverPriority      []string      `toml:"driver_priority"`
		RunRoot             string        `toml:"runroot"`
		ImageStore          string        `toml:"imagestore"`
		GraphRoot           string        `toml:"graphroot"`
		RootlessStoragePath string        `toml:"rootless_storage_path"`
		TransientStore      bool          `toml:"transient_store"`
		Options             optionsConfig `toml:"options"`
	} `toml:"storage"`
}

type optionsConfig struct {
	AdditionalImageStores []string          `toml:"additionalimagestores"`
	ImageStore            string            `toml:"imagestore"`
	AdditionalLayerStores []string          `toml:"additionallayerstores"`
	Size                  string            `toml:"size"`
	RemapUIDs             string            `toml:"remap-uids"`
	RemapGIDs             string            `toml:"remap-gids"`
	IgnoreChownErrors     string            `toml:"ignore_chown_errors"`
	ForceMask             uint32            `toml:"force_mask"`
	RemapUser             string            `toml:"remap-user"`
	RemapGroup            string            `toml:"remap-group"`
	RootAutoUsernsUser    string            `toml:"root-auto-userns-user"`
	AutoUsernsMinSize     uint32            `toml:"auto-userns-min-size"`
	AutoUsernsMaxSize     uint32            `toml:"auto-userns-max-size"`
	SkipMountHome         string            `toml:"skip_mount_home"`
	MountProgram          string            `toml:"mount_program"`
	MountOpt              string            `toml:"mountopt"`
	PullOptions           map[string]string `toml:"pull_options"`
	DisableVolatile       bool              `toml:"disable-volatile"`

	Overlay struct {
		IgnoreChownErrors string `toml:"ignore_chown_errors"`
		MountOpt          string `toml:"mountopt"`
		MountProgram      string `toml:"mount_program"`
		Size              string `toml:"size"`
		Inodes            string `toml:"inodes"`
		SkipMountHome     string `toml:"skip_mount_home"`
		ForceMask         string `toml:"force_mask"`
	} `toml:"overlay"`

	// The other drivers' tables: containers/storage reads them only for
	// that driver, so with overlay they do nothing. Their keys are taken
	// as they come.
	Aufs     map[string]any `toml:"aufs"`
	Btrfs    map[string]any `toml:"btrfs"`
	Thinpool map[string]any `toml:"thinpool"`
	Vfs      map[string]any `toml:"vfs"`
	Zfs      map[string]any `toml:"zfs"`
}

// Load reads and parses file.
func Load(file string) (*Config, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return Parse(file, data)
}

// Find returns the storage.conf containers/storage v1.50 reads for root:
// $CONTAINERS_STORAGE_CONF when set (even to a missing file: Load then
// fails, as containers/storage does), else OverrideFile if it exists, else
// SystemFile if it exists, else "" (no file: the defaults apply).
// lookupEnv and stat are os.LookupEnv and os.Stat unless given.
func Find(lookupEnv func(string) (string, bool), stat func(string) (fs.FileInfo, error)) (string, error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	if stat == nil {
		stat = os.Stat
	}
	if p, ok := lookupEnv(EnvVar); ok {
		return p, nil
	}
	for _, p := range []string{OverrideFile, SystemFile} {
		_, err := stat(p)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	return "", nil
}

// LoadDefault reads the file Find names; nil (and no error) when there is
// none.
func LoadDefault() (*Config, error) {
	file, err := Find(nil, nil)
	if err != nil || file == "" {
		return nil, err
	}
	c, err := Load(file)
	if err != nil && errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("$%s: %w", EnvVar, err)
	}
	return c, err
}

// Parse parses data, the contents of file (named in errors and warnings).
func Parse(file string, data []byte) (*Config, error) {
	var tc tomlConfig
	c := &Config{File: file}
	err := toml.NewDecoder(strings.NewReader(string(data))).DisallowUnknownFields().Decode(&tc)
	var missing *toml.StrictMissingError
	switch {
	case errors.As(err, &missing):
		// Decoded; only keys nobody knows. containers/storage warns about
		// them too ("Failed to decode the keys").
		for _, e := range missing.Errors {
			line, _ := e.Position()
			c.Warnings = append(c.Warnings, Warning{File: file, Line: line, Key: keyName(e.Key()),
				Msg: "unknown option, ignored"})
		}
	case err != nil:
		return nil, decodeError(file, err)
	}
	if err := c.mapConfig(&tc); err != nil {
		return nil, err
	}
	return c, nil
}

var typeMismatch = regexp.MustCompile(`^toml: cannot decode TOML (\S+) into .*? of type (.+)$`)

var typeNames = map[string]string{
	"string":                  "a string",
	"[]string":                "an array of strings",
	"bool":                    "a boolean",
	"uint32":                  "a non-negative integer",
	"map[string]string":       "a table of strings",
	"map[string]interface {}": "a table",
}

func decodeError(file string, err error) error {
	e := &Error{File: file, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		e.Line, e.Column = de.Position()
		e.Key = strings.Join(de.Key(), ".")
		if m := typeMismatch.FindStringSubmatch(de.Error()); m != nil {
			want := typeNames[m[2]]
			switch {
			case want != "":
			case strings.HasPrefix(m[2], "struct") || strings.HasPrefix(m[2], "storageconf."):
				want = "a table"
			default:
				want = "a " + m[2]
			}
			e.Msg = fmt.Sprintf("want %s, not a TOML %s", want, m[1])
		}
	}
	return e
}

// mapConfig turns the decoded file into c.Options and c.Warnings, as
// containers/storage v1.50's ReloadConfigurationFile and
// GetGraphDriverOptions do for the overlay driver.
func (c *Config) mapConfig(tc *tomlConfig) error {
	s := &tc.Storage
	o := &s.Options
	warn := func(key, format string, a ...any) {
		c.Warnings = append(c.Warnings, Warning{File: c.File, Key: key, Msg: fmt.Sprintf(format, a...)})
	}
	unsupported := func(key, value, why string) {
		if value != "" {
			warn(key, "ignored: cs-snapshotter does not support %s (%s)", key[strings.LastIndex(key, ".")+1:], why)
		}
	}

	switch s.Driver {
	case "":
		// containers/storage picks a driver (warning that one should be
		// set); here there is only overlay, unless driver_priority says
		// otherwise.
		if len(s.DriverPriority) > 0 && !contains(s.DriverPriority, "overlay") && !contains(s.DriverPriority, "overlay2") {
			return &Error{File: c.File, Key: "storage.driver_priority",
				Msg: fmt.Sprintf("%q has no overlay: cs-snapshotter stores layers with overlay only", s.DriverPriority)}
		}
	case "overlay", "overlay2":
		c.Options.GraphDriverName = "overlay"
	default:
		return &Error{File: c.File, Key: "storage.driver",
			Msg: fmt.Sprintf("storage driver %q is not supported: cs-snapshotter stores layers with overlay only", s.Driver)}
	}

	c.Options.RunRoot = expandPath(s.RunRoot)
	c.Options.GraphRoot = expandPath(s.GraphRoot)
	c.Options.ImageStore = s.ImageStore
	if s.ImageStore != "" && s.ImageStore == s.GraphRoot {
		// containers/storage refuses it too.
		return &Error{File: c.File, Key: "storage.imagestore",
			Msg: fmt.Sprintf("imagestore %s must either be not set or be a different than graphroot", s.ImageStore)}
	}
	c.Options.TransientStore = s.TransientStore
	unsupported("storage.rootless_storage_path", s.RootlessStoragePath, "the store runs as root")

	for _, p := range o.AdditionalImageStores {
		if p != "" {
			c.Options.ROImageStores = append(c.Options.ROImageStores, p)
		}
	}
	if o.ImageStore != "" {
		warn("storage.options.imagestore", "ignored, as containers/storage v1.50 ignores it: the separate image store is [storage] imagestore")
	}
	if len(o.AdditionalLayerStores) > 0 {
		warn("storage.options.additionallayerstores", "ignored: cs-snapshotter does not support additional layer stores")
	}

	// The overlay table's value wins over [storage.options]', as in
	// containers/storage's GetGraphDriverOptions.
	pick := func(key, overlay, general string) (string, string) {
		if overlay != "" {
			return "storage.options.overlay." + key, overlay
		}
		return "storage.options." + key, general
	}
	if key, v := pick("mountopt", o.Overlay.MountOpt, o.MountOpt); v != "" {
		c.Options.GraphDriverOptions = append(c.Options.GraphDriverOptions, "overlay.mountopt="+v)
		warn(key, "recorded, not applied: overlay mount options are the daemon's [snapshotter] mount_options (config.toml)")
	}
	if key, v := pick("ignore_chown_errors", o.Overlay.IgnoreChownErrors, o.IgnoreChownErrors); v != "" {
		if _, err := strconv.ParseBool(v); err != nil {
			return &Error{File: c.File, Key: key, Msg: fmt.Sprintf("%q is not a boolean", v)}
		}
		c.Options.GraphDriverOptions = append(c.Options.GraphDriverOptions, "overlay.ignore_chown_errors="+v)
		warn(key, "only check takes it into account (it does not compare owners); the store runs as root and keeps owners as they are")
	}
	forceMask := o.Overlay.ForceMask
	forceMaskKey := "storage.options.overlay.force_mask"
	if forceMask == "" && o.ForceMask != 0 {
		forceMask = strconv.FormatUint(uint64(o.ForceMask), 8)
		forceMaskKey = "storage.options.force_mask"
	}
	if forceMask != "" {
		c.Options.GraphDriverOptions = append(c.Options.GraphDriverOptions, "overlay.force_mask="+forceMask)
		warn(forceMaskKey, "not applied to files: cs-snapshotter keeps their modes; only check takes it into account (it does not compare permissions)")
	}
	k, v := pick("mount_program", o.Overlay.MountProgram, o.MountProgram)
	unsupported(k, v, "kernel overlayfs only")
	k, v = pick("size", o.Overlay.Size, o.Size)
	unsupported(k, v, "no quotas")
	unsupported("storage.options.overlay.inodes", o.Overlay.Inodes, "no quotas")
	k, v = pick("skip_mount_home", o.Overlay.SkipMountHome, o.SkipMountHome)
	unsupported(k, v, "the root is not bind-mounted")

	const noMappings = "the store keeps files unmapped and refuses ID mappings"
	unsupported("storage.options.remap-uids", o.RemapUIDs, noMappings)
	unsupported("storage.options.remap-gids", o.RemapGIDs, noMappings)
	unsupported("storage.options.remap-user", o.RemapUser, noMappings)
	unsupported("storage.options.remap-group", o.RemapGroup, noMappings)
	unsupported("storage.options.root-auto-userns-user", o.RootAutoUsernsUser, noMappings)
	if o.AutoUsernsMinSize != 0 {
		unsupported("storage.options.auto-userns-min-size", "set", noMappings)
	}
	if o.AutoUsernsMaxSize != 0 {
		unsupported("storage.options.auto-userns-max-size", "set", noMappings)
	}
	if len(o.PullOptions) > 0 {
		warn("storage.options.pull_options", "ignored: pulls are containerd's")
	}
	if o.DisableVolatile {
		unsupported("storage.options.disable-volatile", "true", "no volatile mounts")
	}
	for _, t := range []struct {
		name string
		m    map[string]any
	}{{"aufs", o.Aufs}, {"btrfs", o.Btrfs}, {"thinpool", o.Thinpool}, {"vfs", o.Vfs}, {"zfs", o.Zfs}} {
		keys := make([]string, 0, len(t.m))
		for k := range t.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			warn("storage.options."+t.name+"."+k, "ignored: options of the %s driver (cs-snapshotter uses overlay)", t.name)
		}
	}
	return nil
}

// expandPath expands $UID and environment variables in a root, and
// resolves symbolic links when it can, as containers/storage v1.50 does
// with graphroot and runroot.
func expandPath(p string) string {
	if p == "" {
		return ""
	}
	p = strings.ReplaceAll(p, "$UID", strconv.Itoa(os.Getuid()))
	p = os.ExpandEnv(p)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return filepath.Clean(p)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// IsContainersStorageRoot reports whether dir holds a containers/storage
// store (an overlay graph root): cs-snapshotter cannot use it as its root,
// and must not write into it. It only looks (stat).
func IsContainersStorageRoot(dir string) bool {
	for _, f := range []string{"overlay-layers/layers.json", "overlay-images/images.json", "overlay-containers/containers.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// keyName writes a key's parts as TOML does, quoting those that are not
// bare keys (an empty one, say), so that a warning always names the key.
func keyName(parts []string) string {
	out := make([]string, len(parts))
	for i, p := range parts {
		bare := p != ""
		for _, r := range p {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
				bare = false
				break
			}
		}
		out[i] = p
		if !bare {
			out[i] = strconv.Quote(p)
		}
	}
	return strings.Join(out, ".")
}
