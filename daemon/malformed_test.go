package daemon_test

import (
	"context"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// TestMalformedRequests: requests missing what containerd's services take
// for granted get InvalidArgument, and the daemon goes on serving.
func TestMalformedRequests(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	s, err := serve(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	conn, err := grpc.NewClient("unix://"+s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	snaps := snapshotsapi.NewSnapshotsClient(conn)
	cont := contentapi.NewContentClient(conn)
	for name, call := range map[string]func() error{
		"snapshot Update without info": func() error {
			_, err := snaps.Update(ctx, &snapshotsapi.UpdateSnapshotRequest{Snapshotter: "cs"})
			return err
		},
		"content Update without info": func() error {
			_, err := cont.Update(ctx, &contentapi.UpdateRequest{})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	// Still serving.
	if _, err := snaps.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "cs", Key: "after"}); err != nil {
		t.Errorf("the daemon no longer serves: %v", err)
	}
}
