package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// layerCheckScript prints what the image's layers 2 and 3 did, and checks
// the container's writable layer.
const layerCheckScript = `cat /etc/cs-layer2.txt
if [ -e /etc/cs-remove-me.txt ]; then echo remove-me present; else echo remove-me deleted; fi
if [ -e /var/cs-gone ]; then echo dir present; else echo dir deleted; fi
ls /opt/cs
echo written > /tmp/w && cat /tmp/w`

const layerCheckWant = imagebuild.Layer2Text + "remove-me deleted\ndir deleted\nb.txt\nwritten\n"

// ctrSnapshot is one line of `ctr snapshots ls`.
type ctrSnapshot struct{ Key, Parent, Kind string }

// CtrSnapshots parses `ctr snapshots --snapshotter <sn> ls`.
func (e *Env) CtrSnapshots() map[string]ctrSnapshot {
	e.t.Helper()
	out := e.MustCtr("snapshots", "--snapshotter", e.Snapshotter, "ls")
	snaps := map[string]ctrSnapshot{}
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) == 0 {
			if i == 0 && (len(f) < 3 || f[0] != "KEY") {
				e.t.Fatalf("unexpected `ctr snapshots ls` header %q:\n%s", line, out)
			}
			continue
		}
		s := ctrSnapshot{Key: f[0], Kind: f[len(f)-1]}
		if len(f) == 3 {
			s.Parent = f[1]
		}
		snaps[s.Key] = s
	}
	return snaps
}

// checkChain fails unless containerd lists every chain ID as a committed
// snapshot whose parent is the previous chain ID.
func (e *Env) checkChain(chain []digest.Digest) {
	e.t.Helper()
	snaps := e.CtrSnapshots()
	for i, c := range chain {
		s, ok := snaps[c.String()]
		wantParent := ""
		if i > 0 {
			wantParent = chain[i-1].String()
		}
		switch {
		case !ok:
			e.t.Errorf("layer %d: no snapshot %s in `ctr snapshots --snapshotter %s ls`", i+1, c, e.Snapshotter)
		case s.Kind != "Committed":
			e.t.Errorf("layer %d: snapshot %s is %s, want Committed", i+1, c, s.Kind)
		case s.Parent != wantParent:
			e.t.Errorf("layer %d: snapshot %s has parent %q, want %q", i+1, c, s.Parent, wantParent)
		}
	}
	if e.t.Failed() {
		e.t.FailNow()
	}
}

// eventually retries f until it succeeds or timeout passes; it returns the
// last result.
func (e *Env) eventually(timeout time.Duration, f func() Result) Result {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for tries := 1; ; tries++ {
		r := f()
		if r.Err == nil || time.Now().After(deadline) {
			if tries > 1 {
				e.t.Logf("succeeded=%v after %d tries", r.Err == nil, tries)
			}
			return r
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func busyboxSize(t *testing.T) int64 {
	st, err := os.Stat(imagebuild.DefaultBusybox)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func wantOutput(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}

// TestCtrImportRun imports the image with `ctr images import --snapshotter
// cs`, runs containers from it with `ctr run`, and checks the layer chain
// containerd and the daemon record.
func TestCtrImportRun(t *testing.T) {
	e := NewEnv(t)
	sn := e.Snapshotter
	e.ImportImage(imageArchive)
	if out := e.MustCtr("images", "ls", "-q"); !strings.Contains("\n"+out, "\n"+imageName+"\n") {
		t.Fatalf("`ctr images ls -q` does not list %s:\n%s", imageName, out)
	}

	out := e.MustCtr("run", "--rm", "--snapshotter", sn, imageName, e.ID("hello"), "cat", imagebuild.HelloPath)
	wantOutput(t, "ctr run cat "+imagebuild.HelloPath, out, imagebuild.HelloText)

	// Layers 2 and 3 (added file, whiteout, opaque dir) and the writable
	// layer.
	out = e.MustCtr("run", "--rm", "--snapshotter", sn, imageName, e.ID("layers"), "sh", "-c", layerCheckScript)
	wantOutput(t, "layer check", out, layerCheckWant)

	e.checkChain(image.ChainIDs())
	for key, s := range e.CtrSnapshots() {
		if s.Kind != "Committed" {
			t.Errorf("snapshot %s is %s after `ctr run --rm`; want only committed layers left", key, s.Kind)
		}
	}

	// The CRI, if it loaded, reports the daemon's root as the image file
	// system (the `exports = { root = ... }` of the proxy plugin).
	if b, err := os.ReadFile(e.CtrdLog); err == nil && !baseline {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "Get image filesystem path") && strings.Contains(line, `snapshotter \"cs\"`) &&
				!strings.Contains(line, `\"`+e.CSRoot+`\"`) {
				t.Errorf("the CRI's image file system for cs is not the daemon's root %s: %s", e.CSRoot, line)
			}
		}
	}

	// containerd sees the image as complete and unpacked in cs.
	if out := e.MustCtr("images", "check", "--snapshotter", sn, "-q"); !strings.Contains("\n"+out, "\n"+imageName+"\n") {
		t.Errorf("`ctr images check --snapshotter %s -q` does not report %s as ready:\n%s", sn, imageName, out)
	}
	// Usage of the busybox layer counts at least the busybox binary.
	usage := e.MustCtr("snapshots", "--snapshotter", sn, "usage", "-b", image.Layers[0].ChainID.String())
	if f := strings.Fields(lastLine(usage)); len(f) < 3 || f[0] != image.Layers[0].ChainID.String() {
		t.Errorf("unexpected `ctr snapshots usage` output:\n%s", usage)
	} else if size, err := strconv.ParseInt(f[1], 10, 64); err != nil || size < busyboxSize(t) {
		t.Errorf("usage of layer 1 is %q bytes, want at least the size of busybox (%d):\n%s", f[1], busyboxSize(t), usage)
	}

	{
		client := e.DialDaemon()
		// The daemon serves the blobs byte for byte.
		for d, want := range image.Blobs {
			got, err := client.ReadBlob(d)
			if err != nil {
				t.Errorf("reading blob %s from the daemon: %v", d, err)
			} else if !bytes.Equal(got, want) {
				t.Errorf("blob %s from the daemon differs from the archive's (%d vs %d bytes)", d, len(got), len(want))
			}
		}
		// The daemon itself holds the chain, under containerd's names.
		snaps := client.Snapshots(t)
		for i, c := range image.ChainIDs() {
			info, ok := chainSnapshot(snaps, c)
			if !ok {
				t.Errorf("layer %d: the daemon holds no snapshot for chain ID %s; it has:\n%s", i+1, c, describeSnapshots(snaps))
				continue
			}
			if info.Kind.String() != "Committed" {
				t.Errorf("layer %d: daemon snapshot %s is %s", i+1, info.Name, info.Kind)
			}
		}
	}

	t.Run("parallel", func(t *testing.T) {
		// Several containers at once: concurrent Prepare, Mounts and
		// Remove on the same parent.
		const n = 6
		results := make(chan Result, n)
		for i := range n {
			id := e.ID("par")
			go func() {
				results <- e.Ctr("run", "--rm", "--snapshotter", sn, imageName, id, "sh", "-c",
					fmt.Sprintf("echo %d > /tmp/n && cat /tmp/n %s", i, imagebuild.HelloPath))
			}()
		}
		for range n {
			r := <-results
			if r.Err != nil || !strings.HasSuffix(r.Stdout, "\n"+imagebuild.HelloText) {
				t.Errorf("parallel run: %s", r)
			}
		}
	})

	t.Run("deep", func(t *testing.T) {
		// 6 layers; the first 3 are the same as the image's, so containerd
		// reuses those snapshots and stacks 3 more.
		e.ImportImage(deepArchive)
		script := fmt.Sprintf("cat %s %s %s", imagebuild.HelloPath, imagebuild.LayerFile(deepDepth), imagebuild.Layer2Path)
		out := e.MustCtr("run", "--rm", "--snapshotter", sn, deepName, e.ID("deep"), "sh", "-c", script)
		wantOutput(t, "deep image", out, imagebuild.HelloText+fmt.Sprintf("added by layer %d\n", deepDepth)+imagebuild.Layer2Text)
		e.checkChain(deepImage.ChainIDs())
		for i := range 3 {
			if deepImage.Layers[i].ChainID != image.Layers[i].ChainID {
				t.Fatalf("test images should share layer %d", i+1)
			}
		}
	})
}

// TestNerdctlRun loads the image with nerdctl and runs containers from it,
// one-shot and detached with exec.
func TestNerdctlRun(t *testing.T) {
	e := NewEnv(t)
	e.MustNerdctl("load", "-i", imageArchive)
	if out := e.MustNerdctl("images", "--format", "{{.Repository}}:{{.Tag}}"); !strings.Contains(out, "cs-busybox:latest") {
		t.Fatalf("`nerdctl images` does not list cs-busybox:latest:\n%s", out)
	}
	out := e.MustNerdctl("run", "--rm", "--net", "none", imageName, "cat", imagebuild.HelloPath)
	wantOutput(t, "nerdctl run cat "+imagebuild.HelloPath, out, imagebuild.HelloText)

	out = e.MustNerdctl("run", "--rm", "--net", "none", imageName, "sh", "-c", layerCheckScript)
	wantOutput(t, "layer check", out, layerCheckWant)
	e.checkChain(image.ChainIDs())

	name := e.ID("detached")
	e.MustNerdctl("run", "-d", "--net", "none", "--name", name, imageName, "sleep", "300")
	out = e.MustNerdctl("exec", name, "sh", "-c", "echo from-exec > /tmp/x; cat /tmp/x "+imagebuild.HelloPath)
	wantOutput(t, "nerdctl exec", out, "from-exec\n"+imagebuild.HelloText)
	e.MustNerdctl("rm", "-f", name)
	if out := e.MustNerdctl("ps", "-a", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left after nerdctl rm -f: %q", out)
	}
}

// TestNerdctlCommit commits a container's changes (an added file and a
// deleted lower-layer file) to a new image and runs it.
func TestNerdctlCommit(t *testing.T) {
	e := NewEnv(t)
	e.ImportImage(imageArchive)
	const committed = "docker.io/library/cs-committed:latest"
	name := e.ID("writer")
	e.MustNerdctl("run", "--name", name, "--net", "none", imageName, "sh", "-c",
		"echo committed-data > /root/committed.txt && rm "+imagebuild.Layer2Path)
	e.MustNerdctl("commit", name, committed)

	out := e.MustNerdctl("run", "--rm", "--net", "none", committed, "sh", "-c",
		"cat /root/committed.txt "+imagebuild.HelloPath+"; if [ -e "+imagebuild.Layer2Path+" ]; then echo layer2 present; else echo layer2 deleted; fi")
	wantOutput(t, "run committed image", out, "committed-data\n"+imagebuild.HelloText+"layer2 deleted\n")

	// The original image is unchanged.
	out = e.MustNerdctl("run", "--rm", "--net", "none", imageName, "sh", "-c", "cat "+imagebuild.Layer2Path+"; ls /root")
	wantOutput(t, "run original image", out, imagebuild.Layer2Text)

	// The committed image is the original chain plus one layer.
	snaps := e.CtrSnapshots()
	var children []string
	top := image.ChainIDs()[len(image.Layers)-1].String()
	for key, s := range snaps {
		if s.Parent == top && s.Kind == "Committed" {
			children = append(children, key)
		}
	}
	if len(children) != 1 {
		t.Errorf("want exactly one committed snapshot on top of the image's chain (the commit), got %v; snapshots: %v", children, snaps)
	}

	e.MustNerdctl("rm", name)
	e.MustNerdctl("rmi", committed)
	out = e.MustCtr("run", "--rm", "--snapshotter", e.Snapshotter, imageName, e.ID("after"), "cat", imagebuild.HelloPath)
	wantOutput(t, "run after rmi", out, imagebuild.HelloText)
}

// TestDaemonRestart restarts cs-snapshotter (SIGTERM, start on the same
// root) while containerd keeps running; images, committed layers and a
// container created before the restart keep working. A second daemon on the
// same root must refuse to start.
func TestDaemonRestart(t *testing.T) {
	requireDaemon(t)
	e := NewEnv(t)
	sn := e.Snapshotter
	e.ImportImage(imageArchive)
	out := e.MustCtr("run", "--rm", "--snapshotter", sn, imageName, e.ID("before"), "cat", imagebuild.HelloPath)
	wantOutput(t, "before restart", out, imagebuild.HelloText)

	t.Run("second daemon refuses the root", func(t *testing.T) {
		second := e.StartSecondDaemon(filepath.Join(e.Dir, "cs2.sock"), filepath.Join(e.Dir, "cs2-run"), filepath.Join(e.Dir, "cs2.log"))
		if !second.waitExit(10 * time.Second) {
			t.Errorf("a second cs-snapshotter on the same root (--root %s) is still running after 10 s; it must refuse to start\nits log:\n%s",
				e.CSRoot, tailFile(second.logPath, 30))
		} else if second.err == nil {
			t.Errorf("a second cs-snapshotter on the same root exited with status 0; want a failure\nits log:\n%s", tailFile(second.logPath, 30))
		} else {
			t.Logf("second daemon refused as expected (%v):\n%s", second.err, tailFile(second.logPath, 5))
			if holder := strconv.Itoa(e.cs.cmd.Process.Pid); !strings.Contains(tailFile(second.logPath, 30), holder) {
				t.Errorf("the second daemon's error should name the holder of the root (pid %s); its log:\n%s", holder, tailFile(second.logPath, 30))
			}
		}
		if _, err := os.Stat(filepath.Join(e.Dir, "cs2.sock")); err == nil {
			t.Errorf("the refused second daemon left a socket behind")
		}
		// The first daemon is unharmed.
		out := e.MustCtr("run", "--rm", "--snapshotter", sn, imageName, e.ID("still"), "cat", imagebuild.HelloPath)
		wantOutput(t, "first daemon after the second's attempt", out, imagebuild.HelloText)
	})

	// A container whose active snapshot is prepared before the restart and
	// first mounted after it.
	pre := e.ID("pre")
	e.MustCtr("containers", "create", "--snapshotter", sn, imageName, pre, "sh", "-c", "cat "+imagebuild.HelloPath+"; ls /opt/cs")

	// A running container, across the restart.
	running := e.ID("running")
	e.MustNerdctl("run", "-d", "--net", "none", "--name", running, imageName, "sleep", "300")

	// Let containerd's GC remove the temporary views nerdctl and ctr make,
	// so that the daemon's state is stable before comparing.
	client := e.DialDaemon()
	e.waitDaemon(t, client, "before the restart", func(snaps map[string]snapshotInfo) []string {
		var views []string
		for name, info := range snaps {
			if info.Kind.String() == "View" {
				views = append(views, "temporary view "+name+" still there")
			}
		}
		return views
	})
	before := client.Snapshots(t)

	e.StopDaemon()
	e.StartDaemon()

	// The daemon comes back with the same snapshots.
	client = e.DialDaemon()
	after := client.Snapshots(t)
	if describeSnapshots(before) != describeSnapshots(after) {
		t.Errorf("the daemon's snapshots changed across the restart\nbefore:\n%s\nafter:\n%s", describeSnapshots(before), describeSnapshots(after))
	}
	for name, b := range before {
		if a, ok := after[name]; ok && !equalLabels(a.Labels, b.Labels) {
			t.Errorf("snapshot %s labels changed across the restart: %v -> %v", name, b.Labels, a.Labels)
		}
	}
	for _, d := range image.BlobDigests() {
		if !client.BlobExists(t, d) {
			t.Errorf("blob %s is gone after the restart", d)
		}
	}

	// containerd's proxy client reconnects with a backoff of at most 3 s.
	r := e.eventually(20*time.Second, func() Result {
		return e.Ctr("run", "--rm", "--snapshotter", sn, imageName, e.ID("after"), "cat", imagebuild.HelloPath)
	})
	wantOutput(t, "after restart", e.Must(r), imagebuild.HelloText)

	out = e.MustCtr("tasks", "start", pre)
	if want := imagebuild.HelloText + "b.txt\n"; out != want {
		// ctr may lose the end of a short task's output when the task
		// exits (seen once in a loaded full run); a missing file would
		// be missing again.
		t.Logf("container created before the restart: got %q, want %q; starting it again", out, want)
		out = e.MustCtr("tasks", "start", pre)
		wantOutput(t, "container created before the restart, started again", out, want)
	}
	e.MustCtr("containers", "rm", pre)

	e.checkChain(image.ChainIDs())
	out = e.MustNerdctl("run", "--rm", "--net", "none", imageName, "sh", "-c", layerCheckScript)
	wantOutput(t, "nerdctl after restart", out, layerCheckWant)

	// The container that ran through the restart still works and can be
	// removed (its active snapshot removed by the restarted daemon).
	out = e.MustNerdctl("exec", running, "cat", imagebuild.HelloPath)
	wantOutput(t, "exec in the container running across the restart", out, imagebuild.HelloText)
	e.MustNerdctl("rm", "-f", running)
	// containerd removes backend snapshots in its GC pass, just after.
	e.waitDaemon(t, client, "after removing all containers", func(snaps map[string]snapshotInfo) []string {
		var problems []string
		for name, info := range snaps {
			if info.Kind.String() != "Committed" {
				problems = append(problems, fmt.Sprintf("%s snapshot %s is left", info.Kind, name))
			}
		}
		return problems
	})

	// New layers after the restart, and one more restart with them.
	e.ImportImage(deepArchive)
	e.StopDaemon()
	e.StartDaemon()
	r = e.eventually(20*time.Second, func() Result {
		return e.Ctr("run", "--rm", "--snapshotter", sn, deepName, e.ID("deep"), "cat", imagebuild.LayerFile(deepDepth))
	})
	wantOutput(t, "deep image after second restart", e.Must(r), fmt.Sprintf("added by layer %d\n", deepDepth))
	e.checkChain(deepImage.ChainIDs())

	t.Run("crash", func(t *testing.T) {
		// SIGKILL (no graceful shutdown) with a container's active snapshot
		// in place; the next start must recover the database and the lock.
		cid := e.ID("crash")
		e.MustCtr("containers", "create", "--snapshotter", sn, deepName, cid, "cat", imagebuild.HelloPath)
		e.KillDaemon()
		e.StartDaemon()
		r := e.eventually(20*time.Second, func() Result {
			return e.Ctr("run", "--rm", "--snapshotter", sn, imageName, e.ID("postcrash"), "sh", "-c", layerCheckScript)
		})
		wantOutput(t, "after a crash", e.Must(r), layerCheckWant)
		out := e.MustCtr("tasks", "start", cid)
		wantOutput(t, "container created before the crash", out, imagebuild.HelloText)
		e.MustCtr("containers", "rm", cid)
		e.checkChain(deepImage.ChainIDs())
	})
}

// TestGarbageCollection removes images and containers and checks, on the
// daemon's socket, that containerd's GC removed their snapshots and blobs
// from cs-snapshotter (and only those no image still uses).
func TestGarbageCollection(t *testing.T) {
	e := NewEnv(t)
	sn := e.Snapshotter
	e.ImportImage(imageArchive)
	e.ImportImage(deepArchive)
	client := e.DialDaemon()

	// Containers in all states, all removed again.
	out := e.MustCtr("run", "--rm", "--snapshotter", sn, imageName, e.ID("rm"), "cat", imagebuild.HelloPath)
	wantOutput(t, "ctr run", out, imagebuild.HelloText)
	created := e.ID("created")
	e.MustCtr("containers", "create", "--snapshotter", sn, deepName, created, "true")
	nerd := e.ID("nerd")
	e.MustNerdctl("run", "--name", nerd, "--net", "none", imageName, "sh", "-c", "echo x > /root/x")

	snaps := client.Snapshots(t)
	for _, c := range deepImage.ChainIDs() {
		if _, ok := chainSnapshot(snaps, c); !ok {
			t.Fatalf("before GC: the daemon holds no snapshot for chain ID %s; it has:\n%s", c, describeSnapshots(snaps))
		}
	}
	active := 0
	for _, info := range snaps {
		if info.Kind.String() == "Active" {
			active++
		}
	}
	if active < 2 {
		t.Errorf("before GC: want the active snapshots of containers %s and %s, the daemon has:\n%s", created, nerd, describeSnapshots(snaps))
	}
	for _, d := range append(image.BlobDigests(), deepImage.BlobDigests()...) {
		if !client.BlobExists(t, d) {
			t.Fatalf("before GC: the daemon's content store lacks blob %s", d)
		}
	}

	if !baseline {
		if copies, _ := diskState(t, e.CSRoot); len(copies) == 0 {
			t.Fatalf("before GC: no copy of busybox under %s; the disk check below would prove nothing", e.CSRoot)
		}
	}

	e.MustCtr("containers", "rm", created)
	e.MustNerdctl("rm", nerd)

	// Remove the 3-layer image: its manifest and config go, the layers it
	// shares with the deep image stay.
	e.MustCtr("images", "rm", "--sync", imageName)
	e.waitDaemon(t, client, "after removing "+imageName, func(snaps map[string]snapshotInfo) []string {
		var problems []string
		for _, c := range deepImage.ChainIDs() {
			if _, ok := chainSnapshot(snaps, c); !ok {
				problems = append(problems, fmt.Sprintf("snapshot for chain ID %s (still used by %s) is gone", c, deepName))
			}
		}
		for _, d := range []digest.Digest{image.Manifest.Digest, image.Config.Digest} {
			if client.BlobExists(t, d) {
				problems = append(problems, fmt.Sprintf("blob %s (%s's manifest/config) is still there", d, imageName))
			}
		}
		for _, d := range deepImage.BlobDigests() {
			if !client.BlobExists(t, d) {
				problems = append(problems, fmt.Sprintf("blob %s (still used by %s) is gone", d, deepName))
			}
		}
		for name, info := range snaps {
			if info.Kind.String() != "Committed" {
				problems = append(problems, fmt.Sprintf("%s snapshot %s of a removed container is still there", info.Kind, name))
			}
		}
		return problems
	})

	// Remove the other image: nothing of either is left.
	e.MustCtr("images", "rm", "--sync", deepName)
	e.waitDaemon(t, client, "after removing both images", func(snaps map[string]snapshotInfo) []string {
		var problems []string
		for _, c := range deepImage.ChainIDs() {
			if info, ok := chainSnapshot(snaps, c); ok {
				problems = append(problems, fmt.Sprintf("snapshot %s (chain ID %s) is still there", info.Name, c))
			}
		}
		for _, d := range append(image.BlobDigests(), deepImage.BlobDigests()...) {
			if client.BlobExists(t, d) {
				problems = append(problems, fmt.Sprintf("blob %s is still there", d))
			}
		}
		for name := range snaps {
			if strings.HasPrefix(name, "default/") {
				problems = append(problems, fmt.Sprintf("snapshot %s (containerd namespace default) is still there", name))
			}
		}
		return problems
	})
	if out := e.MustCtr("snapshots", "--snapshotter", sn, "ls"); strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("containerd still lists snapshots:\n%s", out)
	}
	if out := e.MustCtr("content", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("containerd still lists content:\n%s", out)
	}

	// And the data is gone from disk, not just from the records: no copy
	// of busybox (from the layers, blobs or snapshot directories) is left
	// under the daemon's root, and little besides its database.
	if !baseline {
		e.waitDiskFreed(t, e.CSRoot)
	}
}

// diskState returns the paths under root holding busybox's content and the
// total size of files other than *.db databases.
func diskState(t *testing.T, root string) (copies []string, total int64) {
	t.Helper()
	bb, err := os.ReadFile(imagebuild.DefaultBusybox)
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !strings.HasSuffix(p, ".db") {
			total += info.Size()
		}
		if info.Size() == int64(len(bb)) {
			if b, err := os.ReadFile(p); err == nil && bytes.Equal(b, bb) {
				copies = append(copies, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	return copies, total
}

// waitDiskFreed waits (up to 60 s: containerd's GC paces itself, see
// waitDaemon) until root holds no file with busybox's content and at most
// 1 MiB in files other than *.db databases.
func (e *Env) waitDiskFreed(t *testing.T, root string) {
	t.Helper()
	const limit = 1 << 20
	deadline := time.Now().Add(60 * time.Second)
	for {
		var problems []string
		copies, total := diskState(t, root)
		for _, c := range copies {
			problems = append(problems, "a copy of busybox is left at "+c)
		}
		if total > limit {
			problems = append(problems, fmt.Sprintf("%d bytes in files other than databases are left under %s (limit %d)", total, root, limit))
		}
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			out, _ := exec.Command("find", root, "-type", "f", "-size", "+16k", "-printf", "%s %p\n").Output()
			t.Fatalf("after removing everything:\n  %s\nlarge files:\n%s", strings.Join(problems, "\n  "), out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// waitDaemon polls the daemon until check reports no problems (containerd
// removes backend objects right after its GC pass), failing after 15 s.
func (e *Env) waitDaemon(t *testing.T, c *DaemonClient, when string, check func(map[string]snapshotInfo) []string) {
	t.Helper()
	// containerd's GC may use only 2% of the time (pause_threshold), so
	// after a slow pass on a loaded machine the next one can be many
	// seconds away.
	deadline := time.Now().Add(60 * time.Second)
	for {
		snaps := c.Snapshots(t)
		problems := check(snaps)
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s, the daemon's state is wrong:\n  %s\ndaemon snapshots:\n%s", when, strings.Join(problems, "\n  "), describeSnapshots(snaps))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestEmptyDaemon checks that a daemon holding nothing lists nothing, without
// errors, and that a GC pass over it is clean. Clients walk a fresh daemon:
// the store face (listing layers and images of an empty store), `ctr` on the
// daemon's socket. (containerd's builtin overlayfs snapshotter and local
// content store answer Walk on a fresh root with NotFound, but containerd
// itself only walks a backend after removing something from it, so it
// never notices.)
func TestEmptyDaemon(t *testing.T) {
	e := NewEnv(t)
	client := e.DialDaemon()
	ctx, cancel := daemonCtx()
	defer cancel()
	n := 0
	if err := client.Snapshotter.Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil }); err != nil {
		t.Errorf("Walk on an empty daemon: %v", err)
	} else if n != 0 {
		t.Errorf("Walk on an empty daemon found %d snapshots", n)
	}
	n = 0
	if err := client.Content.Walk(ctx, func(content.Info) error { n++; return nil }); err != nil {
		t.Errorf("content Walk on an empty daemon: %v", err)
	} else if n != 0 {
		t.Errorf("content Walk on an empty daemon found %d blobs", n)
	}
	if st, err := client.Content.ListStatuses(ctx); err != nil {
		t.Errorf("ListStatuses on an empty daemon: %v", err)
	} else if len(st) != 0 {
		t.Errorf("ListStatuses on an empty daemon: %v", st)
	}
	if _, err := client.Snapshotter.Stat(ctx, "default/1/nonexistent"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat of a missing snapshot: got %v, want a NotFound error", err)
	}
	if _, err := client.Content.Info(ctx, digest.FromString("nothing")); !errdefs.IsNotFound(err) {
		t.Errorf("Info of a missing blob: got %v, want a NotFound error", err)
	}

	// A synchronous GC pass over the empty daemon (checkLogs, at cleanup,
	// fails the test if containerd logs a GC failure).
	e.MustCtr("leases", "create", "--id", "cs-e2e-empty")
	e.MustCtr("leases", "rm", "--sync", "cs-e2e-empty")
	if out := e.MustCtr("snapshots", "--snapshotter", e.Snapshotter, "ls"); strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("containerd lists snapshots on an empty daemon:\n%s", out)
	}
}

// TestFileFidelity imports an image whose layers hold ownership, special
// modes, a hard link, a fifo, a device node, a long name, an xattr and a
// 24 MiB incompressible file, and checks them in a container and on a view
// mounted from the daemon's mounts.
func TestFileFidelity(t *testing.T) {
	e := NewEnv(t)
	sn := e.Snapshotter
	e.ImportImage(fidelityArchive)

	var script, want strings.Builder
	for _, f := range imagebuild.FidelityFiles() {
		fmt.Fprintf(&script, "stat -c '%%n|%%u|%%g|%%a|%%h|%%F' '%s'\n", f.Path)
		fmt.Fprintf(&want, "%s|%s\n", f.Path, f.Stat)
	}
	script.WriteString("readlink " + imagebuild.FidelityDir + "/etclink\n")
	want.WriteString("/etc\n")
	script.WriteString("cat " + imagebuild.FidelityDir + "/" + imagebuild.LongName + "\n")
	want.WriteString("long\n")
	script.WriteString("stat -c '%Y' " + imagebuild.FidelityDir + "/owned\n")
	fmt.Fprintf(&want, "%d\n", imagebuild.Epoch.Unix())
	script.WriteString("sha256sum " + imagebuild.BigFilePath + "\n")
	fmt.Fprintf(&want, "%s  %s\n", digest.FromBytes(imagebuild.BigFileData(bigFileSize)).Encoded(), imagebuild.BigFilePath)

	out := e.MustCtr("run", "--rm", "--snapshotter", sn, fidelityName, e.ID("fidelity"), "sh", "-c", script.String())
	if out != want.String() {
		t.Errorf("file attributes in the container differ\n got:\n%s\nwant:\n%s", out, want.String())
	}

	// The blob made it through the content store intact.
	client := e.DialDaemon()
	top := fidelityImage.Layers[len(fidelityImage.Layers)-1]
	if got, err := client.ReadBlob(top.Descriptor.Digest); err != nil || digest.FromBytes(got) != top.Descriptor.Digest {
		t.Errorf("reading the %d-byte big-file layer back from the daemon: %v", top.Descriptor.Size, err)
	}

	// xattrs and device numbers, checked on the host through a view of the
	// top layer made directly on the daemon.
	snaps := client.Snapshots(t)
	parent, ok := chainSnapshot(snaps, fidelityImage.Layers[1].ChainID)
	if !ok {
		t.Fatalf("the daemon holds no snapshot for the fidelity layer; it has:\n%s", describeSnapshots(snaps))
	}
	ctx, cancel := daemonCtx()
	defer cancel()
	// Made on the daemon behind containerd's back, so held as the store
	// holds its snapshots: containerd's GC would otherwise remove it.
	key := "default/e2e-fidelity-view-" + e.ID("v")
	mounts, err := client.Snapshotter.View(ctx, key, parent.Name, snapshots.WithLabels(map[string]string{cslabels.Owned: "test"}))
	if err != nil {
		t.Fatalf("View(%s, %s) on the daemon: %v", key, parent.Name, err)
	}
	defer func() {
		if err := client.Snapshotter.Remove(ctx, key); err != nil {
			t.Errorf("removing view %s: %v", key, err)
		}
	}()
	target := filepath.Join(e.Dir, "fidelity-view")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mount.All(mounts, target); err != nil {
		t.Fatalf("mounting the daemon's view mounts %+v: %v", mounts, err)
	}
	defer func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	}()
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(filepath.Join(target, imagebuild.FidelityDir, "xattr"), imagebuild.XattrName, buf)
	if err != nil || string(buf[:n]) != imagebuild.XattrValue {
		t.Errorf("xattr %s on %s/xattr: %q, %v; want %q", imagebuild.XattrName, imagebuild.FidelityDir, buf[:max(n, 0)], err, imagebuild.XattrValue)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(target, imagebuild.FidelityDir, "null"), &st); err != nil ||
		st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("%s/null should be character device 1,3: mode %o rdev %d:%d, %v", imagebuild.FidelityDir, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), err)
	}
	if _, err := os.Lstat(filepath.Join(target, imagebuild.BigFilePath)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the view of layer 2 should not contain layer 3's %s: %v", imagebuild.BigFilePath, err)
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o644); err == nil {
		t.Errorf("a view must be read-only, but writing to it worked")
	}
}

// TestSnapshotLifecycle drives the snapshotter through containerd's
// snapshot API with `ctr snapshots`: prepare, write through the daemon's
// mounts, usage, labels (only containerd.io/snapshot/* reach the daemon),
// commit, a child, removal order, and GC.
func TestSnapshotLifecycle(t *testing.T) {
	e := NewEnv(t)
	sn := e.Snapshotter
	ctrSn := func(args ...string) string {
		t.Helper()
		return e.MustCtr(append([]string{"snapshots", "--snapshotter", sn}, args...)...)
	}
	client := e.DialDaemon()
	backend := func(key string) snapshots.Info {
		t.Helper()
		snaps := client.Snapshots(t)
		for name, info := range snaps {
			if name == key || strings.HasSuffix(name, "/"+key) {
				return info
			}
		}
		t.Fatalf("the daemon holds no snapshot for key %q; it has:\n%s", key, describeSnapshots(snaps))
		return snapshots.Info{}
	}
	withMount := func(key string, f func(root string)) {
		t.Helper()
		ctx, cancel := daemonCtx()
		defer cancel()
		mounts, err := client.Snapshotter.Mounts(ctx, backend(key).Name)
		if err != nil {
			t.Fatalf("Mounts(%s): %v", key, err)
		}
		target, err := os.MkdirTemp(e.Dir, "mnt-")
		if err != nil {
			t.Fatal(err)
		}
		if err := mount.All(mounts, target); err != nil {
			t.Fatalf("mount %+v: %v", mounts, err)
		}
		defer func() {
			if err := mount.UnmountAll(target, 0); err != nil {
				t.Errorf("unmount: %v", err)
			}
		}()
		f(target)
	}

	const (
		base  = "e2e-base"
		layer = "e2e-layer"
		child = "e2e-child"
	)
	ctrSn("prepare", base)
	ctrSn("label", base, "containerd.io/gc.root=e2e")       // keep it from containerd's GC
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	withMount(base, func(root string) {
		if err := os.WriteFile(filepath.Join(root, "data.bin"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, "dir/sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	})
	usage := ctrSn("usage", "-b", base)
	if f := strings.Fields(lastLine(usage)); len(f) < 3 {
		t.Errorf("usage output:\n%s", usage)
	} else if n, err := strconv.ParseInt(f[1], 10, 64); err != nil || n < int64(len(data)) {
		t.Errorf("usage of an active snapshot holding %d bytes: %s", len(data), lastLine(usage))
	}

	// Labels: containerd keeps all of them, the daemon sees only
	// containerd.io/snapshot/*.
	ctrSn("label", base, "containerd.io/snapshot/cs-e2e=inherited", "other/e2e=containerd-only")
	info := ctrSn("info", base)
	for _, want := range []string{`"containerd.io/snapshot/cs-e2e": "inherited"`, `"other/e2e": "containerd-only"`} {
		if !strings.Contains(info, want) {
			t.Errorf("`ctr snapshots info %s` lacks %s:\n%s", base, want, info)
		}
	}
	if b := backend(base); !baseline {
		if b.Labels["containerd.io/snapshot/cs-e2e"] != "inherited" {
			t.Errorf("the daemon did not get the containerd.io/snapshot/ label: %v", b.Labels)
		}
		if _, ok := b.Labels["other/e2e"]; ok {
			t.Errorf("the daemon got a label containerd keeps to itself: %v", b.Labels)
		}
	}

	ctrSn("commit", layer, base)
	ctrSn("label", layer, "containerd.io/gc.root=e2e")
	if b := backend(layer); b.Kind.String() != "Committed" {
		t.Errorf("%s is %s after commit", layer, b.Kind)
	}
	ctrSn("prepare", child, layer)
	ctrSn("label", child, "containerd.io/gc.root=e2e")
	withMount(child, func(root string) {
		got, err := os.ReadFile(filepath.Join(root, "data.bin"))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("the child does not see its parent's data.bin (%d bytes, %v)", len(got), err)
		}
		if err := os.Remove(filepath.Join(root, "data.bin")); err != nil {
			t.Errorf("removing a lower file in the child: %v", err)
		}
		if _, err := os.Stat(filepath.Join(root, "dir/sub")); err != nil {
			t.Errorf("child: %v", err)
		}
	})
	withMount(child, func(root string) {
		if _, err := os.Stat(filepath.Join(root, "data.bin")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a file removed in the child came back after remounting: %v", err)
		}
	})
	if ps := e.CtrSnapshots()[child]; ps.Parent != layer || ps.Kind != "Active" {
		t.Errorf("`ctr snapshots ls` shows %s as %+v", child, ps)
	}

	// A parent with a child cannot be removed.
	if r := e.Ctr("snapshots", "--snapshotter", sn, "rm", layer); r.Err == nil {
		t.Errorf("removing %s while %s depends on it should fail:\n%s", layer, child, r)
	} else if !strings.Contains(r.Stderr, "failed precondition") && !strings.Contains(r.Stderr, "FailedPrecondition") && !strings.Contains(r.Stderr, "has active") && !strings.Contains(r.Stderr, "children") {
		t.Logf("(removing a parent failed with: %s)", strings.TrimSpace(r.Stderr))
	}
	ctrSn("rm", child)
	ctrSn("rm", layer)
	e.MustCtr("leases", "create", "--id", "e2e-gc")
	e.MustCtr("leases", "rm", "--sync", "e2e-gc")
	e.waitDaemon(t, client, "after removing the snapshots", func(snaps map[string]snapshotInfo) []string {
		var problems []string
		for name := range snaps {
			for _, k := range []string{base, layer, child} {
				if name == k || strings.HasSuffix(name, "/"+k) {
					problems = append(problems, "snapshot "+name+" is still there")
				}
			}
		}
		return problems
	})
}

// TestParallelImportAndSave imports several images at once (two of them the
// same archive, so blobs and layers race), then round-trips one through
// `nerdctl save` (reading every blob back from the daemon) and `nerdctl
// load`.
func TestParallelImportAndSave(t *testing.T) {
	e := NewEnv(t)
	sn := e.Snapshotter
	archives := []string{imageArchive, imageArchive, deepArchive, fidelityArchive}
	results := make(chan Result, len(archives))
	for _, a := range archives {
		go func() { results <- e.Ctr("images", "import", "--snapshotter", sn, a) }()
	}
	for range archives {
		if r := <-results; r.Err != nil {
			t.Errorf("parallel import failed:\n%s", r)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	e.checkChain(deepImage.ChainIDs())
	e.checkChain(fidelityImage.ChainIDs())
	out := e.MustCtr("run", "--rm", "--snapshotter", sn, deepName, e.ID("deep"), "cat", imagebuild.LayerFile(deepDepth))
	wantOutput(t, "deep image", out, fmt.Sprintf("added by layer %d\n", deepDepth))

	saved := filepath.Join(e.Dir, "saved.tar")
	e.MustNerdctl("save", "-o", saved, imageName)
	e.MustNerdctl("rmi", imageName)
	e.MustNerdctl("load", "-i", saved)
	out = e.MustNerdctl("run", "--rm", "--net", "none", imageName, "sh", "-c", layerCheckScript)
	wantOutput(t, "after save and load", out, layerCheckWant)
	if got := strings.TrimSpace(e.MustCtr("images", "ls", "-q")); !strings.Contains(got, imageName) {
		t.Errorf("%s missing after load: %s", imageName, got)
	}
}
