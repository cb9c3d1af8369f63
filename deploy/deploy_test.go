// Package deploy holds the files that install cs-snapshotter as a service:
// systemd units, containerd's configuration, a Kubernetes DaemonSet. Its
// tests parse each of them.
package deploy

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/coreos/go-systemd/v22/unit"
	"go.yaml.in/yaml/v3"

	"github.com/cs-snapshotter/cs-snapshotter/config"
)

// unitFile parses a systemd unit into section → key → values.
func unitFile(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	u := map[string]map[string][]string{}
	for _, o := range opts {
		if u[o.Section] == nil {
			u[o.Section] = map[string][]string{}
		}
		u[o.Section][o.Name] = append(u[o.Section][o.Name], o.Value)
	}
	return u
}

func want(t *testing.T, u map[string]map[string][]string, section, key, value string) {
	t.Helper()
	if got := u[section][key]; !reflect.DeepEqual(got, []string{value}) {
		t.Errorf("[%s] %s = %q, want %q", section, key, got, value)
	}
}

func TestServiceUnit(t *testing.T) {
	u := unitFile(t, "cs-snapshotter.service")
	want(t, u, "Service", "Type", "notify")
	want(t, u, "Service", "ExecStart", "/usr/local/bin/cs-snapshotter serve")
	want(t, u, "Service", "Restart", "always")
	want(t, u, "Unit", "Before", "containerd.service")
	want(t, u, "Install", "WantedBy", "multi-user.target")
	// These give the service its own mount namespace, hide /var/lib or
	// /run, or strip setuid bits from layers: each breaks the daemon.
	for _, key := range []string{
		"PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateMounts", "PrivateDevices",
		"ProtectKernelModules", "ProtectKernelTunables", "ProtectKernelLogs", "ProtectControlGroups",
		"ProtectProc", "ProtectHostname", "ProtectClock", "MountFlags", "ReadOnlyPaths", "ReadWritePaths",
		"InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "RootDirectory",
		"DynamicUser", "RestrictSUIDSGID", "PrivateUsers", "User", "CapabilityBoundingSet",
	} {
		if v, ok := u["Service"][key]; ok {
			t.Errorf("[Service] %s = %q would break overlay mounts or layers", key, v)
		}
	}
	// Whoever stops cs-snapshotter must not stop containerd with it.
	for _, key := range []string{"RequiredBy", "BindsTo", "PartOf"} {
		if v, ok := u["Install"][key]; ok {
			t.Errorf("[Install] %s = %q", key, v)
		}
	}
	want(t, u, "Service", "StateDirectory", "cs-snapshotter")
	want(t, u, "Service", "RuntimeDirectory", "cs-snapshotter")
	if "/var/lib/cs-snapshotter" != config.DefaultRoot || "/run/cs-snapshotter" != config.DefaultRunRoot {
		t.Errorf("StateDirectory/RuntimeDirectory no longer the default root %s and run root %s", config.DefaultRoot, config.DefaultRunRoot)
	}
}

func TestSocketUnit(t *testing.T) {
	u := unitFile(t, "cs-snapshotter.socket")
	c := config.Default()
	want(t, u, "Socket", "ListenStream", c.Address())
	want(t, u, "Socket", "SocketMode", c.GRPC.Mode)
	want(t, u, "Unit", "PartOf", "cs-snapshotter.service")
	want(t, u, "Unit", "Before", "containerd.service")
	want(t, u, "Install", "WantedBy", "sockets.target")
}

func loadContainerd(t *testing.T, path string) *srvconfig.Config {
	t.Helper()
	var cfg srvconfig.Config
	if err := srvconfig.LoadConfig(context.Background(), path, &cfg); err != nil {
		t.Fatalf("containerd cannot load %s: %v", path, err)
	}
	if cfg.Version != 3 {
		t.Errorf("%s: version %d, want 3", path, cfg.Version)
	}
	return &cfg
}

// checkContainerd checks what both containerd configurations set.
func checkContainerd(t *testing.T, cfg *srvconfig.Config) {
	t.Helper()
	def := config.Default()
	sock := def.Address()
	if !reflect.DeepEqual(cfg.DisabledPlugins, []string{"io.containerd.content.v1.content"}) {
		t.Errorf("disabled_plugins = %v", cfg.DisabledPlugins)
	}
	wantPlugins := map[string]srvconfig.ProxyPlugin{
		"cs":         {Type: "snapshot", Address: sock, Exports: map[string]string{"root": config.DefaultRoot, "enable_remote_snapshot_annotations": "true"}, Capabilities: []string{"rebase"}},
		"cs-content": {Type: "content", Address: sock},
		"cs-diff":    {Type: "diff", Address: sock},
	}
	if !reflect.DeepEqual(cfg.ProxyPlugins, wantPlugins) {
		t.Errorf("proxy_plugins = %+v, want %+v", cfg.ProxyPlugins, wantPlugins)
	}
	if ds, ok := cfg.Plugins["io.containerd.service.v1.diff-service"].(map[string]any); !ok || !reflect.DeepEqual(ds["default"], []any{"cs-diff", "walking"}) {
		t.Errorf("diff service = %#v", cfg.Plugins["io.containerd.service.v1.diff-service"])
	}
	transfer, _ := cfg.Plugins["io.containerd.transfer.v1.local"].(map[string]any)
	ucs, _ := transfer["unpack_config"].([]any)
	if len(ucs) != 1 {
		t.Fatalf("unpack_config = %#v", transfer["unpack_config"])
	}
	if uc, _ := ucs[0].(map[string]any); uc["snapshotter"] != "cs" || uc["differ"] != "cs-diff" || uc["platform"] == "" {
		t.Errorf("unpack_config[0] = %v", uc)
	}
	if images, ok := cfg.Plugins["io.containerd.cri.v1.images"].(map[string]any); !ok || images["snapshotter"] != "cs" {
		t.Errorf("cri images = %#v", cfg.Plugins["io.containerd.cri.v1.images"])
	}
}

// TestContainerdConfig: containerd-cs.toml loads in containerd and is,
// below its version line, exactly README.md's snippet.
func TestContainerdConfig(t *testing.T) {
	checkContainerd(t, loadContainerd(t, "containerd-cs.toml"))

	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	i := strings.Index(text, "## containerd configuration")
	if i < 0 {
		t.Fatal("README.md has no containerd configuration section")
	}
	text = text[i:]
	j := strings.Index(text, "```toml\n")
	if j < 0 {
		t.Fatal("no toml block in README.md's containerd configuration")
	}
	text = text[j+len("```toml\n"):]
	snippet := text[:strings.Index(text, "```\n")]
	file, err := os.ReadFile("containerd-cs.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := strings.Cut(string(file), "version = 3\n\n")
	if !ok || body != snippet {
		t.Errorf("containerd-cs.toml differs from README.md's snippet:\n%s\n---\n%s", body, snippet)
	}
}

func TestKubernetesContainerdConfig(t *testing.T) {
	checkContainerd(t, loadContainerd(t, "kubernetes/containerd-config.toml"))
}

func TestDaemonSet(t *testing.T) {
	data, err := os.ReadFile("kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Spec       struct {
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
			Template struct {
				Metadata struct {
					Labels map[string]string `yaml:"labels"`
				} `yaml:"metadata"`
				Spec struct {
					Containers []struct {
						Name            string   `yaml:"name"`
						Image           string   `yaml:"image"`
						Command         []string `yaml:"command"`
						Args            []string `yaml:"args"`
						SecurityContext struct {
							Privileged bool `yaml:"privileged"`
						} `yaml:"securityContext"`
						VolumeMounts []struct {
							Name             string `yaml:"name"`
							MountPath        string `yaml:"mountPath"`
							MountPropagation string `yaml:"mountPropagation"`
						} `yaml:"volumeMounts"`
					} `yaml:"containers"`
					Volumes []struct {
						Name     string `yaml:"name"`
						HostPath *struct {
							Path string `yaml:"path"`
							Type string `yaml:"type"`
						} `yaml:"hostPath"`
					} `yaml:"volumes"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(data, &ds); err != nil {
		t.Fatal(err)
	}
	if ds.APIVersion != "apps/v1" || ds.Kind != "DaemonSet" {
		t.Fatalf("apiVersion %q kind %q", ds.APIVersion, ds.Kind)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod labels %v", k, v, ds.Spec.Template.Metadata.Labels)
		}
	}
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !c.SecurityContext.Privileged {
		t.Error("the daemon container is not privileged: it cannot mount overlays")
	}
	if len(c.Command) < 2 || c.Command[len(c.Command)-1] != "serve" {
		t.Errorf("command %q does not run serve", c.Command)
	}
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	// The root and the run root are the host's, at the same paths inside,
	// with mounts propagating both ways.
	for _, dir := range []string{config.DefaultRoot, config.DefaultRunRoot} {
		found := false
		for _, m := range c.VolumeMounts {
			if m.MountPath != dir {
				continue
			}
			found = true
			if hostPaths[m.Name] != dir {
				t.Errorf("%s is volume %q, hostPath %q, want hostPath %s", dir, m.Name, hostPaths[m.Name], dir)
			}
			if m.MountPropagation != "Bidirectional" {
				t.Errorf("%s: mountPropagation %q, want Bidirectional", dir, m.MountPropagation)
			}
		}
		if !found {
			t.Errorf("no volume mounted at %s", dir)
		}
	}
	for _, a := range c.Args {
		for _, flag := range []string{"--root=", "--run-root="} {
			if v, ok := strings.CutPrefix(a, flag); ok && v != config.DefaultRoot && v != config.DefaultRunRoot {
				t.Errorf("%s: not the mounted directory", a)
			}
		}
	}
}
