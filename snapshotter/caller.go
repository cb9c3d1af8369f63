package snapshotter

import "context"

// StoreCallerHeader is the gRPC metadata key with which the cs store's
// client marks its calls to the daemon (value StoreCallerValue).
const (
	StoreCallerHeader = "cs-caller"
	StoreCallerValue  = "store"
)

type storeCallerKey struct{}

// WithStoreCaller marks ctx as the cs store's own. Snapshots the store holds
// (label cslabels.Owned) are then listed by Walk and removed by Remove.
// Everyone else, containerd's garbage collector above all, neither sees
// nor removes them: a snapshot its walk never lists cannot vanish between
// that walk and its Remove, which would fail the whole collection pass.
func WithStoreCaller(ctx context.Context) context.Context {
	return context.WithValue(ctx, storeCallerKey{}, true)
}

// IsStoreCaller reports whether ctx was marked by WithStoreCaller.
func IsStoreCaller(ctx context.Context) bool {
	v, _ := ctx.Value(storeCallerKey{}).(bool)
	return v
}
