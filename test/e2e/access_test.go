package e2e

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

// nobody runs a shell script as the unprivileged user nobody (65534), with
// no supplementary groups, through setpriv, returning its output.
func nobody(t *testing.T, script string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", script, "sh"}, args...)...)
	cmd.Env = append(cleanEnv(), "HOME=/")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestUnprivilegedAccess: an unprivileged user (nobody, through setpriv)
// can reach none of the daemon's sockets (gRPC, and the metrics and pprof
// endpoints when they are on unix sockets) and can read nothing of the
// root: not the database, the lock, the blobs, the snapshots' files, the
// containers' directories, the run root. The directories the test itself
// made are opened (0755) so that only the daemon's and the store's own
// modes protect, and the root is checked both as the daemon creates it and
// pre-created 0755 (a mount point, a packaging default).
func TestUnprivilegedAccess(t *testing.T) {
	requireDaemon(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatalf("setpriv (util-linux) is needed: %v", err)
	}
	e := NewEnv(t)
	// The side endpoints on unix sockets too.
	e.StopDaemon()
	metrics, debug := filepath.Join(e.Dir, "metrics.sock"), filepath.Join(e.Dir, "debug.sock")
	if err := os.WriteFile(e.CSConfig, []byte(fmt.Sprintf("[metrics]\naddress = %q\n[debug]\naddress = %q\n", metrics, debug)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.StartDaemon()
	e.ImportImage(imageArchive)
	running := e.ID("running")
	e.MustCtr("run", "-d", "--snapshotter", e.Snapshotter, imageName, running, "sleep", "300")

	storeRun := filepath.Join(e.Dir, "store-run")
	s, err := storage.GetStore(storage.StoreOptions{GraphRoot: e.CSRoot, RunRoot: storeRun})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)
	layer, _, err := s.PutLayer("", "", []string{"secret-layer"}, "", false, nil, layerStream(7, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetLayerBigData(layer.ID, "secret", strings.NewReader("secret big data")); err != nil {
		t.Fatal(err)
	}
	img, err := s.CreateImage("", []string{"secret-image"}, layer.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := s.CreateContainer("", []string{"secret-container"}, img.ID, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetContainerDirectoryFile(ctr.ID, "secret", []byte("container data")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Mount(ctr.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Mount(layer.ID, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(storeRun, 0o755); err != nil {
		t.Fatal(err)
	}

	probe := func(t *testing.T) {
		// The sockets: connecting is refused.
		for _, sock := range []string{e.CSSocket, metrics, debug} {
			out, err := nobody(t, `exec ctr --address "$1" --connect-timeout 3s version`, sock)
			if err == nil || !strings.Contains(out, "permission denied") {
				t.Errorf("nobody connecting to %s: want permission denied, got (%v):\n%s", sock, err, out)
			} else {
				t.Logf("nobody connecting to %s: %s", filepath.Base(sock), lastLine(out))
			}
		}
		// Every file and directory under the roots: unreadable.
		var paths []string
		for _, root := range []string{e.CSRoot, e.CSRunRoot, storeRun} {
			filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err != nil {
					return nil
				}
				if d.Type()&os.ModeSocket != 0 || p == root {
					return nil // the roots' own modes are the admin's (or this test's) choice
				}
				if strings.HasPrefix(p, filepath.Join(storeRun, "mounts")+"/") && p != filepath.Join(storeRun, "mounts") {
					return filepath.SkipDir // the mounted layers themselves
				}
				paths = append(paths, p)
				return nil
			})
		}
		out, err := nobody(t, `for p in "$@"; do
	if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && echo "LISTED $p"
	elif cat "$p" >/dev/null 2>&1; then echo "READ $p"; fi
done; echo done`, paths...)
		if err != nil || !strings.HasSuffix(out, "done\n") {
			t.Fatalf("probing as nobody: %v\n%s", err, out)
		}
		if got := strings.TrimSuffix(out, "done\n"); got != "" {
			t.Errorf("nobody can read what the daemon and the store keep:\n%s", got)
		}
		t.Logf("nobody could read any of %d paths under the roots", len(paths))
		// The store's CLI as nobody gets nothing either.
		if out, err := nobody(t, `exec "$1" --graph "$2" --run /tmp layers`, csBin, e.CSRoot); err == nil {
			t.Errorf("cs-snapshotter layers as nobody succeeded:\n%s", out)
		}
	}
	t.Run("as created", func(t *testing.T) {
		for _, d := range []string{e.CSRoot, e.CSRunRoot} {
			st, err := os.Stat(d)
			if errors.Is(err, os.ErrNotExist) {
				continue // the run root holds only the socket, which is elsewhere here
			}
			if err != nil || st.Mode().Perm()&0o066 != 0 {
				t.Errorf("%s has mode %v (%v); want no read or write for group and others", d, st.Mode(), err)
			}
		}
		probe(t)
	})
	t.Run("root pre-created 0755", func(t *testing.T) {
		for _, d := range []string{e.CSRoot, e.CSRunRoot} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		e.StopDaemon()
		e.StartDaemon()
		probe(t)
	})
	t.Run("mounts", func(t *testing.T) { checkMountsExposure(t, e, s, layer.ID, ctr.ID) })
}

// checkMountsExposure: the mounts the daemon hands out (to containerd, to
// the store) never expose another snapshot's files read-write. For every
// active snapshot and view: the directories mounted writable (upperdir,
// workdir, a read-write bind) are its own, belong to no other snapshot and
// are never another's lower; a view mounts nothing writable; a committed
// snapshot has no mounts for containerd. The store's mount of a read-only layer is
// read-only on the host.
func checkMountsExposure(t *testing.T, e *Env, s storage.Store, roLayer, container string) {
	client := e.DialDaemon()
	// A view through containerd too.
	e.MustCtr("snapshots", "--snapshotter", e.Snapshotter, "view", "access-view", image.ChainIDs()[len(image.Layers)-1].String())
	e.MustCtr("snapshots", "--snapshotter", e.Snapshotter, "label", "access-view", "containerd.io/gc.root=test")
	// Asked as containerd asks: the store alone gets read-only mounts of a
	// committed snapshot (for read-only image stores).
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), 30*time.Second)
	defer cancel()
	writable := map[string][]string{} // dir -> snapshots mounting it writable
	readonly := map[string][]string{} // dir -> snapshots mounting it read-only
	kinds := map[string]int{}
	for name, info := range client.Snapshots(t) {
		kinds[info.Kind.String()]++
		mounts, err := client.Snapshotter.Mounts(ctx, name)
		if info.Kind == snapshots.KindCommitted {
			if err == nil {
				t.Errorf("Mounts of committed snapshot %s answered %+v; want an error", name, mounts)
			}
			continue
		}
		if err != nil {
			t.Errorf("Mounts(%s): %v", name, err)
			continue
		}
		for _, m := range mounts {
			rw := !contains(m.Options, "ro")
			switch m.Type {
			case "bind", "rbind":
				if rw {
					writable[m.Source] = append(writable[m.Source], name)
				} else {
					readonly[m.Source] = append(readonly[m.Source], name)
				}
			case "overlay":
				for _, o := range m.Options {
					k, v, _ := strings.Cut(o, "=")
					switch k {
					case "upperdir", "workdir":
						writable[v] = append(writable[v], name)
					case "lowerdir":
						for _, l := range strings.Split(v, ":") {
							readonly[l] = append(readonly[l], name)
						}
					}
				}
			default:
				t.Errorf("snapshot %s: unexpected mount type %q", name, m.Type)
			}
		}
		if info.Kind == snapshots.KindView {
			for _, m := range mounts {
				if !contains(m.Options, "ro") && m.Type != "overlay" || m.Type == "overlay" && strings.Contains(strings.Join(m.Options, ","), "upperdir=") {
					t.Errorf("view %s mounts something writable: %+v", name, m)
				}
			}
		}
	}
	for dir, users := range writable {
		if len(users) > 1 {
			t.Errorf("%s is mounted writable by %d snapshots: %v", dir, len(users), users)
		}
		if ro := readonly[dir]; len(ro) > 0 {
			t.Errorf("%s is writable in %v and a read-only layer of %v", dir, users, ro)
		}
	}
	t.Logf("mounts of %v snapshots: %d directories writable (each by its own snapshot only), %d read-only", kinds, len(writable), len(readonly))

	// On the host: the store's mount of a read-only layer refuses writes;
	// the container's takes them in its own upper directory only.
	roDir, err := s.Mount(roLayer, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unmount(roLayer, false)
	if err := os.WriteFile(filepath.Join(roDir, "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing into the store's mount of read-only layer %s: %v, want EROFS", roLayer, err)
	}
	rwDir, err := s.Mount(container, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unmount(container, false)
	if err := os.WriteFile(filepath.Join(rwDir, "written-by-container"), []byte("x"), 0o644); err != nil {
		t.Fatalf("writing into the container's mount: %v", err)
	}
	// The file landed in the container's own directory, not in its image's
	// layer.
	u := storage.Uncompressed
	rc, err := s.Diff("", roLayer, &storage.DiffOptions{Compression: &u})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files, err := tarNames(rc)
	if err != nil {
		t.Fatal(err)
	}
	if contains(files, "written-by-container") {
		t.Errorf("a file written in the container shows in its image's layer %s: %v", roLayer, files)
	}
	// The kernel's view of that mount: read-only.
	out, err := exec.Command("findmnt", "-rn", "-o", "TARGET,OPTIONS").Output()
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, roDir+" ") && !strings.Contains(line, "ro,") && !strings.HasSuffix(line, " ro") {
				t.Errorf("the store's mount of a read-only layer is not mounted read-only: %s", line)
			}
		}
	}
	e.MustCtr("snapshots", "--snapshotter", e.Snapshotter, "rm", "access-view")
}

// tarNames lists the entries of a tar stream.
func tarNames(r io.Reader) ([]string, error) {
	var names []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, nil
		}
		if err != nil {
			return names, err
		}
		names = append(names, strings.TrimPrefix(h.Name, "./"))
	}
}
