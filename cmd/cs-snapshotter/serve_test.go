package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/daemon"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cs-snapshotter-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "cs-snapshotter")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build cs-snapshotter: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	exited chan struct{} // closed when the process has exited, with err set
	err    error
}

// start runs `cs-snapshotter serve args...` and waits until address serves.
func start(t *testing.T, address string, args ...string) *proc {
	t.Helper()
	p := startNoWait(t, args...)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", address); err == nil {
			c.Close()
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("daemon exited: %v\n%s", p.err, p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not serve %s within 10s\n%s", address, p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startNoWait(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(binary, append([]string{"serve"}, args...)...))
}

// startCmd starts cmd (a daemon) and kills it when the test ends.
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// wait returns the exit error of p, failing if it takes over 10 seconds.
func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon still running after 10s\n%s", p.stderr)
		return nil
	}
}

func dirs(t *testing.T) (root, runRoot string) {
	d := t.TempDir()
	return filepath.Join(d, "root"), filepath.Join(d, "run")
}

func TestServe(t *testing.T) {
	root, runRoot := dirs(t)
	addr := filepath.Join(runRoot, "cs-snapshotter.sock")
	p := start(t, addr, "--root", root, "--run-root", runRoot)

	fi, err := os.Stat(addr)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	client, err := daemon.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	if _, err := client.Snapshotter.Stat(ctx, "nothing"); !errdefs.IsNotFound(err) {
		t.Fatalf("stat over the socket: %v", err)
	}

	t.Run("second daemon on the same root", func(t *testing.T) {
		other := filepath.Join(t.TempDir(), "other.sock")
		q := startNoWait(t, "--root", root, "--address", other)
		if err := q.wait(t); err == nil {
			t.Fatal("second daemon started on a held root")
		}
		want := fmt.Sprintf("is in use by pid %d (cs-snapshotter serve on %s)", p.cmd.Process.Pid, addr)
		if !strings.Contains(q.stderr.String(), want) {
			t.Errorf("error does not name the holder: %q, want %q", q.stderr, want)
		}
	})
	t.Run("second daemon on the same socket", func(t *testing.T) {
		q := startNoWait(t, "--root", filepath.Join(t.TempDir(), "root"), "--address", addr)
		if err := q.wait(t); err == nil {
			t.Fatal("second daemon took a live socket")
		}
		if !strings.Contains(q.stderr.String(), "socket "+addr+" is in use by another process") {
			t.Errorf("unclear error: %q", q.stderr)
		}
	})
	// The first daemon is unharmed.
	if _, err := client.Snapshotter.Stat(ctx, "nothing"); !errdefs.IsNotFound(err) {
		t.Fatalf("first daemon after refused starts: %v", err)
	}
}

func TestServeConfigFileAndFlags(t *testing.T) {
	root, runRoot := dirs(t)
	cfgAddr := filepath.Join(runRoot, "from-config.sock")
	flagAddr := filepath.Join(runRoot, "from-flag.sock")
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
root = %q
[grpc]
address = %q
gid = 4242
mode = "0660"
`, root, cfgAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	start(t, flagAddr, "--config", cfg, "--address", flagAddr)
	fi, err := os.Stat(flagAddr)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != 4242 {
		t.Errorf("socket mode %v gid %d, want 0660 and 4242", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
	}
	if _, err := os.Stat(cfgAddr); err == nil {
		t.Error("the flag did not override the file's address")
	}
	if _, err := os.Stat(filepath.Join(root, "metadata.db")); err != nil {
		t.Errorf("root from the file not used: %v", err)
	}
}

func TestServeReplacesStaleSocket(t *testing.T) {
	root, runRoot := dirs(t)
	addr := filepath.Join(runRoot, "cs-snapshotter.sock")
	if err := os.MkdirAll(runRoot, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket file nobody listens on, as a killed daemon leaves
	start(t, addr, "--root", root, "--run-root", runRoot)
}

func TestServeBadStart(t *testing.T) {
	root, runRoot := dirs(t)
	badCfg := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(badCfg, []byte("[grpc]\nadress = \"/x\"\n"), 0o600)
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", badCfg}, `unknown key "grpc.adress" (line 2)`},
		{[]string{"--config", "/nonexistent.toml"}, "/nonexistent.toml"},
		{[]string{"--root", notDir + "/root"}, notDir},
		{[]string{"--root", "relative"}, `root must be an absolute path, got "relative"`},
		{[]string{"--root", root, "--run-root", runRoot, "--log-level", "loud"}, `log level "loud"`},
		{[]string{"--bogus"}, "bogus"},
	} {
		p := startNoWait(t, tc.args...)
		if err := p.wait(t); err == nil {
			t.Errorf("%v: started", tc.args)
		}
		if msg := strings.TrimSpace(p.stderr.String()); !strings.Contains(msg, tc.want) {
			t.Errorf("%v: error %q does not say %q", tc.args, msg, tc.want)
		}
	}
}

// TestServeGracefulStop sends SIGTERM during an ingest: the ingest still
// completes, the daemon exits cleanly within 10 seconds, and the blob is
// there after a restart (the database was closed properly).
func TestServeGracefulStop(t *testing.T) {
	root, runRoot := dirs(t)
	addr := filepath.Join(runRoot, "cs-snapshotter.sock")
	p := start(t, addr, "--root", root, "--run-root", runRoot)
	client, err := daemon.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	blob := bytes.Repeat([]byte("cs-snapshotter "), 100000)
	dgst := digest.FromBytes(blob)

	w, err := client.Content.Writer(ctx, content.WithRef("in-flight"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(blob[:len(blob)/2]); err != nil {
		t.Fatal(err)
	}
	stopAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the daemon begin stopping
	if _, err := w.Write(blob[len(blob)/2:]); err != nil {
		t.Fatalf("in-flight ingest cut off: %v", err)
	}
	if err := w.Commit(ctx, int64(len(blob)), dgst); err != nil {
		t.Fatalf("in-flight commit: %v", err)
	}
	w.Close()
	if err := p.wait(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.stderr)
	}
	t.Logf("stopped %v after SIGTERM", time.Since(stopAt).Round(time.Millisecond))
	if _, err := os.Stat(addr); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}

	start(t, addr, "--root", root, "--run-root", runRoot)
	client2, err := daemon.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client2.Close()
	info, err := client2.Content.Info(ctx, dgst)
	if err != nil || info.Size != int64(len(blob)) {
		t.Fatalf("blob after restart: %+v %v", info, err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts file systems and must run as root")
	}
}

// notifySocket is a fake systemd notification socket.
type notifySocket struct {
	path string
	conn *net.UnixConn
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &notifySocket{path: path, conn: conn}
}

// next returns the next notification, failing after 10 seconds.
func (n *notifySocket) next(t *testing.T) string {
	t.Helper()
	buf := make([]byte, 4096)
	n.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	k, err := n.conn.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:k])
}

func stat(t *testing.T, addr string) error {
	t.Helper()
	client, err := daemon.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "test"), 5*time.Second)
	defer cancel()
	_, err = client.Snapshotter.Stat(ctx, "nothing")
	return err
}

// TestServeNotifiesSystemd: with $NOTIFY_SOCKET set, serve says READY=1
// (and a STATUS) once the socket answers, and STOPPING=1 on SIGTERM.
func TestServeNotifiesSystemd(t *testing.T) {
	root, runRoot := dirs(t)
	addr := filepath.Join(runRoot, "cs-snapshotter.sock")
	n := newNotifySocket(t)
	cmd := exec.Command(binary, "serve", "--root", root, "--run-root", runRoot)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+n.path)
	p := startCmd(t, cmd)

	msg := n.next(t)
	if !strings.Contains(msg, "READY=1") || !strings.Contains(msg, "STATUS=serving on "+addr) {
		t.Fatalf("first notification %q, want READY=1 and STATUS=serving on %s", msg, addr)
	}
	// Ready means ready: the socket answers right away.
	if err := stat(t, addr); !errdefs.IsNotFound(err) {
		t.Fatalf("stat right after READY=1: %v", err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if msg := n.next(t); !strings.Contains(msg, "STOPPING=1") {
		t.Errorf("notification on SIGTERM %q, want STOPPING=1", msg)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v\n%s", err, p.stderr)
	}
}

// TestServeSocketActivation passes serve a listening socket the way
// systemd does ($LISTEN_FDS, $LISTEN_PID, fd 3): it serves on it, creates
// no socket of its own, and leaves the passed socket file to its owner.
func TestServeSocketActivation(t *testing.T) {
	root, runRoot := dirs(t)
	addr := filepath.Join(t.TempDir(), "activated.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	n := newNotifySocket(t)
	// $LISTEN_PID must be the daemon's own pid: set it from a shell that
	// then becomes the daemon.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$@"`, "sh", binary, "serve", "--root", root, "--run-root", runRoot)
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "NOTIFY_SOCKET="+n.path)
	cmd.ExtraFiles = []*os.File{f}
	p := startCmd(t, cmd)
	f.Close()

	if msg := n.next(t); !strings.Contains(msg, "READY=1") || !strings.Contains(msg, addr) {
		t.Fatalf("notification %q, want READY=1 naming %s\n%s", msg, addr, p.stderr)
	}
	if err := stat(t, addr); !errdefs.IsNotFound(err) {
		t.Fatalf("stat on the passed socket: %v\n%s", err, p.stderr)
	}
	if _, err := os.Stat(filepath.Join(runRoot, "cs-snapshotter.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the daemon created its own socket too: %v", err)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v\n%s", err, p.stderr)
	}
	if _, err := os.Stat(addr); err != nil {
		t.Errorf("the passed socket file was removed: %v", err)
	}
}

func unixGet(t *testing.T, socket, path string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	resp, err := c.Get("http://cs" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", path, resp.Status, err)
	}
	return string(body)
}

// TestServeMetricsAndDebug configures [metrics] and [debug] addresses and
// scrapes them after a call.
func TestServeMetricsAndDebug(t *testing.T) {
	root, runRoot := dirs(t)
	addr := filepath.Join(runRoot, "cs-snapshotter.sock")
	metrics := filepath.Join(runRoot, "metrics.sock")
	debug := filepath.Join(runRoot, "debug.sock")
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("root = %q\nrun_root = %q\n[metrics]\naddress = %q\n[debug]\naddress = %q\n", root, runRoot, metrics, debug)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, addr, "--config", cfg)
	if err := stat(t, addr); !errdefs.IsNotFound(err) {
		t.Fatal(err)
	}
	text := unixGet(t, metrics, "/metrics")
	for _, want := range []string{
		`cs_snapshotter_grpc_requests_total{code="NotFound",method="Stat",service="containerd.services.snapshots.v1.Snapshots"} 1`,
		`cs_snapshotter_grpc_errors_total{code="NotFound",method="Stat",service="containerd.services.snapshots.v1.Snapshots"} 1`,
		`cs_snapshotter_grpc_request_duration_seconds_count{method="Stat",service="containerd.services.snapshots.v1.Snapshots"} 1`,
		`cs_snapshotter_snapshots{kind="Committed"} 0`,
		"cs_snapshotter_content_blobs 0",
		"cs_snapshotter_root_bytes ",
		"cs_snapshotter_content_ingest_bytes_total 0",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if text := unixGet(t, debug, "/debug/pprof/"); !strings.Contains(text, "heap") {
		t.Errorf("pprof index: %q", text)
	}

	t.Run("metrics address in use", func(t *testing.T) {
		q := startNoWait(t, "--config", cfg, "--root", filepath.Join(t.TempDir(), "root"), "--address", filepath.Join(t.TempDir(), "other.sock"))
		if err := q.wait(t); err == nil {
			t.Fatal("started on a metrics socket in use")
		}
		if msg := strings.TrimSpace(q.stderr.String()); strings.Contains(msg, "\n") || !strings.Contains(msg, "metrics endpoint: socket "+metrics+" is in use by another process") {
			t.Errorf("error %q", msg)
		}
	})

	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v\n%s", err, p.stderr)
	}
	for _, s := range []string{metrics, debug} {
		if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", s, err)
		}
	}
}

// mountReadOnly bind-mounts a new directory onto itself read-only.
func mountReadOnly(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	if err := syscall.Mount("", dir, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestServeFailedStartsSayWhy: each failed start prints one line naming
// its cause.
func TestServeFailedStartsSayWhy(t *testing.T) {
	requireRoot(t)
	ro := mountReadOnly(t)
	_, runRoot := dirs(t)

	// overlayfs cannot use an overlayfs as its upper directory: a root
	// inside an overlay mount is one overlay cannot work on.
	ov := t.TempDir()
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(ov, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	merged := filepath.Join(ov, "merged")
	if err := syscall.Mount("overlay", merged, "overlay", 0, fmt.Sprintf("lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work", ov, ov, ov)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(merged, syscall.MNT_DETACH) })

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"root on a read-only mount", []string{"--root", ro}, "root " + ro + " is not writable: read-only file system"},
		{"root under a read-only mount", []string{"--root", ro + "/root"}, "root " + ro + "/root cannot be created: mkdir " + ro + "/root: read-only file system"},
		{"overlayfs unsupported", []string{"--root", merged + "/root"}, "overlayfs is not usable on " + merged + "/root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startNoWait(t, append(tc.args, "--run-root", runRoot)...)
			if err := p.wait(t); err == nil {
				t.Fatal("started")
			}
			msg := strings.TrimSpace(p.stderr.String())
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
				t.Errorf("error %q, want one line saying %q", msg, tc.want)
			}
		})
	}
}

// TestServeBadImageStore: a daemon whose additional_image_stores names a
// directory that is not a cs-snapshotter root (or nothing) does not start,
// says so in one line naming the path and the setting, leaves no socket,
// and leaves its root as it was: the daemon starts on it without the
// setting and still has what it had.
func TestServeBadImageStore(t *testing.T) {
	root, runRoot := dirs(t)
	addr := filepath.Join(runRoot, "cs-snapshotter.sock")
	ctx := namespaces.WithNamespace(context.Background(), "test")
	blob := []byte("kept across a failed start")
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(blob), Size: int64(len(blob))}

	config := func(extra string) string {
		t.Helper()
		cfg := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf("root = %q\nrun_root = %q\n%s", root, runRoot, extra)), 0o600); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	good := config("")
	serveAndCheck := func(write bool) {
		t.Helper()
		p := start(t, addr, "--config", good)
		client, err := daemon.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		if write {
			if err := content.WriteBlob(ctx, client.Content, "kept", bytes.NewReader(blob), desc); err != nil {
				t.Fatal(err)
			}
		}
		if info, err := client.Content.Info(ctx, desc.Digest); err != nil || info.Size != desc.Size {
			t.Errorf("blob: %+v %v", info, err)
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.wait(t); err != nil {
			t.Fatalf("exit: %v\n%s", err, p.stderr)
		}
	}
	serveAndCheck(true)

	empty := t.TempDir()
	// The layout of a root, but its database is not one.
	notRoot := t.TempDir()
	for _, d := range []string{"snapshots", "content/blobs"} {
		if err := os.MkdirAll(filepath.Join(notRoot, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(notRoot, "metadata.db"), []byte("not a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path string }{
		{"empty directory", empty},
		{"a root's layout, no database", notRoot},
		{"nothing there", filepath.Join(empty, "nothing")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startNoWait(t, "--config", config(fmt.Sprintf("additional_image_stores = [%q]\n", tc.path)))
			if err := p.wait(t); err == nil {
				t.Fatal("started")
			}
			msg := strings.TrimSpace(p.stderr.String())
			t.Logf("error: %s", msg)
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.path) || !strings.Contains(msg, "additional_image_stores") {
				t.Errorf("error %q, want one line naming %s and additional_image_stores", msg, tc.path)
			}
			if _, err := os.Stat(addr); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket left behind: %v", err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(empty, "metadata.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the daemon wrote into the directory it was to read: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(notRoot, "metadata.db")); err != nil || string(b) != "not a database" {
		t.Errorf("the daemon changed the file it was to read: %q %v", b, err)
	}
	serveAndCheck(false)
}
