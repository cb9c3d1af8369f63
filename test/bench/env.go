package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cs-snapshotter/cs-snapshotter/test/e2e"
	"github.com/cs-snapshotter/cs-snapshotter/test/testproc"
)

// baselineConfig: containerd with its builtin overlayfs snapshotter and
// content store (as the e2e suite's CS_E2E_BASELINE mode).
const baselineConfig = `version = 3
root = "%s"
state = "%s"

[grpc]
  address = "%s"

# As cs's: a pull unpacks two layers at once (overlayfs has "rebase").
[plugins."io.containerd.transfer.v1.local"]
  max_concurrent_unpacks = 2
`

// daemonProc is a process the benchmark started.
type daemonProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startDaemon(name, logPath string, args ...string) (*daemonProc, error) {
	cmd, logf, err := testproc.Start(name, logPath, cleanEnv(), false, args...)
	if err != nil {
		return nil, err
	}
	p := &daemonProc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

func (p *daemonProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	testproc.Stop(p.cmd, p.done, 15*time.Second)
}

func waitSock(p *daemonProc, sock string) error {
	switch err := testproc.WaitSocket(sock, 30*time.Second, 20*time.Millisecond, p.done); {
	case err == nil:
		return nil
	case errors.Is(err, testproc.ErrExited):
		return fmt.Errorf("%s exited before serving %s", p.name, sock)
	default:
		return fmt.Errorf("%s did not serve %s: %v", p.name, sock, err)
	}
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CONTAINERD_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// ctrdEnv is one containerd (plus, for "cs", one cs-snapshotter) in a fresh
// directory.
type ctrdEnv struct {
	kind        string // "overlayfs" or "cs"
	dir         string
	sock        string
	snapshotter string
	cs, ctrd    *daemonProc
}

func newEnv(ctx context.Context, kind, dir, csBin string) (*ctrdEnv, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	e := &ctrdEnv{kind: kind, dir: dir, sock: filepath.Join(dir, "ctrd.sock"), snapshotter: kind}
	root, state := filepath.Join(dir, "ctrd-root"), filepath.Join(dir, "ctrd-state")
	var text string
	if kind == "cs" {
		csRoot, csSock := filepath.Join(dir, "cs-root"), filepath.Join(dir, "cs.sock")
		cfgPath := filepath.Join(dir, "cs.toml")
		if err := os.WriteFile(cfgPath, []byte("# defaults, then CS_TOML\n"+os.Getenv("CS_TOML")+"\n"), 0o644); err != nil {
			return nil, err
		}
		p, err := startDaemon("cs-snapshotter", filepath.Join(dir, "cs.log"), csBin, "serve", "--config", cfgPath, "--root", csRoot,
			"--run-root", filepath.Join(dir, "cs-run"), "--address", csSock, "--log-level", "info")
		if err != nil {
			return nil, err
		}
		e.cs = p
		if err := waitSock(p, csSock); err != nil {
			e.close()
			return nil, err
		}
		text, err = e2e.ContainerdConfig{Root: root, State: state, Address: e.sock, CSSocket: csSock, CSRoot: csRoot}.Render()
		if err != nil {
			e.close()
			return nil, err
		}
	} else {
		text = fmt.Sprintf(baselineConfig, root, state, e.sock)
	}
	cfg := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		e.close()
		return nil, err
	}
	p, err := startDaemon("containerd", filepath.Join(dir, "containerd.log"), "containerd", "--config", cfg, "--log-level", "info")
	if err != nil {
		e.close()
		return nil, err
	}
	e.ctrd = p
	if err := waitSock(p, e.sock); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

// ctr runs ctr against this containerd in namespace "bench".
func (e *ctrdEnv) ctr(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", e.sock, "-n", "bench"}, args...)...)
	cmd.Env = cleanEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ctr %s: %v\n%s", strings.Join(args, " "), err, tail(out.String(), 2000))
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// close stops containerd and the daemon, unmounts what is left under the
// directory and removes it.
func (e *ctrdEnv) close() {
	if e.ctrd != nil {
		e.ctrd.stop()
	}
	if e.cs != nil {
		e.cs.stop()
	}
	_ = testproc.UnmountUnder(e.dir)
	_ = os.RemoveAll(e.dir)
}

func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(out.String(), 2000))
	}
	return nil
}
