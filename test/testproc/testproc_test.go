package testproc

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestListFindsParent(t *testing.T) {
	procs := List()
	var parent *Info
	for i, p := range procs {
		if p.PID == os.Getpid() {
			t.Fatalf("List lists the calling process %d", p.PID)
		}
		if p.PID == os.Getppid() {
			parent = &procs[i]
		}
	}
	if parent == nil {
		t.Fatalf("List does not list this test's parent %d (%d processes)", os.Getppid(), len(procs))
	}
	if parent.State == "" || len(parent.Args) == 0 || parent.Args[0] == "" {
		t.Errorf("parent %+v: want a state and a command line", *parent)
	}
}

func TestShims(t *testing.T) {
	procs := []Info{
		{PID: 10, Args: []string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "default", "-address", "/tmp/x/containerd.sock"}},
		{PID: 11, Args: []string{"/usr/bin/containerd-shim-runc-v2", "-address", "/other/containerd.sock", "-bundle", "/tmp/x/state/b"}},
		{PID: 12, Args: []string{"/usr/bin/containerd-shim-runc-v2", "-address", "/other/containerd.sock"}},
		{PID: 13, Args: []string{"containerd", "--config", "/tmp/x/containerd.toml"}},
		{PID: 14, Args: []string{""}},
	}
	var got []int
	for _, p := range Shims(procs, "/tmp/x/containerd.sock", "/tmp/x") {
		got = append(got, p.PID)
	}
	if len(got) != 2 || got[0] != 10 || got[1] != 11 {
		t.Errorf("Shims = %v, want [10 11]", got)
	}
}

func TestStartWaitSocketStop(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "sleep.log")
	cmd, logf, err := Start("sleep", logPath, os.Environ(), true, "sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	if pgid, _ := unix.Getpgid(cmd.Process.Pid); pgid != cmd.Process.Pid {
		t.Errorf("process group %d, want its own (%d)", pgid, cmd.Process.Pid)
	}

	// A socket that never appears: the timeout's dial error.
	sock := filepath.Join(dir, "s.sock")
	if err := WaitSocket(sock, 200*time.Millisecond, 20*time.Millisecond, done); err == nil || errors.Is(err, ErrExited) {
		t.Errorf("WaitSocket on no socket = %v, want a dial error", err)
	}
	// One that accepts connections.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := WaitSocket(sock, time.Second, 20*time.Millisecond, done); err != nil {
		t.Errorf("WaitSocket on a listening socket = %v", err)
	}

	if _, killed := Stop(cmd, done, 10*time.Second); killed {
		t.Errorf("sleep needed SIGKILL")
	}
	// The process is gone: ErrExited before the timeout.
	start := time.Now()
	if err := WaitSocket(filepath.Join(dir, "none.sock"), 10*time.Second, 20*time.Millisecond, done); !errors.Is(err, ErrExited) || time.Since(start) > 5*time.Second {
		t.Errorf("WaitSocket after exit = %v after %v, want ErrExited at once", err, time.Since(start))
	}
	b, err := os.ReadFile(logPath)
	if err != nil || !strings.Contains(string(b), "===== ") || !strings.Contains(string(b), "sleep 30") {
		t.Errorf("log %q (%v): want the banner line", b, err)
	}
	if _, _, err := Start("nothing", filepath.Join(dir, "n.log"), nil, false, filepath.Join(dir, "no-such-binary")); err == nil || !strings.Contains(err.Error(), "start nothing") {
		t.Errorf("Start of a missing binary = %v", err)
	}
}

func TestUnmountUnder(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	outer := filepath.Join(dir, "a dir")     // a space: escaped as \040 in mountinfo
	inner := filepath.Join(outer, "b")       // a bind mount on the tmpfs
	src := filepath.Join(dir, "bind-source") // not a mount point
	for _, d := range []string{outer, src} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", outer, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(inner, unix.MNT_DETACH); _ = unix.Unmount(outer, unix.MNT_DETACH) })
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(src, inner, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	mps, err := MountsUnder(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(mps) != 2 || mps[0] != inner || mps[1] != outer {
		t.Fatalf("MountsUnder = %q, want [%q %q] (deepest first)", mps, inner, outer)
	}
	if mps, _ := MountsUnder(src); len(mps) != 0 {
		t.Errorf("MountsUnder(%s) = %q, want none", src, mps)
	}
	if err := UnmountUnder(dir); err != nil {
		t.Fatal(err)
	}
	if mps, err := MountsUnder(dir); err != nil || len(mps) != 0 {
		t.Errorf("after UnmountUnder: %q, %v; want none", mps, err)
	}
}
