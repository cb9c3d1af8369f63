package daemon

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestRecover: a handler's panic becomes an Internal error for its call.
func TestRecover(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: "/test/Panic"}
	_, err := recoverUnary(context.Background(), nil, info, func(context.Context, any) (any, error) {
		var m map[string]int
		m["x"] = 1 // a nil map write panics
		return nil, nil
	})
	if status.Code(err) != codes.Internal {
		t.Errorf("unary panic: %v, want Internal", err)
	}
	err = recoverStream(nil, fakeStream{}, &grpc.StreamServerInfo{FullMethod: "/test/PanicStream"}, func(any, grpc.ServerStream) error {
		panic("boom")
	})
	if status.Code(err) != codes.Internal {
		t.Errorf("stream panic: %v, want Internal", err)
	}
	if _, err := recoverUnary(context.Background(), nil, info, func(context.Context, any) (any, error) { return "ok", nil }); err != nil {
		t.Errorf("no panic: %v", err)
	}
}

type fakeStream struct{ grpc.ServerStream }

func (fakeStream) Context() context.Context { return context.Background() }
