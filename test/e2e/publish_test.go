package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

// TestPublishErrors: `cs-snapshotter publish` refuses what it cannot
// publish (an unknown image, one without a manifest, one without a name,
// a snapshotter containerd does not have, a containerd that is not there)
// with exit status 1 and a message naming the cause, and leaves
// containerd's images and snapshots and the store's images as they were,
// also after containerd's GC took what the failure left. One of them fails
// in containerd's unpack, after the image record was made: that record is
// gone again.
// Then it publishes the imported image (of the writable store, whose
// blobs the daemon has) under a second name, which runs.
func TestPublishErrors(t *testing.T) {
	if baseline {
		t.Skip("publish is cs-snapshotter's")
	}
	e := NewEnv(t)
	e.ImportImage(imageArchive)
	imageID := image.Config.Digest.Encoded()
	runDir := filepath.Join(e.Dir, "cli-run")

	cs := func(args ...string) (stdout, stderr string, err error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		args = append([]string{"--graph", e.CSRoot, "--run", runDir}, args...)
		cmd := exec.CommandContext(ctx, csBin, args...)
		var o, s bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &s
		start := time.Now()
		err = cmd.Run()
		t.Logf("$ cs-snapshotter %s  (%v, err=%v)", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), err)
		return o.String(), s.String(), err
	}
	mustCS := func(args ...string) string {
		t.Helper()
		out, errOut, err := cs(args...)
		if err != nil {
			t.Fatalf("cs-snapshotter %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}
	// state is what no failed publish may change.
	type state struct{ images, snapshots, store string }
	current := func() state {
		t.Helper()
		return state{
			images:    e.MustCtr("images", "ls", "-q"),
			snapshots: e.MustCtr("snapshots", "--snapshotter", "cs", "ls"),
			store:     mustCS("images", "--json"),
		}
	}

	// A store image with no manifest: made with the CLI, on a layer.
	layer := strings.TrimSpace(strings.SplitN(mustCS("create-layer", "-n", "publish-nomanifest-layer"), "\n", 2)[0])
	noManifest := strings.TrimSpace(strings.SplitN(mustCS("create-image", "-n", "example.com/nomanifest:1", layer), "\n", 2)[0])
	unnamed := strings.TrimSpace(strings.SplitN(mustCS("create-image", layer), "\n", 2)[0])
	if layer == "" || noManifest == "" || unnamed == "" {
		t.Fatalf("create-layer %q, create-image %q", layer, noManifest)
	}
	// A store image whose manifest and config are there but whose layer
	// no store and no blob has: publish gets as far as unpacking it.
	noBlobs := strings.TrimSpace(strings.SplitN(mustCS("create-image", "-n", "example.com/noblobs:1", layer), "\n", 2)[0])
	config, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromString("publish: a diff ID nobody has")}},
	})
	manifest, _ := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers:    []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("publish: a blob nobody has"), Size: 123}},
	})
	for key, data := range map[string][]byte{"manifest": manifest, digest.FromBytes(config).String(): config} {
		f := filepath.Join(e.Dir, "publish-data")
		if err := os.WriteFile(f, data, 0o644); err != nil {
			t.Fatal(err)
		}
		mustCS("set-image-data", "-f", f, noBlobs, key)
	}

	nowhere := filepath.Join(e.Dir, "no-containerd.sock")
	// A socket file nobody listens on, as a killed containerd leaves.
	l, err := net.Listen("unix", filepath.Join(e.Dir, "dead-containerd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	dead := filepath.Join(e.Dir, "dead-containerd.sock")

	// containerd's GC removes the import's index blob (no image refers to
	// it) in the background, which the store's listing of the image
	// reflects: let it finish first, and after each failure let it remove
	// what that left, so that a blob the store still needs going would
	// show (`images rm --sync` runs a GC and waits for it).
	settleGC := func() {
		t.Helper()
		e.MustCtr("images", "tag", imageName, "example.com/gc-trigger:1")
		e.MustCtr("images", "rm", "--sync", "example.com/gc-trigger:1")
	}
	settleGC()

	before := current()
	if !strings.Contains(before.store, imageID) || !strings.Contains(before.images, imageName) {
		t.Fatalf("the imported image %s (%s) is missing:\n%s\n%s", imageID, imageName, before.store, before.images)
	}
	for _, tc := range []struct {
		name  string
		args  []string
		wants []string
	}{
		{"unknown image", []string{"example.com/nothere:1"}, []string{"example.com/nothere:1", "image not known"}},
		{"no manifest", []string{"example.com/nomanifest:1"}, []string{"image " + noManifest + " has no manifest"}},
		{"no manifest, named", []string{"--name", "example.com/nomanifest-named:1", noManifest}, []string{"image " + noManifest + " has no manifest"}},
		{"no name", []string{imageID}, []string{"image " + imageID + " has no name to give it in containerd"}},
		{"no name, no manifest", []string{unnamed}, []string{"image " + unnamed + " has no name to give it in containerd"}},
		{"wrong snapshotter", []string{"--snapshotter", "nosuchsnapshotter", "--name", "example.com/wrongsn:1", imageID}, []string{`snapshotter "nosuchsnapshotter"`, "not loaded"}},
		{"no containerd socket", []string{"--address", nowhere, "--name", "example.com/nowhere:1", imageID}, []string{"connect to containerd at " + nowhere, "no such file or directory"}},
		{"dead containerd socket", []string{"--address", dead, "--name", "example.com/dead:1", imageID}, []string{"connect to containerd at " + dead}},
		{"layer blob nowhere", []string{"example.com/noblobs:1"}, []string{"unpack example.com/noblobs:1", digest.FromString("publish: a blob nobody has").String()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"publish"}, tc.args...)
			if !strings.Contains(strings.Join(tc.args, " "), "--address") {
				args = append([]string{"publish", "--address", e.CtrdSocket}, tc.args...)
			}
			out, errOut, err := cs(args...)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Errorf("exit: %v, want status 1\nstdout: %s\nstderr: %s", err, out, errOut)
			}
			msg := strings.TrimSpace(errOut)
			t.Logf("stderr: %s", msg)
			if strings.Contains(msg, "\n") {
				t.Errorf("error of more than one line:\n%s", msg)
			}
			for _, w := range tc.wants {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			settleGC()
			after := current()
			if after.images != before.images {
				t.Errorf("containerd's images changed:\nbefore %s\nafter  %s", before.images, after.images)
			}
			if after.snapshots != before.snapshots {
				t.Errorf("containerd's snapshots changed:\nbefore %s\nafter  %s", before.snapshots, after.snapshots)
			}
			if after.store != before.store {
				t.Errorf("the store's images changed:\nbefore %s\nafter  %s", before.store, after.store)
			}
		})
	}
	if t.Failed() {
		return
	}

	// The imported image, under a second name: its blobs are the
	// daemon's, its snapshots containerd's already.
	const again = "example.com/again:1"
	if out := mustCS("publish", "--address", e.CtrdSocket, "--name", again, imageID); out != again+"\n" {
		t.Errorf("publish printed %q, want %q", out, again+"\n")
	}
	after := current()
	if want := strings.TrimSpace(before.images + "\n" + again); !sameLines(after.images, want) {
		t.Errorf("containerd's images after publish:\n%s\nwant\n%s", after.images, want)
	}
	if after.store != before.store {
		t.Errorf("publish changed the store's images:\nbefore %s\nafter  %s", before.store, after.store)
	}
	if after.snapshots != before.snapshots {
		t.Errorf("publish of an unpacked image changed containerd's snapshots:\nbefore %s\nafter  %s", before.snapshots, after.snapshots)
	}
	out := e.MustCtr("run", "--rm", "--snapshotter", "cs", again, e.ID("again"), "cat", imagebuild.HelloPath)
	wantOutput(t, "ctr run on the published image", out, imagebuild.HelloText)
	if out := e.MustCtr("images", "check", "--snapshotter", "cs", "-q"); !strings.Contains("\n"+out, "\n"+again+"\n") {
		t.Errorf("`ctr images check` does not report %s complete and unpacked:\n%s", again, out)
	}
	// The original name still runs too.
	out = e.MustCtr("run", "--rm", "--snapshotter", "cs", imageName, e.ID("orig"), "cat", imagebuild.HelloPath)
	wantOutput(t, "ctr run on the imported image", out, imagebuild.HelloText)
}

// sameLines reports whether a and b hold the same non-empty lines, in any
// order.
func sameLines(a, b string) bool {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			count[l]++
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			count[l]--
		}
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}
