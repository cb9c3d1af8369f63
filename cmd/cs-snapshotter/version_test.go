package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// TestVersion: the containers-storage lines first, then cs-snapshotter's
// version and commit (defaults, or the -ldflags values), the Go version
// and the containerd API module version.
func TestVersion(t *testing.T) {
	d := t.TempDir()
	args := []string{"--graph", filepath.Join(d, "root"), "--run", filepath.Join(d, "run"), "version"}
	out, err := exec.Command(binary, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("version: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	want := []string{
		"Version: 0.1.0",
		"Driver: overlay",
		"cs-snapshotter Version: dev",
		"Git Commit: ", // unknown, or the revision when the toolchain stamped one
		"Go Version: " + runtime.Version(),
		"containerd API Version: v1.",
	}
	if c := strings.TrimPrefix(lines[min(3, len(lines)-1)], "Git Commit: "); c != "unknown" && !regexp.MustCompile(`^[0-9a-f]{40}(-dirty)?$`).MatchString(c) {
		t.Errorf("commit %q", c)
	}
	if len(lines) != len(want) {
		t.Fatalf("version printed %q, want %d lines", lines, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d: %q, want %q", i+1, lines[i], w)
		}
	}

	// -ldflags -X sets version and commit.
	bin := filepath.Join(d, "cs-snapshotter")
	if out, err := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version=v9.8.7 -X main.commit=0123abc", ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, append(args[:len(args)-1:len(args)-1], "version", "--json")...).Output()
	if err != nil {
		t.Fatal(err)
	}
	var pairs [][2]string
	if err := json.Unmarshal(out, &pairs); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	got := map[string]string{}
	for _, p := range pairs {
		got[p[0]] = p[1]
	}
	if got["Version"] != "0.1.0" || got["cs-snapshotter Version"] != "v9.8.7" || got["Git Commit"] != "0123abc" {
		t.Errorf("version --json: %q", pairs)
	}
}
