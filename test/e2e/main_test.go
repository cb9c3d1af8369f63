package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
	"golang.org/x/sys/unix"
)

// Set up once by TestMain.
var (
	// csBin is the cs-snapshotter binary under test.
	csBin string
	// setupErr, when set, makes every test fail with it (tools missing,
	// build failed): the suite never silently skips.
	setupErr error
	// baseline (CS_E2E_BASELINE=1) runs the tests against containerd's
	// builtin overlayfs snapshotter and content store, without
	// cs-snapshotter, to check the harness and compare behaviour. Tests
	// that need the daemon itself are skipped in that mode only.
	baseline bool

	// The test image: 3 layers (file, added file, whiteout + opaque dir).
	imageArchive string
	image        *imagebuild.Result
	// A 6-layer image sharing its first 3 layers with image.
	deepArchive string
	deepImage   *imagebuild.Result
	// Busybox plus the fidelity layer and a big-file layer.
	fidelityArchive string
	fidelityImage   *imagebuild.Result
)

const (
	imageName = "docker.io/library/cs-busybox:latest"
	deepName  = "docker.io/library/cs-busybox-deep:latest"
	deepDepth = 6

	fidelityName = "docker.io/library/cs-fidelity:latest"
	bigFileSize  = 24<<20 + 12345
)

// requiredTools are what scripts/install-deps.sh installs.
var requiredTools = []string{"containerd", "ctr", "containerd-shim-runc-v2", "nerdctl", "runc"}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// install-deps.sh installs into /usr/local/bin; make sure it is found.
	if !strings.Contains(":"+os.Getenv("PATH")+":", ":/usr/local/bin:") {
		os.Setenv("PATH", os.Getenv("PATH")+":/usr/local/bin")
	}
	baseline = os.Getenv("CS_E2E_BASELINE") == "1"
	// Shims and containers orphaned when a test stops containerd are
	// re-parented to this process, which reaps them (see reapOrphans).
	_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

	work, err := os.MkdirTemp("", "cse2e-main-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(work)

	setupErr = setup(work)
	if setupErr != nil {
		fmt.Fprintf(os.Stderr, "e2e setup failed (every test will fail): %v\n", setupErr)
	}
	return m.Run()
}

func setup(work string) error {
	var problems []string
	if os.Geteuid() != 0 {
		problems = append(problems, "the e2e tests must run as root (they run containerd, mount overlayfs and start containers)")
	}
	for _, tool := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			problems = append(problems, fmt.Sprintf("%s not found in PATH", tool))
		}
	}
	if err := imagebuild.CheckStaticBusybox(imagebuild.DefaultBusybox); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s\nrun scripts/install-deps.sh (as root) to install containerd, ctr, nerdctl, runc and busybox-static", strings.Join(problems, "\n"))
	}

	var err error
	if image, err = imagebuild.BuildFile(filepath.Join(work, "cs-busybox.tar"), imagebuild.Options{Name: imageName}); err != nil {
		return fmt.Errorf("building the test image: %w", err)
	}
	imageArchive = filepath.Join(work, "cs-busybox.tar")
	if deepImage, err = imagebuild.BuildFile(filepath.Join(work, "cs-busybox-deep.tar"), imagebuild.Options{Name: deepName, Layers: deepDepth}); err != nil {
		return fmt.Errorf("building the deep test image: %w", err)
	}
	deepArchive = filepath.Join(work, "cs-busybox-deep.tar")
	fidelityArchive = filepath.Join(work, "cs-fidelity.tar")
	if fidelityImage, err = imagebuild.BuildFile(fidelityArchive, imagebuild.Options{Name: fidelityName, Layers: 1, Fidelity: true, BigFileSize: bigFileSize}); err != nil {
		return fmt.Errorf("building the fidelity test image: %w", err)
	}

	if baseline {
		return nil
	}
	if bin := os.Getenv("CS_SNAPSHOTTER_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return err
		}
		if st, err := os.Stat(abs); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("CS_SNAPSHOTTER_BIN=%s is not an executable file (%v)", bin, err)
		}
		csBin = abs
		return nil
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	csBin = filepath.Join(work, "cs-snapshotter")
	cmd := exec.Command("go", "build", "-o", csBin, "./cmd/cs-snapshotter")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/cs-snapshotter (in %s): %v\n%s", root, err, out)
	}
	return nil
}

// moduleRoot is the repository root: two levels above this package.
func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the module root")
	}
	root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("module root %s: %w", root, err)
	}
	return root, nil
}

// requireSetup fails (never skips) the test if TestMain's setup failed.
func requireSetup(t testing.TB) {
	t.Helper()
	if setupErr != nil {
		t.Fatalf("e2e setup: %v", setupErr)
	}
}

// requireDaemon skips a test that only makes sense with cs-snapshotter in
// CS_E2E_BASELINE mode (never otherwise).
func requireDaemon(t testing.TB) {
	t.Helper()
	if baseline {
		t.Skip("CS_E2E_BASELINE=1: this test talks to cs-snapshotter itself")
	}
}
