package contentstore_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
	"github.com/cs-snapshotter/cs-snapshotter/metadata"
)

// A read-only content store reads blobs and labels, refuses every write,
// and creates nothing under its root (not even the fs-verity probe
// containerd's local store makes).
func TestReadOnly(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	db, err := metadata.Open(ctx, filepath.Join(root, metadata.FileName))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := contentstore.New(filepath.Join(root, "content"), db)
	if err != nil {
		t.Fatal(err)
	}
	blob := []byte("a blob")
	dgst := digest.FromBytes(blob)
	if err := content.WriteBlob(ctx, cs, "ref", bytes.NewReader(blob), ocispec.Descriptor{Digest: dgst, Size: int64(len(blob))}, content.WithLabels(map[string]string{"cs.test": "v"})); err != nil {
		t.Fatal(err)
	}
	cs.Close()
	db.Close()

	list := func() string {
		var names []string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			names = append(names, p)
			return nil
		})
		return strings.Join(names, "\n")
	}
	beforeFiles := list()
	beforeDB, _ := os.ReadFile(filepath.Join(root, metadata.FileName))

	rdb, err := metadata.OpenReadOnly(ctx, filepath.Join(root, metadata.FileName))
	if err != nil {
		t.Fatal(err)
	}
	ro, err := contentstore.NewReadOnly(filepath.Join(root, "content"), rdb)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := ro.Info(ctx, dgst); err != nil || info.Size != int64(len(blob)) || info.Labels["cs.test"] != "v" {
		t.Errorf("Info: %+v %v", info, err)
	}
	n := 0
	if err := ro.Walk(ctx, func(content.Info) error { n++; return nil }, `labels."cs.test"==v`); err != nil || n != 1 {
		t.Errorf("Walk: %d %v", n, err)
	}
	if got, err := content.ReadBlob(ctx, ro, ocispec.Descriptor{Digest: dgst, Size: int64(len(blob))}); err != nil || !bytes.Equal(got, blob) {
		t.Errorf("ReadBlob: %q %v", got, err)
	}
	if st, err := ro.ListStatuses(ctx); err != nil || len(st) != 0 {
		t.Errorf("ListStatuses: %v %v", st, err)
	}
	for name, err := range map[string]error{
		"Writer": func() error { _, err := ro.Writer(ctx, content.WithRef("x")); return err }(),
		"Update": func() error {
			_, err := ro.Update(ctx, content.Info{Digest: dgst, Labels: map[string]string{"a": "b"}}, "labels.a")
			return err
		}(),
		"Delete":   ro.Delete(ctx, dgst),
		"Abort":    ro.Abort(ctx, "ref"),
		"AbortOwn": ro.AbortOwn(ctx),
	} {
		if !errors.Is(err, metadata.ErrReadOnly) {
			t.Errorf("%s: %v, want ErrReadOnly", name, err)
		}
	}
	ro.Close()
	if after := list(); after != beforeFiles {
		t.Errorf("files changed:\n%s\nnow\n%s", beforeFiles, after)
	}
	if after, _ := os.ReadFile(filepath.Join(root, metadata.FileName)); !bytes.Equal(after, beforeDB) {
		t.Error("the database changed")
	}
}
