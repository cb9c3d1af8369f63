package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

// TestReadOnlyImageStore: one host (the seed) imports images into its
// root; a node whose daemon has that root as an additional read-only image
// store publishes them into its own containerd and runs containers from
// them (ctr and nerdctl), with nothing copied: the layers are the seed's
// files, containers write in the node's root, the seed's root is never
// written, and an image the seed adds later is there without a restart.
// containerd's GC on the node then removes the mirrors, not the seed's
// layers.
func TestReadOnlyImageStore(t *testing.T) {
	if baseline {
		t.Skip("read-only image stores are cs-snapshotter's")
	}
	seed := NewEnv(t)
	seed.ImportImage(imageArchive)
	node := NewEnv(t)
	cfg := fmt.Sprintf("additional_image_stores = [%q]\n", seed.CSRoot)
	if err := os.WriteFile(node.CSConfig, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	node.StopDaemon()
	node.StartDaemon()
	seedTree := func() string { return dirTree(t, filepath.Join(seed.CSRoot, "snapshots")) }

	cli := func(args ...string) string {
		t.Helper()
		args = append([]string{"--graph", node.CSRoot, "--run", filepath.Join(node.Dir, "cli-run")}, args...)
		out, err := exec.Command(csBin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("cs-snapshotter %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The node's store lists the seed's image, read-only, through the
	// daemon's read-only image store.
	var images []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(cli("images", "--json")), &images); err != nil {
		t.Fatal(err)
	}
	imageID := image.Config.Digest.Encoded()
	if len(images) != 1 || images[0].ID != imageID {
		t.Fatalf("the node's store lists %+v, want the seed's image %s", images, imageID)
	}
	if out := cli("status"); !strings.Contains(out, "Read-only image store: "+seed.CSRoot+" (daemon "+seed.CSSocket+")") {
		t.Errorf("the node's store status does not name the seed's root, read through its daemon:\n%s", out)
	}

	publish := func(id, name string) {
		t.Helper()
		var res struct {
			Layers, Shared, BlobsRecorded int `json:",omitempty"`
		}
		out := cli("publish", "--address", node.CtrdSocket, "--name", name, "--json", id)
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("publish --json: %v\n%s", err, out)
		}
		var raw map[string]any
		json.Unmarshal([]byte(out), &raw)
		if raw["shared"] != raw["layers"] || raw["blobs_recorded"] != raw["layers"] {
			t.Errorf("publish %s: %s; want every layer shared and its blob recorded", name, out)
		}
	}
	before := seedTree()
	publish(imageID, imageName)

	out := node.MustCtr("run", "--rm", "--snapshotter", "cs", imageName, node.ID("ro"), "cat", imagebuild.HelloPath)
	wantOutput(t, "ctr run on the read-only store's image", out, imagebuild.HelloText)
	out = node.MustCtr("run", "--rm", "--snapshotter", "cs", imageName, node.ID("ro-layers"), "sh", "-c", layerCheckScript)
	wantOutput(t, "layer check on the read-only store's image", out, layerCheckWant)
	out = node.MustNerdctl("run", "--rm", "--net", "none", imageName, "cat", imagebuild.HelloPath)
	wantOutput(t, "nerdctl run on the read-only store's image", out, imagebuild.HelloText)
	node.checkChain(image.ChainIDs())
	if out := node.MustCtr("images", "check", "--snapshotter", "cs", "-q"); !strings.Contains("\n"+out, "\n"+imageName+"\n") {
		t.Errorf("`ctr images check` does not report %s complete and unpacked:\n%s", imageName, out)
	}
	// Nothing was copied: every layer snapshot's files are a link into
	// the seed's root.
	links := 0
	filepath.Walk(filepath.Join(node.CSRoot, "snapshots"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode()&os.ModeSymlink != 0 {
			if dest, _ := os.Readlink(p); strings.HasPrefix(dest, seed.CSRoot+"/") {
				links++
			}
		}
		return nil
	})
	if links != len(image.Layers) {
		t.Errorf("the node's root has %d links into the seed's root, want one per layer (%d)", links, len(image.Layers))
	}

	// The node's store, which now also sees containerd's mirrors in its
	// root, finds nothing wrong.
	if out := cli("check"); strings.TrimSpace(out) != "" {
		t.Errorf("cs-snapshotter check on the node:\n%s", out)
	}

	// The seed adds an image (sharing the first layers); the node runs it
	// without a restart.
	seed.ImportImage(deepArchive)
	publish(deepImage.Config.Digest.Encoded(), deepName)
	out = node.MustCtr("run", "--rm", "--snapshotter", "cs", deepName, node.ID("ro-deep"), "cat", imagebuild.HelloPath)
	wantOutput(t, "ctr run on the seed's new image", out, imagebuild.HelloText)
	before = seedTree() // the seed itself wrote the new image

	// In another namespace, where the node unpacked the shared lower
	// layers itself, the deep image's upper layers are unpacked on the
	// node from the seed's blobs (which the daemon reads for containerd).
	other := func(args ...string) string {
		t.Helper()
		return node.Must(node.Run(append([]string{"ctr", "--address", node.CtrdSocket, "-n", "other"}, args...)...))
	}
	other("images", "import", "--snapshotter", "cs", imageArchive)
	cli("publish", "--address", node.CtrdSocket, "--namespace", "other", "--name", deepName, deepImage.Config.Digest.Encoded())
	out = other("run", "--rm", "--snapshotter", "cs", deepName, node.ID("other-deep"), "sh", "-c", "cat "+imagebuild.HelloPath+"; ls /opt/cs")
	if !strings.HasPrefix(out, imagebuild.HelloText) {
		t.Errorf("the deep image unpacked partly on the node: %q", out)
	}
	other("images", "rm", "--sync", imageName, deepName)

	// Removing the images lets containerd's GC take the mirrors, and
	// only them.
	node.MustCtr("images", "rm", "--sync", imageName, deepName)
	if snaps := node.CtrSnapshots(); len(snaps) != 0 {
		t.Errorf("after the images went, the node still has snapshots %v", snaps)
	}
	if after := seedTree(); after != before {
		t.Errorf("the seed's root changed under the node:\nbefore %s\nafter  %s", before, after)
	}
	out = seed.MustCtr("run", "--rm", "--snapshotter", "cs", deepName, seed.ID("seed-after"), "cat", imagebuild.HelloPath)
	wantOutput(t, "the seed runs its image after the node let go", out, imagebuild.HelloText)
}

// dirTree lists every path under dir with its mode and size.
func dirTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %s %d\n", strings.TrimPrefix(p, dir), fi.Mode(), fi.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestDaemonImageStore: with image_store set, containerd's import unpacks
// the layers into the image store, with the blobs, and containers run
// from the root on them; removing the image empties both.
func TestDaemonImageStore(t *testing.T) {
	if baseline {
		t.Skip("the image store is cs-snapshotter's")
	}
	e := NewEnv(t)
	images := filepath.Join(e.Dir, "image-store")
	if err := os.WriteFile(e.CSConfig, []byte(fmt.Sprintf("image_store = %q\n", images)), 0o644); err != nil {
		t.Fatal(err)
	}
	e.StopDaemon()
	e.StartDaemon()
	e.ImportImage(imageArchive)
	count := func(root string) int {
		entries, _ := os.ReadDir(filepath.Join(root, "snapshots"))
		return len(entries)
	}
	if n := count(images); n != len(image.Layers) {
		t.Errorf("the image store holds %d snapshots, want the image's %d layers", n, len(image.Layers))
	}
	if n := count(e.CSRoot); n != 0 {
		t.Errorf("the root holds %d snapshots after the import", n)
	}
	for d := range image.Blobs {
		if _, err := os.Stat(filepath.Join(images, "content", "blobs", "sha256", d.Encoded())); err != nil {
			t.Errorf("blob %s is not in the image store: %v", d, err)
		}
	}
	out := e.MustCtr("run", "--rm", "--snapshotter", "cs", imageName, e.ID("split"), "sh", "-c", layerCheckScript)
	wantOutput(t, "layer check on the image store's layers", out, layerCheckWant)
	e.checkChain(image.ChainIDs())

	// A container's writes are in the root.
	id := e.ID("split-write")
	e.MustCtr("run", "--snapshotter", "cs", imageName, id, "sh", "-c", "echo kept > /kept")
	found := ""
	filepath.Walk(filepath.Join(e.CSRoot, "snapshots"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Name() == "kept" {
			found = p
		}
		return nil
	})
	if found == "" {
		t.Error("the container's write is not under the root's snapshots")
	}
	e.MustCtr("containers", "rm", id)

	// cs-snapshotter check through the daemon finds nothing wrong.
	if out, err := exec.Command(csBin, "--graph", e.CSRoot, "--run", filepath.Join(e.Dir, "cli-run"), "check").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("cs-snapshotter check: %v\n%s", err, out)
	}

	e.MustCtr("images", "rm", "--sync", imageName)
	if n := count(images) + count(e.CSRoot); n != 0 {
		t.Errorf("after the image went the roots hold %d snapshots", n)
	}
}
