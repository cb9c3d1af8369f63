package layerdiff

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAdoptRefusals: a layer extracted without its parents is refused by
// Adopt, with ErrNotAdoptable and nothing changed (the stage as it was,
// the upper directory as it was), when the parents are not what the
// extraction assumed: a non-directory on a path it needed, a symlink on
// the way to one, a default ACL on a directory it implied; and when the
// upper directory is not empty.
func TestAdoptRefusals(t *testing.T) {
	requireRoot(t)
	// "a/b/f" implies a and a/b; "c/d/g" implies c/d (c is listed).
	blob := compress(t, Gzip, buildTar(t, []entry{fileE("a/b/f", "f"), dirE("c/"), fileE("c/d/g", "g")}, nil))
	defaultACL := []byte{2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 5, 0, 0xff, 0xff, 0xff, 0xff}
	for name, c := range map[string]struct {
		lower func(t *testing.T, lower string)
		upper func(t *testing.T, upper string)
	}{
		"file where a directory is implied": {lower: func(t *testing.T, l string) { mustWrite(t, filepath.Join(l, "a"), "") }},
		"symlink on the way": {lower: func(t *testing.T, l string) {
			os.Mkdir(filepath.Join(l, "c"), 0o755)
			os.Symlink("/etc", filepath.Join(l, "c/d"))
		}},
		"whiteout on the way": {lower: func(t *testing.T, l string) {
			os.Mkdir(filepath.Join(l, "a"), 0o755)
			unix.Mknod(filepath.Join(l, "a/b"), unix.S_IFCHR, 0)
		}},
		"default ACL on an implied directory": {lower: func(t *testing.T, l string) {
			os.MkdirAll(filepath.Join(l, "a/b"), 0o755)
			if err := unix.Setxattr(filepath.Join(l, "a/b"), "system.posix_acl_default", defaultACL, 0); err != nil {
				t.Skipf("no ACLs here: %v", err)
			}
		}},
		"upper not empty": {upper: func(t *testing.T, u string) { mustWrite(t, filepath.Join(u, "x"), "x") }},
	} {
		t.Run(name, func(t *testing.T) {
			sandbox := t.TempDir()
			stage, upper, lower := filepath.Join(sandbox, "stage"), filepath.Join(sandbox, "upper"), filepath.Join(sandbox, "lower")
			for _, d := range []string{stage, upper, lower} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			var u Unparented
			if _, err := Apply(context.Background(), stage, bytes.NewReader(blob), ApplyOptions{Unparented: &u}); err != nil {
				t.Fatal(err)
			}
			if c.lower != nil {
				c.lower(t, lower)
			}
			if c.upper != nil {
				c.upper(t, upper)
			}
			stageBefore, upperBefore := listTree(t, stage), listTree(t, upper)
			err := Adopt(stage, upper, []string{lower}, &u)
			if !errors.Is(err, ErrNotAdoptable) {
				t.Fatalf("Adopt: %v, want ErrNotAdoptable", err)
			}
			if got := listTree(t, stage); !slices.Equal(got, stageBefore) {
				t.Errorf("stage changed: %v, was %v", got, stageBefore)
			}
			if got := listTree(t, upper); !slices.Equal(got, upperBefore) {
				t.Errorf("upper changed: %v, was %v", got, upperBefore)
			}
		})
	}
}

// TestAdoptInherits: directories the layer implies take the owner, mode
// and extended attributes of the nearest lower that has them, as Apply on
// the lowers gives them, and keep their own where the layer lists them.
func TestAdoptInherits(t *testing.T) {
	requireRoot(t)
	listed := dirE("c/")
	listed.hdr.Mode = 0o711
	blob := compress(t, Gzip, buildTar(t, []entry{fileE("a/b/f", "f"), listed, fileE("c/g", "g")}, nil))
	sandbox := t.TempDir()
	stage, upper := filepath.Join(sandbox, "stage"), filepath.Join(sandbox, "upper")
	near, far := filepath.Join(sandbox, "near"), filepath.Join(sandbox, "far")
	for _, d := range []string{stage, upper, near, far} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(far, "a/b"), 0o755)
	unix.Chmod(filepath.Join(far, "a/b"), 0o2770)
	os.Chown(filepath.Join(far, "a/b"), 5, 6)
	unix.Setxattr(filepath.Join(far, "a/b"), "user.from", []byte("far"), 0)
	os.Mkdir(filepath.Join(near, "a"), 0o700)
	os.Chown(filepath.Join(near, "a"), 7, 8)
	os.Mkdir(filepath.Join(far, "c"), 0o777)

	var u Unparented
	if _, err := Apply(context.Background(), stage, bytes.NewReader(blob), ApplyOptions{Unparented: &u}); err != nil {
		t.Fatal(err)
	}
	if err := Adopt(stage, upper, []string{near, far}, &u); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stage); !os.IsNotExist(err) {
		t.Errorf("stage left: %v", err)
	}
	for rel, want := range map[string]struct{ mode, uid, gid uint32 }{
		"a":   {0o700, 7, 8},
		"a/b": {0o2770, 5, 6},
		"c":   {0o711, 0, 0},
	} {
		st := lstat(t, filepath.Join(upper, rel))
		if st.Mode&0o7777 != want.mode || st.Uid != want.uid || st.Gid != want.gid {
			t.Errorf("%s: mode %o owner %d:%d, want %o %d:%d", rel, st.Mode&0o7777, st.Uid, st.Gid, want.mode, want.uid, want.gid)
		}
	}
	if v, _ := getxattr(t, filepath.Join(upper, "a/b"), "user.from"); v != "far" {
		t.Errorf("a/b's xattr user.from = %q, want the lower's", v)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "a/b/f")); err != nil || string(b) != "f" {
		t.Errorf("a/b/f: %q %v", b, err)
	}
}

func mustWrite(t *testing.T, p, body string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}
