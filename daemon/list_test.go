package daemon_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// TestWalkInLargeMessages: a walk over the socket sees every snapshot and
// every label whole when the records are large (600 snapshots of 4 KiB
// labels, 2.4 MiB in all), and when a filter picks some.
func TestWalkInLargeMessages(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	s, err := serve(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	big := strings.Repeat("x", 4000)
	const n = 600
	for i := range n {
		labels := map[string]string{"big": fmt.Sprintf("%04d%s", i, big), "odd": fmt.Sprint(i%2 == 1)}
		if _, err := s.client.Snapshotter.Prepare(ctx, fmt.Sprintf("s%d", i), "", snapshots.WithLabels(labels)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		filters []string
		want    int
	}{{nil, n}, {[]string{`labels.odd=="true"`}, n / 2}} {
		seen := map[string]bool{}
		err := s.client.Snapshotter.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			var i int
			if _, err := fmt.Sscanf(info.Name, "s%d", &i); err != nil {
				return err
			}
			if info.Labels["big"] != fmt.Sprintf("%04d%s", i, big) {
				return fmt.Errorf("%s: label cut to %d bytes", info.Name, len(info.Labels["big"]))
			}
			if seen[info.Name] {
				return fmt.Errorf("%s seen twice", info.Name)
			}
			seen[info.Name] = true
			return nil
		}, c.filters...)
		if err != nil || len(seen) != c.want {
			t.Errorf("walk %v: %d snapshots, %v; want %d", c.filters, len(seen), err, c.want)
		}
	}
}
