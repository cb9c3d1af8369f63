// Package testproc runs the daemons that the end-to-end tests
// (test/e2e) and the benchmarks (test/bench) start, cs-snapshotter and
// containerd, and cleans up after them: it starts a daemon with its output
// in a log file, waits for its socket, stops it, lists the machine's
// processes to find the containerd shims it left behind, and unmounts what
// is left under a directory. It is test support, not product code.
package testproc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Start starts args[0] with the arguments args[1:] and the environment env,
// in a process group of its own and SIGKILLed should the calling process
// die, with its stdout and stderr appended to logPath (created if need be).
// With banner, a line with the time and the command line goes into the log
// first. name is only for the error. The caller waits for the command and
// then closes the returned log file.
func Start(name, logPath string, env []string, banner bool, args ...string) (*exec.Cmd, *os.File, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	if banner {
		fmt.Fprintf(logf, "\n===== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	return cmd, logf, nil
}

// ErrExited is what WaitSocket returns when the process exited before its
// socket accepted a connection.
var ErrExited = errors.New("process exited")

// WaitSocket waits until the unix socket sock accepts a connection, trying
// every poll. It returns nil once it does, ErrExited as soon as exited is
// closed (a nil channel never is), and the last dial error once timeout
// has passed.
func WaitSocket(sock string, timeout, poll time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return ErrExited
		default:
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(poll)
	}
}

// Stop sends cmd's process SIGTERM and waits up to timeout for done (closed
// by whoever waits for cmd) to be closed, then SIGKILLs it and waits for
// done. It returns how long the process took to exit and whether it had to
// be killed.
func Stop(cmd *exec.Cmd, done <-chan struct{}, timeout time.Duration) (time.Duration, bool) {
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return time.Since(start), false
	case <-time.After(timeout):
	}
	_ = cmd.Process.Kill()
	<-done
	return time.Since(start), true
}

// Info is one process on the machine.
type Info struct {
	PID, PPID int
	State     string   // the state letter of /proc/PID/stat (R, S, Z, ...)
	Args      []string // the command line; [""] for kernel threads
}

// List returns the processes on the machine (pid, ppid, state and command
// line), read from /proc, leaving out the calling process.
func List() []Info {
	var out []Info
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cmdline, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		out = append(out, Info{PID: pid, PPID: ppid, State: f[0], Args: args})
	}
	return out
}

// Shims returns the containerd shims among procs that belong to the
// containerd serving ctrdSock: those with ctrdSock, or a path under dir, on
// their command line.
func Shims(procs []Info, ctrdSock, dir string) []Info {
	var out []Info
	for _, p := range procs {
		if len(p.Args) == 0 || !strings.Contains(filepath.Base(p.Args[0]), "containerd-shim") {
			continue
		}
		for _, a := range p.Args {
			if a == ctrdSock || strings.HasPrefix(a, dir+"/") {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// KillWithChildren SIGKILLs the children of pid found in procs, then pid.
func KillWithChildren(procs []Info, pid int) {
	for _, c := range procs {
		if c.PPID == pid {
			_ = syscall.Kill(c.PID, syscall.SIGKILL)
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// UnmountUnder lazily unmounts every mount point at or below dir, deepest
// first, going over the mount table up to five times (unmounting one can
// uncover another).
func UnmountUnder(dir string) error {
	var errs []error
	for range 5 {
		mps, err := MountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		errs = errs[:0]
		for _, mp := range mps {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
			}
		}
	}
	return errors.Join(errs...)
}

// MountsUnder lists the mount points at or below dir in
// /proc/self/mountinfo, deepest first.
func MountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
