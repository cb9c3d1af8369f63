package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLISeesContainerd: the CLI, on the daemon's root or through
// containerd itself, lists the image containerd imported and the
// container containerd made.
func TestCLISeesContainerd(t *testing.T) {
	if baseline {
		t.Skip("the CLI needs cs-snapshotter")
	}
	e := NewEnv(t)
	e.ImportImage(imageArchive)
	ctrID := e.ID("faces")
	e.MustCtr("containers", "create", "--snapshotter", e.Snapshotter, imageName, ctrID, "true")
	defer e.Ctr("containers", "rm", ctrID)
	imageID := image.Config.Digest.Encoded()

	cli := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := exec.Command(csBin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("cs-snapshotter %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for _, face := range []struct {
		name  string
		flags []string
	}{
		{"daemon root", []string{"--graph", e.CSRoot, "--run", filepath.Join(e.Dir, "cli-run")}},
		{"through containerd", []string{"--containerd", e.CtrdSocket, "--containerd-namespace", "default", "--graph", filepath.Join(e.Dir, "cli-graph"), "--run", filepath.Join(e.Dir, "cli-run2")}},
	} {
		t.Run(face.name, func(t *testing.T) {
			var images []struct {
				ID    string   `json:"id"`
				Names []string `json:"names"`
			}
			if err := json.Unmarshal([]byte(cli(t, append(face.flags, "images", "--json")...)), &images); err != nil {
				t.Fatal(err)
			}
			found := false
			for _, i := range images {
				found = found || i.ID == imageID
			}
			if !found {
				t.Errorf("cs-snapshotter images lacks containerd's image %s: %+v", imageID, images)
			}
			var ctrs []struct {
				ID      string   `json:"id"`
				Names   []string `json:"names"`
				ImageID string   `json:"image"`
			}
			if err := json.Unmarshal([]byte(cli(t, append(face.flags, "containers", "--json")...)), &ctrs); err != nil {
				t.Fatal(err)
			}
			found = false
			for _, c := range ctrs {
				if len(c.Names) > 0 && (c.Names[0] == ctrID || strings.HasSuffix(c.Names[0], "/"+ctrID)) {
					found = true
					if c.ImageID != imageID {
						t.Errorf("containerd's container %s: image %q, want %s", ctrID, c.ImageID, imageID)
					}
				}
			}
			if !found {
				t.Errorf("cs-snapshotter containers lacks containerd's container %s: %+v", ctrID, ctrs)
			}
		})
	}
}
