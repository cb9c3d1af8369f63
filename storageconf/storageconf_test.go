package storageconf

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fedoraConf is the storage.conf Fedora ships with podman (containers-common),
// as of containers/storage v1.50: composefs and partial pulls not yet on.
const fedoraConf = `# This file is the configuration file for all tools
# that use the containers/storage library. The storage.conf file
# overrides all other storage.conf files. Container engines using the
# container/storage library do not inherit fields from other storage.conf
# files.
#
# See man 5 containers-storage.conf for more information
[storage]

# Default Storage Driver, Must be set for proper operation.
driver = "overlay"

# Temporary storage location
runroot = "/run/containers/storage"

# Primary Read/Write location of container storage
graphroot = "/var/lib/containers/storage"

# Storage path for rootless users
#
# rootless_storage_path = "$HOME/.local/share/containers/storage"

# Transient store mode makes all container metadata be saved in temporary storage
# transient_store = true

[storage.options]
# Storage options to be passed to underlying storage drivers

# AdditionalImageStores is used to pass paths to additional Read/Only image stores
# Must be comma separated list.
additionalimagestores = [
]

# Allows specification of how storage is populated when pulling images.
pull_options = {enable_partial_images = "false", use_hard_links = "false", ostree_repos=""}

[storage.options.overlay]
# ignore_chown_errors can be set to allow a non privileged user running with
# a single UID within a user namespace to run containers.
#ignore_chown_errors = "false"

# Path to an helper program to use for mounting the file system instead of mounting it
# directly.
#mount_program = "/usr/bin/fuse-overlayfs"

# mountopt specifies comma separated list of extra mount options
mountopt = "nodev,metacopy=on"

# Set to skip a PRIVATE bind mount on the storage home directory.
#skip_mount_home = "false"

[storage.options.thinpool]
# Storage Options for thinpool
# autoextend_percent = "20"
`

// A shared-store node: a separate image store, read-only stores on NFS,
// rootless leftovers and options for other drivers.
const sharedConf = `[storage]
driver = "overlay2"
runroot = "/run/cs"
graphroot = "/srv/cs/graph"
imagestore = "/srv/cs/images"
transient_store = true
rootless_storage_path = "$HOME/.local/share/containers/storage"

[storage.options]
additionalimagestores = ["/mnt/nfs/images", "", "/mnt/ro/images"]
additionallayerstores = ["/var/lib/stargz:ref"]
imagestore = "/ignored"
mountopt = "nodev"
size = "10G"
force_mask = 0o700
remap-uids = "0:100000:65536"
remap-user = "containers"
auto-userns-max-size = 65536
disable-volatile = true

[storage.options.overlay]
mountopt = "nodev,metacopy=on"
ignore_chown_errors = "true"
inodes = "1000"
skip_mount_home = "true"

[storage.options.btrfs]
min_space = "1G"

[storage.options.zfs]
fsname = "tank"
`

type warn struct {
	key  string
	line int
	msg  string // a part of the message
}

func TestParse(t *testing.T) {
	t.Setenv("HOME", "/home/u")
	uid := strconv.Itoa(os.Getuid())
	for _, tc := range []struct {
		name  string
		data  string
		want  Options
		warns []warn
	}{
		{
			name: "empty",
		},
		{
			name: "fedora",
			data: fedoraConf,
			want: Options{
				RunRoot: "/run/containers/storage", GraphRoot: "/var/lib/containers/storage", GraphDriverName: "overlay",
				GraphDriverOptions: []string{"overlay.mountopt=nodev,metacopy=on"},
			},
			warns: []warn{
				{key: "storage.options.overlay.mountopt", msg: "not applied"},
				{key: "storage.options.pull_options", msg: "ignored"},
			},
		},
		{
			name: "distro-default.conf",
			data: readTestdata(t, "distro-default.conf"),
			want: Options{
				RunRoot: "/run/containers/storage", GraphRoot: "/var/lib/containers/storage", GraphDriverName: "overlay",
				GraphDriverOptions: []string{"overlay.mountopt=nodev"},
			},
			warns: []warn{
				{key: "storage.options.overlay.mountopt", msg: "not applied"},
				{key: "storage.options.pull_options", msg: "ignored: pulls are containerd's"},
			},
		},
		{
			// $HOME and $UID expanded, as containers/storage does for
			// the roots.
			name: "per-user-roots.conf",
			data: readTestdata(t, "per-user-roots.conf"),
			want: Options{
				RunRoot: "/home/u/" + uid + "/containers/storage", GraphRoot: "/home/u/" + uid + "/containers/storage",
				GraphDriverOptions: []string{"overlay.mountopt=nodev"},
			},
			warns: []warn{
				{key: "storage.rootless_storage_path", msg: "does not support rootless_storage_path"},
				{key: "storage.options.overlay.mountopt"},
				{key: "storage.options.remap-uids", msg: "refuses ID mappings"},
				{key: "storage.options.remap-gids", msg: "refuses ID mappings"},
			},
		},
		{
			// Keys in the wrong table are unknown, with their lines.
			name: "misplaced-keys.conf",
			data: readTestdata(t, "misplaced-keys.conf"),
			want: Options{RunRoot: "/run/containers/test"},
			warns: []warn{
				{key: "foo", line: 3, msg: "unknown option"},
				{key: "storage.options.graphroot", line: 12, msg: "unknown option"},
			},
		},
		{
			name: "shared",
			data: sharedConf,
			want: Options{
				RunRoot: "/run/cs", GraphRoot: "/srv/cs/graph", ImageStore: "/srv/cs/images", GraphDriverName: "overlay",
				ROImageStores:  []string{"/mnt/nfs/images", "/mnt/ro/images"},
				TransientStore: true,
				GraphDriverOptions: []string{
					"overlay.mountopt=nodev,metacopy=on", "overlay.ignore_chown_errors=true", "overlay.force_mask=700",
				},
			},
			warns: []warn{
				{key: "storage.rootless_storage_path"},
				{key: "storage.options.imagestore", msg: "[storage] imagestore"},
				{key: "storage.options.additionallayerstores", msg: "does not support additional layer stores"},
				{key: "storage.options.overlay.mountopt"},
				{key: "storage.options.overlay.ignore_chown_errors", msg: "only check"},
				{key: "storage.options.force_mask", msg: "not applied to files"},
				{key: "storage.options.size", msg: "does not support size (no quotas)"},
				{key: "storage.options.overlay.inodes"},
				{key: "storage.options.overlay.skip_mount_home"},
				{key: "storage.options.remap-uids"},
				{key: "storage.options.remap-user"},
				{key: "storage.options.auto-userns-max-size"},
				{key: "storage.options.disable-volatile"},
				{key: "storage.options.btrfs.min_space", msg: "btrfs driver"},
				{key: "storage.options.zfs.fsname", msg: "zfs driver"},
			},
		},
		{
			name: "unknown keys",
			data: "[storage]\ndriver = \"overlay\"\nuse_composefs = true\n\n[storage.options.overlay]\nuse_composefs = \"true\"\n[storage.options.overlay.extra]\nx = 1\n[other]\na = 1\n",
			want: Options{GraphDriverName: "overlay"},
			warns: []warn{
				{key: "storage.use_composefs", line: 3, msg: "unknown option, ignored"},
				{key: "storage.options.overlay.use_composefs", line: 6},
				{key: "storage.options.overlay.extra", line: 7},
				{key: "other", line: 9},
			},
		},
		{
			name: "general options when the overlay table has none",
			data: "[storage.options]\nmountopt = \"nodev\"\nignore_chown_errors = \"false\"\nmount_program = \"/usr/bin/fuse-overlayfs\"\n[storage.options.overlay]\nforce_mask = \"shared\"\n",
			want: Options{GraphDriverOptions: []string{"overlay.mountopt=nodev", "overlay.ignore_chown_errors=false", "overlay.force_mask=shared"}},
			warns: []warn{
				{key: "storage.options.mountopt"},
				{key: "storage.options.ignore_chown_errors"},
				{key: "storage.options.overlay.force_mask"},
				{key: "storage.options.mount_program", msg: "ignored: cs-snapshotter does not support mount_program (kernel overlayfs only)"},
			},
		},
		{
			name: "driver_priority with overlay",
			data: "[storage]\ndriver_priority = [\"btrfs\", \"overlay\"]\n",
		},
		{
			name: "empty values set nothing",
			data: "[storage]\ndriver = \"\"\nimagestore = \"\"\n[storage.options]\nadditionalimagestores = []\nmount_program = \"\"\nsize = \"\"\n[storage.options.overlay]\nmountopt = \"\"\n[storage.options.vfs]\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("/etc/containers/storage.conf", []byte(tc.data))
			if err != nil {
				t.Fatal(err)
			}
			if c.File != "/etc/containers/storage.conf" {
				t.Errorf("File %q", c.File)
			}
			if !reflect.DeepEqual(c.Options, tc.want) {
				t.Errorf("options\n got %+v\nwant %+v", c.Options, tc.want)
			}
			if len(c.Warnings) != len(tc.warns) {
				t.Errorf("%d warnings, want %d:\n%s", len(c.Warnings), len(tc.warns), warnings(c))
			}
			for i, w := range tc.warns {
				if i >= len(c.Warnings) {
					break
				}
				got := c.Warnings[i]
				if got.Key != w.key || got.Line != w.line || !strings.Contains(got.Msg, w.msg) || got.File != c.File {
					t.Errorf("warning %d: %s; want key %s line %d saying %q", i, got, w.key, w.line, w.msg)
				}
				if s := got.String(); !strings.HasPrefix(s, c.File+":") || !strings.Contains(s, w.key+": ") {
					t.Errorf("warning %d: %q does not name the file and the key", i, s)
				}
			}
		})
	}
}

func warnings(c *Config) string {
	var b strings.Builder
	for _, w := range c.Warnings {
		b.WriteString("  " + w.String() + "\n")
	}
	return b.String()
}

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		line       int
		key        string
		msg        string // the whole error's text contains it
	}{
		{"unterminated string", "[storage]\n\ndriver = \"overlay\n", 3, "", "/etc/s.conf:3:"},
		{"no value", "[storage]\ngraphroot =\n", 2, "", "/etc/s.conf:2:"},
		{"duplicate key", "[storage]\ndriver = \"overlay\"\ndriver = \"overlay\"\n", 3, "driver", "/etc/s.conf:3:1: driver: key driver is already defined"},
		{"duplicate table", "[storage]\n[storage]\n", 2, "storage", "/etc/s.conf:2:"},
		{"string for array", "[storage.options]\nadditionalimagestores = \"/a,/b\"\n", 2, "storage.options.additionalimagestores",
			"storage.options.additionalimagestores: want an array of strings, not a TOML string"},
		{"bool as string", "[storage]\ntransient_store = \"true\"\n", 2, "storage.transient_store", "want a boolean, not a TOML string"},
		{"bool for string", "[storage.options.overlay]\nignore_chown_errors = true\n", 2, "storage.options.overlay.ignore_chown_errors", "want a string, not a TOML boolean"},
		{"negative mask", "[storage.options]\nforce_mask = -1\n", 2, "storage.options.force_mask", "negative"},
		{"pull_options not strings", "[storage.options]\npull_options = {enable_partial_images = true}\n", 2, "storage.options.pull_options", "want a string"},
		{"storage not a table", "storage = 1\n", 1, "storage", "storage: want a table, not a TOML integer"},
		{"options not a table", "[storage]\noptions = \"x\"\n", 2, "storage.options", "want a table, not a TOML string"},
		{"overlay not a table", "[storage.options]\noverlay = []\n", 2, "storage.options.overlay", "want a table, not a TOML array"},
		{"thinpool not a table", "[storage.options]\nthinpool = 1\n", 2, "storage.options.thinpool", "want a table, not a TOML integer"},
		{"vfs", "[storage]\ndriver = \"vfs\"\n", 0, "storage.driver", `/etc/s.conf: storage.driver: storage driver "vfs" is not supported: cs-snapshotter stores layers with overlay only`},
		{"btrfs", "[storage]\ndriver = \"btrfs\"\ngraphroot = \"/x\"\n", 0, "storage.driver", `"btrfs" is not supported`},
		{"driver_priority without overlay", "[storage]\ndriver_priority = [\"btrfs\", \"vfs\"]\n", 0, "storage.driver_priority", "overlay only"},
		{"imagestore is graphroot", "[storage]\ngraphroot = \"/g\"\nimagestore = \"/g\"\n", 0, "storage.imagestore", "must either be not set or be a different than graphroot"},
		{"ignore_chown_errors not a boolean", "[storage.options.overlay]\nignore_chown_errors = \"yes please\"\n", 0, "storage.options.overlay.ignore_chown_errors", "not a boolean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("/etc/s.conf", []byte(tc.data))
			if err == nil {
				t.Fatalf("no error; options %+v", c.Options)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%T %v, want *Error", err, err)
			}
			if e.File != "/etc/s.conf" || e.Line != tc.line || e.Key != tc.key {
				t.Errorf("%q: file %q line %d key %q; want line %d key %q", err, e.File, e.Line, e.Key, tc.line, tc.key)
			}
			if !strings.HasPrefix(err.Error(), "/etc/s.conf") || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("%q does not name the file or say %q", err, tc.msg)
			}
			if strings.Contains(err.Error(), "struct") {
				t.Errorf("%q: Go types in the message", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "storage.conf")
	if err := os.WriteFile(p, []byte("[storage]\ngraphroot = \""+dir+"/g\"\nbogus = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.File != p || c.Options.GraphRoot != dir+"/g" || len(c.Warnings) != 1 || c.Warnings[0].String() != p+":3: storage.bogus: unknown option, ignored" {
		t.Errorf("%+v", c)
	}
	if _, err := Load(filepath.Join(dir, "missing.conf")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if err := os.WriteFile(p, []byte("[storage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.HasPrefix(err.Error(), p+":1:") {
		t.Errorf("bad file: %v", err)
	}
}

func TestFind(t *testing.T) {
	type env map[string]string
	for _, tc := range []struct {
		name    string
		env     env
		exists  []string
		statErr error
		want    string
		err     bool
	}{
		{name: "env wins", env: env{EnvVar: "/my/storage.conf"}, exists: []string{OverrideFile, SystemFile}, want: "/my/storage.conf"},
		{name: "env names a missing file", env: env{EnvVar: "/missing.conf"}, want: "/missing.conf"},
		{name: "override", exists: []string{OverrideFile, SystemFile}, want: OverrideFile},
		{name: "system", exists: []string{SystemFile}, want: SystemFile},
		{name: "none", want: ""},
		{name: "XDG_CONFIG_HOME is for rootless", env: env{"XDG_CONFIG_HOME": "/home/u/.config"}, exists: []string{SystemFile, "/home/u/.config/containers/storage.conf"}, want: SystemFile},
		{name: "stat fails", statErr: fs.ErrPermission, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			stat := func(p string) (fs.FileInfo, error) {
				if tc.statErr != nil {
					return nil, &fs.PathError{Op: "stat", Path: p, Err: tc.statErr}
				}
				for _, e := range tc.exists {
					if e == p {
						return nil, nil
					}
				}
				return nil, &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
			}
			got, err := Find(lookup, stat)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("Find: %q, %v; want %q (error: %v)", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestLoadDefaultEnv(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.conf")
	if err := os.WriteFile(p, []byte("[storage]\nrunroot = \"/r\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvVar, p)
	c, err := LoadDefault()
	if err != nil || c == nil || c.File != p || c.Options.RunRoot != "/r" {
		t.Fatalf("%+v, %v", c, err)
	}
	t.Setenv(EnvVar, filepath.Join(dir, "missing.conf"))
	if _, err := LoadDefault(); err == nil || !strings.Contains(err.Error(), "$"+EnvVar) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing $%s file: %v", EnvVar, err)
	}
}

func TestIsContainersStorageRoot(t *testing.T) {
	dir := t.TempDir()
	if IsContainersStorageRoot(dir) {
		t.Error("empty dir")
	}
	if err := os.MkdirAll(filepath.Join(dir, "overlay-images"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "overlay-images", "images.json"), []byte("[]"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !IsContainersStorageRoot(dir) {
		t.Error("containers/storage root not seen")
	}
}

// FuzzStorageConf: any input is either a Config whose options are ones
// the store can take, or an *Error naming the file; never a panic.
func FuzzStorageConf(f *testing.F) {
	f.Add([]byte(fedoraConf))
	f.Add([]byte(sharedConf))
	f.Add([]byte("[storage]\ndriver = \"vfs\"\n"))
	f.Add([]byte("[storage.options]\nforce_mask = 0o755\npull_options = {a = \"b\"}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.conf", data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.File != "f.conf" || !strings.HasPrefix(err.Error(), "f.conf") {
				t.Fatalf("error %T %q does not name the file", err, err)
			}
			return
		}
		if c.File != "f.conf" {
			t.Fatalf("File %q", c.File)
		}
		o := c.Options
		if o.GraphDriverName != "" && o.GraphDriverName != "overlay" {
			t.Fatalf("driver %q", o.GraphDriverName)
		}
		if o.ImageStore != "" && o.ImageStore == o.GraphRoot {
			t.Fatalf("imagestore %q is the graph root", o.ImageStore)
		}
		for _, p := range o.ROImageStores {
			if p == "" {
				t.Fatal("empty additional image store")
			}
		}
		for _, opt := range o.GraphDriverOptions {
			if !strings.HasPrefix(opt, "overlay.") || !strings.Contains(opt, "=") {
				t.Fatalf("driver option %q", opt)
			}
		}
		for _, w := range c.Warnings {
			if w.File != "f.conf" || w.Key == "" || w.Msg == "" {
				t.Fatalf("warning %+v", w)
			}
		}
		// The same input gives the same answer.
		c2, err := Parse("f.conf", data)
		if err != nil || !reflect.DeepEqual(c, c2) {
			t.Fatalf("second parse: %+v, %v; first %+v", c2, err, c)
		}
	})
}
