package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaults(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Address(), "/run/cs-snapshotter/cs-snapshotter.sock"; got != want {
		t.Errorf("address %q, want %q", got, want)
	}
	if m, _ := c.GRPC.FileMode(); m != 0o600 {
		t.Errorf("mode %o, want 600", m)
	}
}

func TestLoadMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.toml")
	c, err := Load(missing, false)
	if err != nil {
		t.Fatalf("absent default file: %v", err)
	}
	if c.Root != DefaultRoot {
		t.Errorf("root %q", c.Root)
	}
	if _, err := Load(missing, true); err == nil {
		t.Error("a file the user named must exist")
	}
}

// TestExampleIsDefault keeps config.toml.example honest: it parses, and
// every value it sets is the default.
func TestExampleIsDefault(t *testing.T) {
	data, err := os.ReadFile("../config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	c := Default()
	if err := Parse(data, &c); err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.Root != d.Root || c.RunRoot != d.RunRoot || c.LogLevel != d.LogLevel || c.GRPC != d.GRPC ||
		len(c.Snapshotter.MountOptions) != 0 || len(c.AdditionalImageStores) != 0 || c.ImageStore != "" || c.Snapshotter.AsyncRemove != d.Snapshotter.AsyncRemove ||
		c.Snapshotter.MaxLayerSize != d.Snapshotter.MaxLayerSize ||
		c.Metrics != d.Metrics || c.Debug != d.Debug {
		t.Errorf("example differs from defaults:\n%+v\n%+v", c, d)
	}
}

func TestParse(t *testing.T) {
	c := Default()
	err := Parse([]byte(`
root = "/srv/cs"
additional_image_stores = ["/srv/shared", "/mnt/nfs/images"]
[grpc]
address = "/srv/cs.sock"
gid = 42
mode = "0660"
[snapshotter]
mount_options = ["volatile"]
async_remove = true
max_layer_size = 107374182400
[metrics]
address = "127.0.0.1:9100"
[debug]
address = "/run/cs-debug.sock"
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Root != "/srv/cs" || c.Address() != "/srv/cs.sock" || c.GRPC.GID != 42 || c.GRPC.UID != -1 ||
		c.Snapshotter.MountOptions[0] != "volatile" || !c.Snapshotter.AsyncRemove || c.RunRoot != DefaultRunRoot ||
		c.Snapshotter.MaxLayerSize != 100<<30 ||
		len(c.AdditionalImageStores) != 2 || c.AdditionalImageStores[1] != "/mnt/nfs/images" ||
		c.Metrics.Address != "127.0.0.1:9100" || c.Debug.Address != "/run/cs-debug.sock" {
		t.Errorf("parsed %+v", c)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"[grpc]\nadress = \"/x\"\n", `unknown key "grpc.adress" (line 2)`},
		{"rooot = \"/x\"\n", `unknown key "rooot" (line 1)`},
		{"root = 3\n", "line 1"},
		{"root = \"relative\"\n", `root must be an absolute path, got "relative"`},
		{"[grpc]\nmode = \"rw\"\n", `grpc.mode must be octal`},
		{"[grpc]\nmode = \"01777\"\n", `grpc.mode must be octal`},
		{"[grpc]\naddress = \"x.sock\"\n", `grpc.address must be an absolute path`},
		{"root = \n", "line 1"},
		{"[metrics]\naddress = \"metrics.sock\"\n", `metrics.address must be host:port or an absolute socket path, got "metrics.sock"`},
		{"[metrics]\nadress = \"x\"\n", `unknown key "metrics.adress" (line 2)`},
		{"[debug]\naddress = \"localhost:6060\"\n", `debug.address must be an absolute socket path, got "localhost:6060"`},
		{"additional_image_stores = [\"srv/shared\"]\n", `additional_image_stores: each must be an absolute path, got "srv/shared"`},
		{"additional_image_stores = [\"\"]\n", `additional_image_stores: each must be an absolute path, got ""`},
		{"root = \"/srv/cs\"\nadditional_image_stores = [\"/srv/cs/\"]\n", `additional_image_stores: "/srv/cs/" is the root itself`},
		{"additional_image_stores = [\"/a\", \"/b\", \"/a\"]\n", `additional_image_stores: "/a" is listed twice`},
		{"additional_image_stores = \"/a\"\n", "line 1"},
		{"image_store = \"images\"\n", `image_store must be an absolute path, got "images"`},
		{"root = \"/srv/cs\"\nimage_store = \"/srv/cs\"\n", `image_store: "/srv/cs" is the root itself`},
		{"image_store = \"/a\"\nadditional_image_stores = [\"/a\"]\n", `image_store: "/a" is also in additional_image_stores`},
		{"[snapshotter]\nmax_layer_size = -1\n", `snapshotter.max_layer_size must be a number of bytes, 0 for no limit, got -1`},
		{"[snapshotter]\nmax_layer_size = \"10G\"\n", "line 2"},
		{"[snapshotter]\nmax_layer_size = 1e12\n", "line 2"},
	} {
		c := Default()
		err := Parse([]byte(tc.doc), &c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.doc, err, tc.want)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error spans lines: %q", tc.doc, err)
		}
	}
}
