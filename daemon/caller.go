package daemon

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/cs-snapshotter/cs-snapshotter/snapshotter"
)

// The cs store's client marks its calls with a header; the daemon turns it
// into snapshotter.WithStoreCaller, so the store sees and removes the
// snapshots it holds and containerd does not.

func isStoreCall(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(snapshotter.StoreCallerHeader) {
		if v == snapshotter.StoreCallerValue {
			return true
		}
	}
	return false
}

func storeCallerUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if isStoreCall(ctx) {
		ctx = snapshotter.WithStoreCaller(ctx)
	}
	return handler(ctx, req)
}

func storeCallerStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if isStoreCall(ss.Context()) {
		ss = contextStream{ss, snapshotter.WithStoreCaller(ss.Context())}
	}
	return handler(srv, ss)
}

type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s contextStream) Context() context.Context { return s.ctx }

func markStoreUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(AsStore(ctx), method, req, reply, cc, opts...)
}

func markStoreStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(AsStore(ctx), desc, cc, method, opts...)
}

// AsStore marks the calls made with ctx on a plain client as the store's
// (DialStore marks them all).
func AsStore(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, snapshotter.StoreCallerHeader, snapshotter.StoreCallerValue)
}
