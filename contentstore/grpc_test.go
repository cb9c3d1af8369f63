package contentstore_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestGRPCMissingFields: requests over the socket with fields missing or
// wrong are answered InvalidArgument with a message saying what, and change
// nothing (an Update without its Info used to crash the daemon).
func TestGRPCMissingFields(t *testing.T) {
	cs := newTestStore(t)
	ctx := context.Background()
	one := write(t, cs, "one", map[string]string{"owner": "me"})
	client := contentapi.NewContentClient(serveContent(t, cs, t.TempDir()))

	drain := func(recv func() error) error {
		for {
			if err := recv(); err != nil {
				if err.Error() == "EOF" {
					return nil
				}
				return err
			}
		}
	}
	write := func(reqs ...*contentapi.WriteContentRequest) error {
		wc, err := client.Write(ctx)
		if err != nil {
			return err
		}
		for _, r := range reqs {
			if err := wc.Send(r); err != nil {
				break
			}
			if _, err := wc.Recv(); err != nil {
				return err
			}
		}
		wc.CloseSend()
		_, err = wc.Recv()
		if err != nil && err.Error() == "EOF" {
			return nil
		}
		return err
	}
	cases := []struct {
		name string
		call func() error
		want string
	}{
		{"Update without info", func() error {
			_, err := client.Update(ctx, &contentapi.UpdateRequest{})
			return err
		}, "no info"},
		{"Update without digest", func() error {
			_, err := client.Update(ctx, &contentapi.UpdateRequest{Info: &contentapi.Info{Labels: map[string]string{"a": "b"}}})
			return err
		}, "failed validation"},
		{"Update with a label over the limit", func() error {
			_, err := client.Update(ctx, &contentapi.UpdateRequest{Info: &contentapi.Info{
				Digest: one.String(), Labels: map[string]string{"big": strings.Repeat("x", 4094)},
			}})
			return err
		}, "4097 bytes"},
		{"Update with an empty label key", func() error {
			_, err := client.Update(ctx, &contentapi.UpdateRequest{Info: &contentapi.Info{
				Digest: one.String(), Labels: map[string]string{"": "x"},
			}})
			return err
		}, "label key must not be empty"},
		{"Info without digest", func() error {
			_, err := client.Info(ctx, &contentapi.InfoRequest{})
			return err
		}, "failed validation"},
		{"Delete without digest", func() error {
			_, err := client.Delete(ctx, &contentapi.DeleteContentRequest{})
			return err
		}, "digest"},
		{"Delete with a malformed digest", func() error {
			_, err := client.Delete(ctx, &contentapi.DeleteContentRequest{Digest: "sha256:nothex"})
			return err
		}, "digest"},
		{"Read without digest", func() error {
			rc, err := client.Read(ctx, &contentapi.ReadContentRequest{})
			if err != nil {
				return err
			}
			return drain(func() error { _, err := rc.Recv(); return err })
		}, "digest"},
		{"Status without ref", func() error {
			_, err := client.Status(ctx, &contentapi.StatusRequest{})
			return err
		}, "ref must not be empty"},
		{"Abort without ref", func() error {
			_, err := client.Abort(ctx, &contentapi.AbortRequest{})
			return err
		}, "ref must not be empty"},
		{"Write without ref", func() error {
			return write(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_WRITE, Data: []byte("x")})
		}, "reference"},
		{"Write expecting a malformed digest", func() error {
			return write(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_STAT, Ref: "r", Expected: "sha256:x"})
		}, "digest"},
		{"Commit with an empty label key", func() error {
			defer client.Abort(ctx, &contentapi.AbortRequest{Ref: "labelled"})
			return write(&contentapi.WriteContentRequest{
				Action: contentapi.WriteAction_COMMIT, Ref: "labelled", Data: []byte("new blob"),
				Labels: map[string]string{"": "x"},
			})
		}, "label key must not be empty"},
		{"List with a malformed filter", func() error {
			lc, err := client.List(ctx, &contentapi.ListContentRequest{Filters: []string{`labels."open`}})
			if err != nil {
				return err
			}
			return drain(func() error { _, err := lc.Recv(); return err })
		}, "filter"},
		{"ListStatuses with a bad regular expression", func() error {
			_, err := client.ListStatuses(ctx, &contentapi.ListStatusesRequest{Filters: []string{`ref~=(`}})
			return err
		}, "regular expression"},
	}
	before := storeContentState(t, cs)
	for _, c := range cases {
		err := c.call()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", c.name, err)
			continue
		}
		if !strings.Contains(status.Convert(err).Message(), c.want) {
			t.Errorf("%s: message %q does not say %q", c.name, status.Convert(err).Message(), c.want)
		}
		if after := storeContentState(t, cs); !reflect.DeepEqual(before, after) {
			t.Fatalf("%s changed the store:\nbefore %+v\nafter  %+v", c.name, before, after)
		}
	}
}
