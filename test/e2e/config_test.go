package e2e

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
)

// TestContainerdConfig parses the rendered config with containerd's own
// config loader and checks every key the template sets.
func TestContainerdConfig(t *testing.T) {
	dir := t.TempDir()
	in := ContainerdConfig{
		Root:     "/x/containerd-root",
		State:    "/x/containerd-state",
		Address:  "/x/containerd.sock",
		CSSocket: "/x/cs.sock",
		CSRoot:   "/x/cs-root",
		Platform: "linux/amd64",
	}
	text, err := in.Render()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var cfg srvconfig.Config
	if err := srvconfig.LoadConfig(context.Background(), path, &cfg); err != nil {
		t.Fatalf("containerd cannot load the config: %v\n%s", err, text)
	}
	if cfg.Version != 3 || cfg.Root != in.Root || cfg.State != in.State || cfg.GRPC.Address != in.Address {
		t.Errorf("version/root/state/grpc: %d %q %q %q", cfg.Version, cfg.Root, cfg.State, cfg.GRPC.Address)
	}
	if !reflect.DeepEqual(cfg.DisabledPlugins, []string{"io.containerd.content.v1.content"}) {
		t.Errorf("disabled_plugins = %v", cfg.DisabledPlugins)
	}
	want := map[string]srvconfig.ProxyPlugin{
		"cs":         {Type: "snapshot", Address: in.CSSocket, Exports: map[string]string{"root": in.CSRoot, "enable_remote_snapshot_annotations": "true"}, Capabilities: []string{"rebase"}},
		"cs-content": {Type: "content", Address: in.CSSocket},
		"cs-diff":    {Type: "diff", Address: in.CSSocket},
	}
	if !reflect.DeepEqual(cfg.ProxyPlugins, want) {
		t.Errorf("proxy_plugins = %+v, want %+v", cfg.ProxyPlugins, want)
	}

	transfer, ok := cfg.Plugins["io.containerd.transfer.v1.local"].(map[string]any)
	if !ok {
		t.Fatalf("no transfer plugin config: %#v", cfg.Plugins)
	}
	ucs, ok := transfer["unpack_config"].([]any)
	if !ok || len(ucs) != 1 {
		t.Fatalf("unpack_config = %#v", transfer["unpack_config"])
	}
	uc := ucs[0].(map[string]any)
	if uc["platform"] != "linux/amd64" || uc["snapshotter"] != "cs" || uc["differ"] != "cs-diff" {
		t.Errorf("unpack_config[0] = %v", uc)
	}
	if ds, ok := cfg.Plugins["io.containerd.service.v1.diff-service"].(map[string]any); !ok || !reflect.DeepEqual(ds["default"], []any{"cs-diff", "walking"}) {
		t.Errorf("diff service config = %#v", cfg.Plugins["io.containerd.service.v1.diff-service"])
	}
	if images, ok := cfg.Plugins["io.containerd.cri.v1.images"].(map[string]any); !ok || images["snapshotter"] != "cs" {
		t.Errorf("cri images config = %#v", cfg.Plugins["io.containerd.cri.v1.images"])
	}
	cri, ok := cfg.Plugins["io.containerd.cri.v1.runtime"].(map[string]any)
	if !ok || cri["restrict_oom_score_adj"] != true {
		t.Errorf("cri runtime config = %#v", cfg.Plugins["io.containerd.cri.v1.runtime"])
	}

	if _, err := (ContainerdConfig{Root: `/a"b`, State: "/s", Address: "/a", CSSocket: "/c", CSRoot: "/r"}).Render(); err == nil {
		t.Error("a path with a quote should be rejected")
	}
	if _, err := (ContainerdConfig{Root: "/r"}).Render(); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("missing fields: %v", err)
	}
}
