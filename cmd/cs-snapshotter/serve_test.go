package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
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
	p := &proc{stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, append([]string{"serve"}, args...)...)
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
