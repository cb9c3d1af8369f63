package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cs-snapshotter/cs-snapshotter/test/testproc"
)

const (
	// socketTimeout bounds how long a daemon may take to serve its socket.
	socketTimeout = 30 * time.Second
	// stopTimeout is how long a daemon gets between SIGTERM and SIGKILL.
	stopTimeout = 10 * time.Second
	// commandTimeout bounds every ctr/nerdctl invocation.
	commandTimeout = 2 * time.Minute
	// logTailLines is how much of each daemon log a failing test prints.
	logTailLines = 150
)

// proc is a daemon the harness started.
type proc struct {
	name    string
	args    []string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, valid after done
}

// startProc starts a daemon with its stdout and stderr appended to logPath.
func startProc(name, logPath string, args ...string) (*proc, error) {
	// Own process group, and killed if the test binary dies.
	cmd, logf, err := testproc.Start(name, logPath, cleanEnv(), true, args...)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, args: args, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	live.Store(cmd.Process.Pid, p)
	go func() {
		p.err = cmd.Wait()
		live.Delete(cmd.Process.Pid)
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// live holds the daemons started by startProc that have not been waited
// for yet; reapOrphans must leave those to exec.Cmd.Wait.
var live sync.Map

// reapOrphans waits for exited processes that were re-parented to the test
// binary (TestMain makes it a child subreaper, so that shims and container
// processes orphaned by a stopped containerd end up here rather than as
// zombies of an init that may not reap them).
func reapOrphans() {
	self := os.Getpid()
	for _, p := range testproc.List() {
		if p.PPID != self || p.State != "Z" {
			continue
		}
		if _, ok := live.Load(p.PID); ok {
			continue
		}
		var ws unix.WaitStatus
		_, _ = unix.Wait4(p.PID, &ws, unix.WNOHANG, nil)
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to d for the process to exit on its own.
func (p *proc) waitExit(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// stop sends SIGTERM and waits up to timeout, then SIGKILLs. It returns how
// long the process took to exit after SIGTERM, and an error if it had to be
// killed or exited with a failure status.
func (p *proc) stop(timeout time.Duration) (time.Duration, error) {
	if p.exited() {
		return 0, p.exitError()
	}
	took, killed := testproc.Stop(p.cmd, p.done, timeout)
	if !killed {
		return took, p.exitError()
	}
	return took, fmt.Errorf("%s (pid %d) did not exit within %v of SIGTERM; killed", p.name, p.cmd.Process.Pid, timeout)
}

func (p *proc) exitError() error {
	if p.err != nil {
		return fmt.Errorf("%s (pid %d) exited: %v", p.name, p.cmd.Process.Pid, p.err)
	}
	return nil
}

// waitSocket waits until a unix socket accepts connections, failing early
// when p exits.
func waitSocket(p *proc, sock string, timeout time.Duration) error {
	var exited <-chan struct{}
	if p != nil {
		exited = p.done
	}
	switch err := testproc.WaitSocket(sock, timeout, 50*time.Millisecond, exited); {
	case err == nil:
		return nil
	case errors.Is(err, testproc.ErrExited):
		return fmt.Errorf("%s exited before serving %s: %v", p.name, sock, p.err)
	default:
		return fmt.Errorf("%s did not serve %s within %v: %v", p.name, sock, timeout, err)
	}
}

// cleanEnv is the environment for everything the harness runs: no
// CONTAINERD_*/NERDCTL_* variables of the caller leak in, and /usr/local/bin
// (where install-deps.sh puts the tools) is on PATH.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CONTAINERD_") || strings.HasPrefix(kv, "NERDCTL_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Env is one cs-snapshotter daemon plus one containerd using it, in a fresh
// temporary directory. Everything is stopped, unmounted and removed when the
// test ends; logs are printed if it failed.
type Env struct {
	t   testing.TB
	Dir string

	// cs-snapshotter
	CSRoot, CSRunRoot, CSSocket, CSLog, CSConfig string
	// containerd
	CtrdRoot, CtrdState, CtrdSocket, CtrdConfig, CtrdLog string
	// nerdctl
	NerdctlRoot, NerdctlTOML string

	// Snapshotter is the snapshotter name to pass to ctr and nerdctl: "cs",
	// or "overlayfs" in baseline mode.
	Snapshotter string

	cs, ctrd *proc
	// csStopped is set while the harness itself stopped cs-snapshotter.
	csStopped bool
	// daemonDown are the times the harness had cs-snapshotter stopped (plus
	// a reconnection grace period); containerd may legitimately log
	// errors about it then.
	daemonDown []window
	seq        int
	mu         sync.Mutex
	// expectedLog are containerd log lines a test expects (see
	// ExpectContainerdLog); checkLogs does not count them as problems.
	expectedLog []string
}

// ExpectContainerdLog tells checkLogs that containerd lines containing all
// of parts are expected in this test, e.g. the warning containerd's GC logs
// when the daemon refuses to remove a snapshot the store holds.
func (e *Env) ExpectContainerdLog(parts ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.expectedLog = append(e.expectedLog, strings.Join(parts, "\x00"))
}

func (e *Env) expected(line string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, exp := range e.expectedLog {
		all := true
		for _, part := range strings.Split(exp, "\x00") {
			all = all && strings.Contains(line, part)
		}
		if all {
			return true
		}
	}
	return false
}

type window struct{ from, to time.Time }

// reconnectGrace is how long after a daemon restart containerd may still
// report failures from its proxy connection (its backoff is at most 3 s).
const reconnectGrace = 5 * time.Second

// NewEnv starts cs-snapshotter and containerd for one test.
func NewEnv(t testing.TB) *Env {
	t.Helper()
	requireSetup(t)
	dir, err := os.MkdirTemp(os.Getenv("CS_E2E_TMPDIR"), "cse2e-")
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{
		t:           t,
		Dir:         dir,
		CSRoot:      filepath.Join(dir, "cs-root"),
		CSRunRoot:   filepath.Join(dir, "cs-run"),
		CSSocket:    filepath.Join(dir, "cs.sock"),
		CSLog:       filepath.Join(dir, "cs-snapshotter.log"),
		CSConfig:    filepath.Join(dir, "cs-snapshotter.toml"),
		CtrdRoot:    filepath.Join(dir, "containerd-root"),
		CtrdState:   filepath.Join(dir, "containerd-state"),
		CtrdSocket:  filepath.Join(dir, "containerd.sock"),
		CtrdConfig:  filepath.Join(dir, "containerd.toml"),
		CtrdLog:     filepath.Join(dir, "containerd.log"),
		NerdctlRoot: filepath.Join(dir, "nerdctl"),
		NerdctlTOML: filepath.Join(dir, "nerdctl.toml"),
		Snapshotter: "cs",
	}
	if baseline {
		e.Snapshotter = "overlayfs"
	}
	t.Cleanup(e.cleanup)

	// nerdctl reads /etc/nerdctl/nerdctl.toml unless told otherwise.
	if err := os.WriteFile(e.NerdctlTOML, []byte("# empty: defaults only\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The daemon gets its own config file so that /etc/cs-snapshotter/
	// config.toml does not leak in: the defaults, or CS_E2E_DAEMON_CONFIG.
	daemonCfg := []byte("# cs-snapshotter e2e: defaults\n")
	if p := os.Getenv("CS_E2E_DAEMON_CONFIG"); p != "" {
		if daemonCfg, err = os.ReadFile(p); err != nil {
			t.Fatalf("CS_E2E_DAEMON_CONFIG: %v", err)
		}
	}
	if err := os.WriteFile(e.CSConfig, daemonCfg, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := ContainerdConfig{Root: e.CtrdRoot, State: e.CtrdState, Address: e.CtrdSocket, CSSocket: e.CSSocket, CSRoot: e.CSRoot}
	var text string
	if baseline {
		text, err = cfg.renderBaseline()
	} else {
		text, err = cfg.Render()
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.CtrdConfig, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}

	if !baseline {
		e.StartDaemon()
	}
	e.startContainerd()
	return e
}

// DaemonArgs is the command line that starts cs-snapshotter for this Env.
func (e *Env) DaemonArgs() []string {
	return []string{csBin, "serve", "--config", e.CSConfig, "--root", e.CSRoot, "--run-root", e.CSRunRoot, "--address", e.CSSocket, "--log-level", "debug"}
}

// StartDaemon starts cs-snapshotter and waits for its socket.
func (e *Env) StartDaemon() {
	e.t.Helper()
	if e.cs != nil && !e.cs.exited() {
		e.t.Fatalf("cs-snapshotter is already running (pid %d)", e.cs.cmd.Process.Pid)
	}
	p, err := startProc("cs-snapshotter", e.CSLog, e.DaemonArgs()...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.cs = p
	e.csStopped = false
	if n := len(e.daemonDown); n > 0 && e.daemonDown[n-1].to.IsZero() {
		defer func() { e.daemonDown[n-1].to = time.Now().Add(reconnectGrace) }()
	}
	start := time.Now()
	if err := waitSocket(p, e.CSSocket, socketTimeout); err != nil {
		e.t.Fatalf("cs-snapshotter: %v\n%s", err, tailFile(e.CSLog, 40))
	}
	e.t.Logf("cs-snapshotter (pid %d) serving %s after %v", p.cmd.Process.Pid, e.CSSocket, time.Since(start).Round(time.Millisecond))
}

// StopDaemon stops cs-snapshotter with SIGTERM and fails the test unless it
// exits successfully within 10 s.
func (e *Env) StopDaemon() {
	e.t.Helper()
	e.csStopped = true
	e.daemonDown = append(e.daemonDown, window{from: time.Now()})
	took, err := e.cs.stop(stopTimeout)
	if err != nil {
		e.t.Fatalf("stopping cs-snapshotter: %v\n%s", err, tailFile(e.CSLog, 40))
	}
	e.t.Logf("cs-snapshotter stopped %v after SIGTERM", took.Round(time.Millisecond))
}

// KillDaemon kills cs-snapshotter with SIGKILL, as a crash would.
func (e *Env) KillDaemon() {
	e.t.Helper()
	e.csStopped = true
	e.daemonDown = append(e.daemonDown, window{from: time.Now()})
	_ = e.cs.cmd.Process.Kill()
	<-e.cs.done
	e.t.Logf("cs-snapshotter killed (SIGKILL)")
}

// StartSecondDaemon starts another cs-snapshotter on this Env's root (with
// its own socket and run root) and returns it, for tests that expect it to
// refuse to start.
func (e *Env) StartSecondDaemon(sock, runRoot, logPath string) *proc {
	e.t.Helper()
	p, err := startProc("second cs-snapshotter", logPath, csBin, "serve", "--config", e.CSConfig, "--root", e.CSRoot, "--run-root", runRoot, "--address", sock, "--log-level", "debug")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _, _ = p.stop(stopTimeout) })
	return p
}

func (e *Env) startContainerd() {
	e.t.Helper()
	p, err := startProc("containerd", e.CtrdLog, "containerd", "--config", e.CtrdConfig, "--log-level", "debug")
	if err != nil {
		e.t.Fatal(err)
	}
	e.ctrd = p
	start := time.Now()
	if err := waitSocket(p, e.CtrdSocket, socketTimeout); err != nil {
		e.t.Fatalf("containerd: %v\n%s", err, tailFile(e.CtrdLog, 60))
	}
	e.t.Logf("containerd (pid %d) serving %s after %v", p.cmd.Process.Pid, e.CtrdSocket, time.Since(start).Round(time.Millisecond))
	if !baseline {
		e.checkProxyPlugins()
	}
}

// checkProxyPlugins fails unless containerd loaded both proxy plugins and
// no builtin content store.
func (e *Env) checkProxyPlugins() {
	e.t.Helper()
	out := e.MustCtr("plugins", "ls")
	status := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 {
			status[f[0]+"."+f[1]] = f[len(f)-1]
		}
	}
	for _, want := range []string{"io.containerd.snapshotter.v1.cs", "io.containerd.content.v1.cs-content", "io.containerd.differ.v1.cs-diff"} {
		if status[want] != "ok" {
			e.t.Fatalf("containerd plugin %s has status %q, want ok; ctr plugins ls:\n%s", want, status[want], out)
		}
	}
	if s, ok := status["io.containerd.content.v1.content"]; ok && s == "ok" {
		e.t.Fatalf("containerd's builtin content store is loaded although disabled; ctr plugins ls:\n%s", out)
	}
}

// Result is the outcome of one command.
type Result struct {
	Args           []string
	Stdout, Stderr string
	Err            error
	Took           time.Duration
}

func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "$ %s\n", shellJoin(r.Args))
	if r.Err != nil {
		fmt.Fprintf(&b, "error: %v (after %v)\n", r.Err, r.Took.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "--- stdout:\n%s", r.Stdout)
	if r.Stdout != "" && !strings.HasSuffix(r.Stdout, "\n") {
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "--- stderr:\n%s", r.Stderr)
	return b.String()
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"$;&|<>*?()[]{}\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// Run runs a command with the harness environment and a timeout.
func (e *Env) Run(args ...string) Result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(cleanEnv(), "NERDCTL_TOML="+e.NerdctlTOML)
	cmd.Dir = e.Dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", commandTimeout, err)
	}
	r := Result{Args: args, Stdout: stdout.String(), Stderr: stderr.String(), Err: err, Took: time.Since(start)}
	e.t.Logf("$ %s  (%v, err=%v)", shellJoin(args), r.Took.Round(time.Millisecond), err)
	return r
}

// Ctr runs `ctr --address <containerd> -n default ARGS...`.
func (e *Env) Ctr(args ...string) Result {
	e.t.Helper()
	return e.Run(append([]string{"ctr", "--address", e.CtrdSocket, "-n", "default"}, args...)...)
}

// Nerdctl runs nerdctl against this Env's containerd, with the snapshotter
// under test, cgroupfs and a private data root.
func (e *Env) Nerdctl(args ...string) Result {
	e.t.Helper()
	return e.Run(append([]string{"nerdctl", "--address", e.CtrdSocket, "--namespace", "default",
		"--data-root", e.NerdctlRoot, "--cgroup-manager", "cgroupfs", "--snapshotter", e.Snapshotter}, args...)...)
}

// Must fails the test (printing the command's output) unless r succeeded;
// it returns stdout.
func (e *Env) Must(r Result) string {
	e.t.Helper()
	if r.Err != nil {
		e.t.Fatalf("command failed:\n%s", r)
	}
	return r.Stdout
}

// MustCtr is Must(Ctr(args...)).
func (e *Env) MustCtr(args ...string) string {
	e.t.Helper()
	return e.Must(e.Ctr(args...))
}

// MustNerdctl is Must(Nerdctl(args...)).
func (e *Env) MustNerdctl(args ...string) string {
	e.t.Helper()
	return e.Must(e.Nerdctl(args...))
}

// ID returns a container ID unique to this Env (runc keeps state of every
// containerd on the machine under one directory, so IDs must not collide
// with other test runs).
func (e *Env) ID(prefix string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq++
	return fmt.Sprintf("%s-%s-%d", prefix, strings.TrimPrefix(filepath.Base(e.Dir), "cse2e-"), e.seq)
}

// ImportImage imports an archive with `ctr images import --snapshotter`.
func (e *Env) ImportImage(archive string) {
	e.t.Helper()
	e.MustCtr("images", "import", "--snapshotter", e.Snapshotter, archive)
}

// DaemonLog returns cs-snapshotter's log so far.
func (e *Env) DaemonLog() string {
	b, _ := os.ReadFile(e.CSLog)
	return string(b)
}

// cleanup stops everything, unmounts what is left under Dir and removes it.
func (e *Env) cleanup() {
	t := e.t
	if e.cs != nil && e.cs.exited() && !e.csStopped {
		t.Errorf("cs-snapshotter exited during the test: %v", e.cs.exitError())
	}
	if e.ctrd != nil && e.ctrd.exited() {
		t.Errorf("containerd exited during the test: %v", e.ctrd.exitError())
	}
	e.checkLogs()
	if t.Failed() {
		t.Logf("test failed; environment in %s", e.Dir)
		if !baseline {
			t.Logf("cs-snapshotter log (last %d lines of %s):\n%s", logTailLines, e.CSLog, tailFile(e.CSLog, logTailLines))
		}
		t.Logf("containerd log (last %d lines of %s):\n%s", logTailLines, e.CtrdLog, tailFile(e.CtrdLog, logTailLines))
	}
	if e.ctrd != nil && !e.ctrd.exited() {
		e.killTasks()
		if _, err := e.ctrd.stop(stopTimeout); err != nil {
			t.Logf("cleanup: %v", err)
		}
	}
	e.killShims()
	reapOrphans()
	if e.cs != nil && !e.cs.exited() {
		if _, err := e.cs.stop(stopTimeout); err != nil {
			t.Errorf("cleanup: stopping cs-snapshotter: %v\n%s", err, tailFile(e.CSLog, 40))
		}
	}
	if err := unmountUnder(e.Dir); err != nil {
		t.Logf("cleanup: %v", err)
	}
	reapOrphans()
	if os.Getenv("CS_E2E_KEEP") != "" {
		t.Logf("CS_E2E_KEEP set: leaving %s", e.Dir)
		return
	}
	if err := os.RemoveAll(e.Dir); err != nil {
		t.Logf("cleanup: %v", err)
	}
}

// containerdLogProblems are containerd log messages that mean the proxy
// snapshotter or content store misbehaved (mostly from containerd's
// core/metadata: GC and backend bookkeeping).
var containerdLogProblems = []string{
	"snapshot garbage collection failed",
	"content garbage collection failed",
	"failed to remove snapshot",
	"failed to cleanup unreferenced snapshot",
	"uncommittable snapshot",
	"transaction failed after",
}

// daemonLogProblems are signs of a crash in cs-snapshotter's log.
var daemonLogProblems = []string{"panic:", "fatal error:", "WARNING: DATA RACE"}

// checkLogs fails the test for containerd log lines that show the daemon
// misbehaving (outside the windows where the harness had stopped it) and
// for crashes in the daemon's log.
func (e *Env) checkLogs() {
	if b, err := os.ReadFile(e.CtrdLog); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			for _, p := range containerdLogProblems {
				if strings.Contains(line, p) && !e.inDaemonDown(line) && !e.expected(line) {
					e.t.Errorf("containerd logged a problem with cs-snapshotter: %s", line)
					break
				}
			}
		}
	}
	if baseline {
		return
	}
	if b, err := os.ReadFile(e.CSLog); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			for _, p := range daemonLogProblems {
				if strings.Contains(line, p) {
					e.t.Errorf("cs-snapshotter log shows a crash: %s", line)
					break
				}
			}
		}
	}
}

// inDaemonDown reports whether a logrus line's time="..." falls in one of
// the windows the harness had the daemon stopped.
func (e *Env) inDaemonDown(line string) bool {
	i := strings.Index(line, `time="`)
	if i < 0 {
		return false
	}
	rest := line[i+len(`time="`):]
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return false
	}
	ts, err := time.Parse(time.RFC3339Nano, rest[:j])
	if err != nil {
		return false
	}
	for _, w := range e.daemonDown {
		if !ts.Before(w.from) && (w.to.IsZero() || ts.Before(w.to)) {
			return true
		}
	}
	return false
}

// killTasks kills and deletes every task in every namespace, so that
// container processes and shims go away with containerd.
func (e *Env) killTasks() {
	ctr := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", e.CtrdSocket}, args...)...)
		cmd.Env = cleanEnv()
		out, err := cmd.Output()
		return string(out), err
	}
	nss, err := ctr("namespaces", "ls", "-q")
	if err != nil {
		return
	}
	for _, ns := range strings.Fields(nss) {
		ids, err := ctr("-n", ns, "tasks", "ls", "-q")
		if err != nil {
			continue
		}
		for _, id := range strings.Fields(ids) {
			_, _ = ctr("-n", ns, "tasks", "kill", "-s", "SIGKILL", id)
			_, _ = ctr("-n", ns, "tasks", "rm", "-f", id)
		}
	}
}

// killShims cleans up after shims of this Env's containerd that outlived
// it (they have its socket on their command line): it deletes their
// containers with runc (which kills the container processes), kills what is
// left of their children, then the shims.
func (e *Env) killShims() {
	procs := testproc.List()
	for _, p := range testproc.Shims(procs, e.CtrdSocket, e.Dir) {
		var ns, id string
		for i, a := range p.Args {
			if i+1 < len(p.Args) {
				switch a {
				case "-namespace", "--namespace":
					ns = p.Args[i+1]
				case "-id", "--id":
					id = p.Args[i+1]
				}
			}
		}
		e.t.Logf("cleanup: killing leftover shim pid %d (namespace %q, id %q)", p.PID, ns, id)
		if ns != "" && id != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = exec.CommandContext(ctx, "runc", "--root", filepath.Join("/run/containerd/runc", ns), "delete", "--force", id).Run()
			cancel()
		}
		testproc.KillWithChildren(procs, p.PID)
	}
}

// unmountUnder and mountsUnder are testproc's, under the names the tests
// use.
var (
	unmountUnder = testproc.UnmountUnder
	mountsUnder  = testproc.MountsUnder
)

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
