// Package e2e holds cs-snapshotter's end-to-end tests: a real
// `cs-snapshotter serve`, a real containerd v2 using it as its `cs`
// snapshotter and its content store (proxy plugins), and ctr, nerdctl and
// runc driving them. See harness_test.go for the harness and test/README.md
// for how to run them.
package e2e

import (
	_ "embed"
	"fmt"
	"runtime"
	"strings"
	"text/template"
)

// containerdConfigTemplate is the containerd configuration the tests, the
// demo (scripts/demo.sh fills the same file with sed) and the README use.
//
//go:embed testdata/containerd.toml.tmpl
var containerdConfigTemplate string

// ContainerdConfig holds the values for the containerd config template.
type ContainerdConfig struct {
	Root     string // containerd's root directory
	State    string // containerd's state directory
	Address  string // containerd's gRPC socket
	CSSocket string // cs-snapshotter's socket (snapshots and content)
	CSRoot   string // cs-snapshotter's root directory (exported to the CRI)
	Platform string // unpack platform, e.g. linux/amd64; default the host's
}

// DefaultPlatform is the host platform in containerd's notation.
func DefaultPlatform() string { return "linux/" + runtime.GOARCH }

// Render returns the containerd config (version 3) that makes containerd
// use cs-snapshotter as snapshotter "cs" and as its content store.
func (c ContainerdConfig) Render() (string, error) {
	if c.Platform == "" {
		c.Platform = DefaultPlatform()
	}
	for name, v := range map[string]string{"Root": c.Root, "State": c.State, "Address": c.Address, "CSSocket": c.CSSocket, "CSRoot": c.CSRoot} {
		if v == "" {
			return "", fmt.Errorf("containerd config: %s is empty", name)
		}
		if strings.ContainsAny(v, "\"\\\n") {
			return "", fmt.Errorf("containerd config: %s %q contains a character that needs TOML escaping", name, v)
		}
	}
	tmpl, err := template.New("containerd.toml").Option("missingkey=error").Parse(containerdConfigTemplate)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, c); err != nil {
		return "", err
	}
	return b.String(), nil
}

// baselineConfig is a containerd config without cs-snapshotter, for
// CS_E2E_BASELINE=1 runs that check the harness (and compare behaviour)
// with containerd's builtin overlayfs snapshotter and content store.
const baselineConfig = `version = 3
root = "{{.Root}}"
state = "{{.State}}"

[grpc]
  address = "{{.Address}}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
`

func (c ContainerdConfig) renderBaseline() (string, error) {
	tmpl, err := template.New("baseline.toml").Parse(baselineConfig)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, c); err != nil {
		return "", err
	}
	return b.String(), nil
}
