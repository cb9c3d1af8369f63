package e2e

import (
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	storage "github.com/cs-snapshotter/cs-snapshotter"
)

// slowReader hands out data in small pieces with pauses, so a write
// through the store is still under way while containerd collects garbage.
type slowReader struct {
	r     io.Reader
	pause time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	return s.r.Read(p[:min(len(p), 256<<10)])
}

// TestStoreWritesSurviveContainerdGC: while the store (opened directly on
// the daemon's root) writes big data and applies a layer, containerd's
// garbage collector runs again and again, sweeping the backend's ingests
// and snapshots it does not know; the writes complete intact.
func TestStoreWritesSurviveContainerdGC(t *testing.T) {
	if baseline {
		t.Skip("the store needs cs-snapshotter")
	}
	e := NewEnv(t)
	s, err := storage.GetStore(storage.StoreOptions{GraphRoot: e.CSRoot, RunRoot: filepath.Join(e.Dir, "store-run")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(true)

	stop := make(chan struct{})
	gcDone := make(chan int)
	go func() {
		runs := 0
		for {
			select {
			case <-stop:
				gcDone <- runs
				return
			default:
			}
			// Removing an image dirties containerd's content and
			// snapshots, so its GC sweeps the backend's too: blobs,
			// snapshots and ingests it does not know.
			e.ImportImage(imageArchive)
			e.MustCtr("images", "rm", "--sync", imageName)
			runs++
		}
	}()

	base, err := s.CreateLayer("", "", []string{"gc-base"}, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("big data under GC "), (16<<20)/18)
	if err := s.SetLayerBigData(base.ID, "big", &slowReader{bytes.NewReader(big), 20 * time.Millisecond}); err != nil {
		t.Fatalf("big data written while containerd's GC ran: %v", err)
	}
	tarball := storeTar(t, map[string]string{"etc/big": strings.Repeat("layer under GC\n", 1<<20)})
	layer, _, err := s.PutLayer("", base.ID, []string{"gc-layer"}, "", false, nil, &slowReader{bytes.NewReader(tarball), 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("layer applied while containerd's GC ran: %v", err)
	}
	close(stop)
	if runs := <-gcDone; runs < 3 {
		t.Errorf("containerd's GC ran only %d times during the writes; the test proves little", runs)
	}

	rc, err := s.LayerBigData(base.ID, "big")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, big) {
		t.Errorf("big data reads back %d bytes, want %d", len(got), len(big))
	}
	u := storage.Uncompressed
	rc, err = s.Diff("", layer.ID, &storage.DiffOptions{Compression: &u})
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, tarball) {
		t.Error("the layer applied under containerd's GC does not reproduce its diff")
	}
	if err := s.Wipe(); err != nil {
		t.Fatal(err)
	}
}
