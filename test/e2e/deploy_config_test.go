package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

// TestDeployConfigRuns: the containerd configs shipped in deploy/ (for
// ctr/nerdctl and the Kubernetes drop-in), loaded as they are by a real
// containerd, with only the paths of this test run put in: an image
// imports through cs and a container runs.
func TestDeployConfigRuns(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	for _, file := range []string{"containerd-cs.toml", "kubernetes/containerd-config.toml"} {
		t.Run(file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("..", "..", "deploy", file))
			if err != nil {
				t.Fatal(err)
			}
			cfg := string(data)
			for old, new := range map[string]string{
				`"/run/cs-snapshotter/cs-snapshotter.sock"`: `"` + e.CSSocket + `"`,
				`root = "/var/lib/cs-snapshotter"`:          `root = "` + e.CSRoot + `"`,
				`platform = "linux/amd64"`:                  `platform = "` + DefaultPlatform() + `"`,
			} {
				if !strings.Contains(cfg, old) {
					t.Fatalf("deploy/%s no longer has %s", file, old)
				}
				cfg = strings.ReplaceAll(cfg, old, new)
			}
			// What a node's own config has besides the snippet: where
			// containerd keeps its state and listens.
			cfg = strings.Replace(cfg, "version = 3\n", "version = 3\nroot = \""+e.CtrdRoot+"\"\nstate = \""+e.CtrdState+"\"\n", 1)
			cfg += "\n[grpc]\n  address = \"" + e.CtrdSocket + "\"\n\n[plugins.\"io.containerd.cri.v1.runtime\"]\n  restrict_oom_score_adj = true\n"
			if _, err := e.ctrd.stop(stopTimeout); err != nil {
				t.Fatalf("stopping containerd: %v", err)
			}
			if err := os.WriteFile(e.CtrdConfig, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			e.startContainerd()
			e.ImportImage(imageArchive)
			out := e.MustCtr("run", "--rm", "--snapshotter", "cs", imageName, e.ID("deploy"), "cat", imagebuild.HelloPath)
			wantOutput(t, "ctr run with deploy/"+file, out, imagebuild.HelloText)
			e.MustCtr("images", "rm", "--sync", imageName)
		})
	}
}
