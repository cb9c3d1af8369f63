package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestContainersStorageBats runs containers/storage's own bats tests
// (v1.50.2, copied from the Go module cache by scripts/cstorage-bats.sh)
// against the CLI. The cases in testdata/bats-expected.txt must pass; the
// others are logged, as are listed cases that now pass. Needs root, bats
// (the script installs it with apt-get) and the module (the script
// downloads it); without them the test fails and says why.
func TestContainersStorageBats(t *testing.T) {
	if testing.Short() {
		t.Skip("runs containers/storage's bats suite (about a minute, root, bats)")
	}
	expected, err := readBatsExpected(filepath.Join("testdata", "bats-expected.txt"))
	if err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "cstorage-bats.sh"))
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("bash", script)
	cmd.Env = append(os.Environ(), "STORAGE_BINARY="+binary, "OUT="+out, "KEEP=0", "VERBOSE=0")
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() == 1: // some case failed: judged below
	default:
		t.Fatalf("scripts/cstorage-bats.sh could not run the bats tests: %v\n%s", err, output.String())
	}
	t.Logf("scripts/cstorage-bats.sh:\n%s", output.String())

	results, err := readBatsResults(filepath.Join(out, "results.txt"))
	if err != nil {
		t.Fatalf("%v\n%s", err, output.String())
	}
	if len(results) == 0 {
		t.Fatalf("scripts/cstorage-bats.sh ran no test case\n%s", output.String())
	}
	for _, c := range expected {
		switch st, ok := results[c]; {
		case !ok:
			t.Errorf("%s: expected to pass, but it did not run (renamed? filtered?)", c)
		case st != "PASS":
			t.Errorf("%s: expected to pass, got %s\n%s", c, st, batsCaseLog(out, c))
		}
	}
	listed := map[string]bool{}
	for _, c := range expected {
		listed[c] = true
	}
	var others []string
	for c := range results {
		if !listed[c] {
			others = append(others, c)
		}
	}
	sort.Strings(others)
	for _, c := range others {
		if results[c] == "PASS" {
			t.Logf("%s: passes but is not in testdata/bats-expected.txt; add it", c)
		} else {
			t.Logf("%s: %s (not expected to pass)%s", c, results[c], batsFailure(batsCaseLog(out, c)))
		}
	}
}

// readBatsExpected reads "file.bats: test name" lines.
func readBatsExpected(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cases []string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if f, _, ok := strings.Cut(line, ": "); !ok || !strings.HasSuffix(f, ".bats") {
			return nil, errors.New(path + `: not "file.bats: test name": ` + line)
		}
		cases = append(cases, line)
	}
	if len(cases) == 0 {
		return nil, errors.New(path + ": no test case listed")
	}
	return cases, nil
}

// readBatsResults reads the script's "STATUS<TAB>file.bats: test name"
// lines.
func readBatsResults(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	results := map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		st, c, ok := strings.Cut(line, "\t")
		if !ok {
			return nil, errors.New(path + ": bad line: " + line)
		}
		results[c] = st
	}
	return results, nil
}

// batsCaseLog is the TAP output of case c ("file.bats: name"), without
// the CLI's --debug lines.
func batsCaseLog(out, c string) string {
	file, name, _ := strings.Cut(c, ": ")
	f, err := os.Open(filepath.Join(out, strings.TrimSuffix(file, ".bats")+".tap"))
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var b strings.Builder
	in := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "ok ") || strings.HasPrefix(line, "not ok ") {
			_, rest, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(line, "not "), "ok "), " ")
			in = rest == name || strings.HasPrefix(rest, name+" # ")
		}
		if in && !strings.Contains(line, "level=debug") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// batsFailure picks from a case's log where it failed and the CLI's last
// error, for a one-glance log line.
func batsFailure(log string) string {
	var where, cliErr string
	for _, line := range strings.Split(log, "\n") {
		switch {
		case where == "" && strings.HasPrefix(line, "#   `"):
			where = strings.TrimPrefix(line, "#   ")
		case strings.HasPrefix(line, "# cs-snapshotter: "):
			cliErr = strings.TrimPrefix(line, "# ")
		}
	}
	s := ""
	if where != "" {
		s += "\n\tfailed: " + where
	}
	if cliErr != "" {
		s += "\n\tlast CLI error: " + cliErr
	}
	return s
}
