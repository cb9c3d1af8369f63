package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testImageCommands runs the image commands through one store.
func testImageCommands(t *testing.T, s *cliStore) {
	s = s.with(t)
	dir := t.TempDir()
	layer := createdID(t, s.ok("create-layer", "-r", "-n", "img-base"), "img-base")
	mdFile := filepath.Join(dir, "md")
	if err := os.WriteFile(mdFile, []byte("from a file"), 0o600); err != nil {
		t.Fatal(err)
	}

	out := s.ok("create-image", "-n", "i1", "--name", "i2", "-m", "md1", "img-base")
	id := createdID(t, out, "i1", "i2")
	var created struct {
		ID       string   `json:"id"`
		Names    []string `json:"names"`
		Layer    string   `json:"layer"`
		Metadata string   `json:"metadata"`
	}
	decodeJSON(t, s.ok("createimage", "-j", "-f", mdFile, "--id", strings.Repeat("ab", 32), "-n", "j1", layer), &created)
	if created.ID != strings.Repeat("ab", 32) || created.Layer != layer || created.Metadata != "from a file" || len(created.Names) != 1 || created.Names[0] != "j1" {
		t.Errorf("create-image -j: %+v", created)
	}
	s.expect(1, "", "create-image", "-n", "i1", layer)     // duplicate name
	s.expect(1, "", "create-image", "-n", "k", "nope")     // unknown layer
	s.expect(1, "", "create-image", "a", "b")              // too many arguments
	s.expect(1, "", "create-image", "--id", id, "-n", "k") // duplicate ID

	// The store lists images in its own order.
	if q := sortedCopy(strings.Fields(s.ok("images", "-q"))); strings.Join(q, " ") != strings.Join(sortedCopy([]string{id, strings.Repeat("ab", 32)}), " ") {
		t.Errorf("images -q: %v", q)
	}
	r := s.cs(nil, "images")
	if !strings.Contains(r.stdout, strings.Repeat("ab", 32)+"\n\tname: j1\n") || !strings.Contains(r.stdout, id+"\n\tname: i1\n\tname: i2\n") {
		t.Errorf("images: %s", r)
	}
	var listed []map[string]any
	decodeJSON(t, s.ok("images", "--json"), &listed)
	if len(listed) != 2 {
		t.Errorf("images --json: %s", r)
	}
	s.expect(1, "", "images", "extra")

	// Big data.
	manifest := []byte(`{"schemaVersion":2}`)
	s.okIn(manifest, "set-image-data", "i1", "manifest")
	cfg := filepath.Join(dir, "cfg")
	if err := os.WriteFile(cfg, []byte("config!"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.ok("setimagedata", "-f", cfg, id, "config")
	s.expect(0, "config\nmanifest\n", "list-image-data", "i2")
	s.expect(0, "[\"config\",\"manifest\"]\n", "listimagedata", "-j", id)
	s.expect(0, string(manifest), "get-image-data", "i1", "manifest")
	got := filepath.Join(dir, "got")
	s.expect(0, "", "getimagedata", "--file", got, "i1", "config")
	if b, err := os.ReadFile(got); err != nil || string(b) != "config!" {
		t.Errorf("get-image-data -f: %q %v", b, err)
	}
	s.expect(0, "19\n", "get-image-data-size", "i1", "manifest")
	s.expect(0, "7\n", "getimagedatasize", "i1", "config")
	mdig := sha(manifest)
	s.expect(0, mdig+"\n", "get-image-data-digest", "i1", "manifest")
	s.expect(0, sha([]byte("config!"))+"\n", "getimagedatadigest", "i1", "config")
	s.expect(1, "", "get-image-data", "i1", "nope")
	s.expect(1, "", "get-image-data-size", "i1", "nope")
	s.expect(1, "", "get-image-data-digest", "nope", "manifest")
	s.expect(1, "", "list-image-data", "nope")
	s.expect(1, "", "list-image-data", "img-base") // a layer, not an image
	s.expect(1, "", "set-image-data", "nope", "x")

	// image and images-by-digest.
	want := "ID: " + id + "\nName: i1\nName: i2\nTop Layer: " + layer + "\nDigest: " + mdig + "\nData: config\nData: manifest\nSize: 26\n"
	s.expect(0, want, "image", "i1")
	s.expect(1, want, "image", "nope", "i2")
	s.expect(1, "[]\n", "image", "-j", "nope")
	var one []map[string]any
	decodeJSON(t, s.ok("image", "--json", "i1"), &one)
	if len(one) != 1 || one[0]["id"] != id || one[0]["digest"] != mdig {
		t.Errorf("image --json: %v", one)
	}
	s.expect(0, id+"\n\tname: i1\n\tname: i2\n\tdigest: "+mdig+"\n\tdata: config\n\tdata: manifest\n", "images-by-digest", mdig)
	s.expect(0, id+"\n", "images-by-digest", "-q", mdig)
	s.expect(0, "", "images-by-digest", sha([]byte("none")))
	s.expect(1, "", "images-by-digest", "bad")

	// exists, names and metadata cover images.
	s.expect(0, "i1: true\n", "exists", "-i", "i1")
	s.expect(1, "img-base: true\n", "exists", "-i", "img-base")
	s.expect(1, "i1: true\n", "exists", "-l", "i1")
	s.expect(0, "i1\ni2\n", "get-names", "i1")
	s.expect(0, "[\"i3\",\"i1\",\"i2\"]\n", "add-names", "-j", "-n", "i3", "i2")
	s.expect(0, "", "remove-names", "-n", "i2", "i1")
	s.expect(0, "[\"n1\"]\n", "set-names", "--json", "-n", "n1", "i1")
	s.expect(1, "", "get-names", "i1")
	s.expect(0, id+": md1\n", "metadata", id)
	s.expect(0, "", "set-metadata", "-m", "md2", "n1")
	s.expect(0, "md2\n", "metadata", "-q", "n1")

	// delete-image, delete.
	r = s.expect(0, "", "delete-image", "--test", "n1")
	if r.stderr != "" {
		t.Errorf("delete-image --test n1: %s", r) // the layer is also j1's
	}
	s.expect(1, "{\"nope\":{\"error\":\"identifier is not an image\"}}\n", "delete-image", "-j", "nope")
	s.expect(0, "{\"n1\":{}}\n", "deleteimage", "-j", "n1")
	r = s.expect(0, "", "delete-image", "-t", "j1")
	if r.stderr != "j1: "+layer+"\n" {
		t.Errorf("delete-image -t j1: %s", r)
	}
	s.expect(0, strings.Repeat("ab", 32)+"\n", "images", "-q")
	s.expect(0, "", "delete", "j1")
	s.expect(0, "", "images")
	s.expect(0, "null\n", "images", "-j") // as containers-storage prints no images
	s.expect(0, "img-base: true\n", "exists", "img-base")
	s.expect(0, "", "delete-layer", "img-base")
}
