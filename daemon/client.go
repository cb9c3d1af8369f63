package daemon

import (
	"fmt"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/content"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/snapshots"
	snapshotproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/defaults"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Client reaches a daemon's services through containerd's own proxy
// clients, exactly as containerd does.
type Client struct {
	conn        *grpc.ClientConn
	Snapshotter snapshots.Snapshotter
	Content     content.Store
}

// Dial connects to the daemon listening on the unix socket address, as
// containerd does.
func Dial(address string) (*Client, error) {
	return dial(address)
}

// DialStore connects as the cs store: its calls see and remove the
// snapshots the store holds (snapshotter.WithStoreCaller).
func DialStore(address string) (*Client, error) {
	return dial(address, grpc.WithChainUnaryInterceptor(markStoreUnary), grpc.WithChainStreamInterceptor(markStoreStream))
}

func dial(address string, opts ...grpc.DialOption) (*Client, error) {
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
			grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize),
		))
	conn, err := grpc.NewClient("unix://"+address, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", address, err)
	}
	return &Client{
		conn:        conn,
		Snapshotter: snapshotproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "cs"),
		Content:     contentproxy.NewContentStore(contentapi.NewContentClient(conn)),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
