package snapshotter

import (
	"context"
	"maps"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// CommitMirror makes the committed snapshot key on parent with labels (a
// mirror of another root's layer: cs.ro-dir among them) on sn, which may be
// a client of the daemon. It goes through the active snapshot prep, marked
// cs.incomplete=mirroring until committed, so that a kill in between leaves
// only what the root's next opening removes. prep must be unique to the
// call: two callers mirroring the same layer at once both get to commit,
// and the one that finds key made meanwhile (AlreadyExists) takes it.
func CommitMirror(ctx context.Context, sn snapshots.Snapshotter, key, prep, parent string, labels map[string]string) error {
	prepLabels := maps.Clone(labels)
	prepLabels[cslabels.Incomplete] = "mirroring"
	if _, err := sn.Prepare(ctx, prep, parent, snapshots.WithLabels(prepLabels)); err != nil {
		return err
	}
	if err := sn.Commit(ctx, key, prep, snapshots.WithLabels(labels)); err != nil {
		if rerr := sn.Remove(ctx, prep); rerr != nil && !errdefs.IsNotFound(rerr) {
			log.G(ctx).WithError(rerr).WithField("key", prep).Warn("removing an unused mirror's snapshot failed")
		}
		if !errdefs.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}
