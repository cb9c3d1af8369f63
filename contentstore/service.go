package contentstore

import (
	"context"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/services/content/contentserver"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NewService returns containerd's content gRPC service (contentserver) for
// cs, refusing with InvalidArgument the requests it would crash on: an
// Update without its Info dereferences nil, and a panic in a gRPC handler
// ends the whole daemon.
func NewService(cs content.Store) contentapi.ContentServer {
	return service{contentserver.New(cs)}
}

type service struct {
	contentapi.ContentServer
}

func (s service) Update(ctx context.Context, req *contentapi.UpdateRequest) (*contentapi.UpdateResponse, error) {
	if req.GetInfo() == nil {
		return nil, status.Error(codes.InvalidArgument, "update content: the request has no info (digest and labels)")
	}
	return s.ContentServer.Update(ctx, req)
}
