package daemon

import (
	"context"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var requestID atomic.Uint64

// logUnary and logStream log every call at debug level with a request ID,
// its duration and, for a failed call, its error and gRPC code. Below debug
// level they cost one level check.
func logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !log.GetLogger(ctx).Logger.IsLevelEnabled(log.DebugLevel) {
		return handler(ctx, req)
	}
	ctx, done := startCall(ctx, info.FullMethod)
	resp, err := handler(ctx, req)
	done(err)
	return resp, err
}

func logStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !log.G(ss.Context()).Logger.IsLevelEnabled(log.DebugLevel) {
		return handler(srv, ss)
	}
	_, done := startCall(ss.Context(), info.FullMethod)
	err := handler(srv, ss)
	done(err)
	return err
}

func startCall(ctx context.Context, method string) (context.Context, func(error)) {
	start := time.Now()
	entry := log.G(ctx).WithField("req", requestID.Add(1)).WithField("method", method)
	ctx = log.WithLogger(ctx, entry)
	return ctx, func(err error) {
		e := entry.WithField("duration", time.Since(start))
		if err != nil {
			e.WithField("code", status.Code(err)).WithError(err).Debug("call failed")
			return
		}
		e.Debug("call")
	}
}

// recoverUnary turns a panic in a handler into an Internal error for that
// call, logged with its stack, instead of the end of the daemon.
func recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer recovered(ctx, info.FullMethod, &err)
	return handler(ctx, req)
}

func recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer recovered(ss.Context(), info.FullMethod, &err)
	return handler(srv, ss)
}

func recovered(ctx context.Context, method string, err *error) {
	if p := recover(); p != nil {
		log.G(ctx).WithField("method", method).WithField("stack", string(debug.Stack())).Errorf("panic in handler: %v", p)
		*err = status.Errorf(codes.Internal, "%s: internal error (panic: %v)", method, p)
	}
}
