package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY returns a pseudo-terminal's master and slave ends.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		m.Close()
		t.Fatalf("open pty: %v", err)
	}
	return m, s
}

// runOnTerminal runs the CLI with stderr on a terminal and returns what
// the terminal showed.
func (s *cliStore) runOnTerminal(stdin string, args ...string) (string, error) {
	s.t.Helper()
	m, pts := openPTY(s.t)
	defer m.Close()
	cmd := exec.Command(binary, append([]string{"--graph", s.graph, "--run", s.run}, args...)...)
	cmd.Stderr = pts
	if stdin != "" {
		f, err := os.Open(stdin)
		if err != nil {
			s.t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	pts.Close() // the child has it; EOF (EIO) on m once the child exits
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&out, m); close(copied) }()
	err := cmd.Wait()
	<-copied
	return out.String(), err
}

// TestProgress: applydiff, import-layer and diff report progress on a
// terminal, and nothing when stderr is not one.
func TestProgress(t *testing.T) {
	s := newCLIStore(t)
	big := strings.Repeat("0123456789abcdef", 4<<20) // 64 MiB
	data := buildTar(t, dir("data/"), file("data/big", big), file("data/small", "small\n"))
	tarFile := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(tarFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	total := humanBytes(int64(len(data)))

	out, err := s.runOnTerminal(tarFile, "import-layer", "-n", "imported")
	if err != nil {
		t.Fatalf("import-layer on a terminal: %v\n%s", err, out)
	}
	if !strings.Contains(out, "\rimport-layer: "+total+" / "+total+" (100%)") || !strings.HasSuffix(out, "\r\n") {
		t.Errorf("import-layer on a terminal showed %q", out)
	}
	s.ok("create-layer", "-n", "applied")
	out, err = s.runOnTerminal("", "applydiff", "-f", tarFile, "applied")
	if err != nil {
		t.Fatalf("applydiff on a terminal: %v\n%s", err, out)
	}
	if !strings.Contains(out, "\rapplydiff: "+total+" / "+total+" (100%)") {
		t.Errorf("applydiff on a terminal showed %q", out)
	}
	diffFile := filepath.Join(t.TempDir(), "diff.tar")
	out, err = s.runOnTerminal("", "diff", "-u", "-f", diffFile, "applied")
	if err != nil {
		t.Fatalf("diff on a terminal: %v\n%s", err, out)
	}
	if !strings.Contains(out, "\rdiff: "+total+" / "+total+" (100%)") {
		t.Errorf("diff on a terminal showed %q", out)
	}
	if got, _ := os.ReadFile(diffFile); !bytes.Equal(got, data) {
		t.Errorf("diff -u -f: %d bytes, want the applied %d", len(got), len(data))
	}
	// A failure erases the progress line and says why.
	out, err = s.runOnTerminal(tarFile, "import-layer", "-n", "imported")
	if err == nil || strings.Contains(out, "(100%)\r\n") || !strings.Contains(out, "that name is already in use") {
		t.Errorf("failed import-layer on a terminal: %v, showed %q", err, out)
	}

	// Not a terminal: quiet.
	r := s.cs(data, "import-layer", "-n", "quiet")
	if r.code != 0 || r.stderr != "" {
		t.Errorf("import-layer, stderr not a terminal: %s", r)
	}
	r = s.cs(nil, "diff", "-u", "quiet")
	if r.code != 0 || r.stderr != "" || r.stdout != string(data) {
		t.Errorf("diff, stderr not a terminal: exit %d, stderr %q, %d bytes", r.code, r.stderr, len(r.stdout))
	}
}
