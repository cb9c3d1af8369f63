package main

import (
	"io"
	"net/http"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

// TestRegistry: the registry serves the archive's manifest by tag and by
// digest and every blob byte for byte, and refuses what it does not have
// and writes.
func TestRegistry(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "image.oci.tar")
	img, err := imagebuild.BuildFile(archive, imagebuild.Options{Name: imagebuild.DefaultName})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := serveRegistry(archive, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.close()
	base := "http://" + reg.addr + "/v2/" + registryRepo + "/"
	get := func(method, url string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}

	if resp, _ := get(http.MethodGet, "http://"+reg.addr+"/v2/"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/: %s", resp.Status)
	}
	for _, ref := range []string{registryTag, img.Manifest.Digest.String()} {
		resp, b := get(http.MethodGet, base+"manifests/"+ref)
		if resp.StatusCode != http.StatusOK || digest.FromBytes(b) != img.Manifest.Digest ||
			resp.Header.Get("Content-Type") != img.Manifest.MediaType || resp.Header.Get("Docker-Content-Digest") != img.Manifest.Digest.String() {
			t.Errorf("manifest %s: %s, %d bytes of digest %s, headers %v", ref, resp.Status, len(b), digest.FromBytes(b), resp.Header)
		}
	}
	for d := range img.Blobs {
		if resp, b := get(http.MethodGet, base+"blobs/"+d.String()); resp.StatusCode != http.StatusOK || digest.FromBytes(b) != d {
			t.Errorf("blob %s: %s, %d bytes of digest %s", d, resp.Status, len(b), digest.FromBytes(b))
		}
		if resp, _ := get(http.MethodHead, base+"blobs/"+d.String()); resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(img.Blobs[d])) {
			t.Errorf("HEAD blob %s: %s, length %d, want %d", d, resp.Status, resp.ContentLength, len(img.Blobs[d]))
		}
	}
	for _, url := range []string{
		base + "blobs/" + digest.FromString("not here").String(),
		base + "manifests/other",
		"http://" + reg.addr + "/v2/other/repo/manifests/" + registryTag,
	} {
		if resp, _ := get(http.MethodGet, url); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", url, resp.Status)
		}
	}
	if resp, _ := get(http.MethodPut, base+"manifests/"+registryTag); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("PUT a manifest: %s, want 405", resp.Status)
	}
}
