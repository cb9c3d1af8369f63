package contentstore

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/cs-snapshotter/cs-snapshotter/cslabels"
)

// CommitReferenced commits the ingest of w as a blob carrying labels, which
// must include at least one reference (a cslabels.BlobRefPrefix label), and
// returns the blob's digest. When the blob exists already (the same bytes
// committed for another user), the references among labels are added to
// it instead; its other labels are left as they are.
//
// The daemon's store (in-process or through its socket) does both in one
// step under the blob's lock (cslabels.CommitAddRefs), so a concurrent
// Release or Delete of the same digest either runs before, and the blob is
// committed afresh, or after, and sees the reference. A store in between
// that answers AlreadyExists itself (containerd's metadata store, when the
// store is opened through containerd) gets the references by an Update
// afterwards, which such a store cannot make atomic.
//
// On failure the ingest is aborted: the caller has nothing to resume.
func CommitReferenced(ctx context.Context, cs content.Store, w content.Writer, labels map[string]string) (digest.Digest, error) {
	refs := refLabels(labels)
	if len(refs) == 0 {
		return "", fmt.Errorf("commit referenced: no %s label among %v: %w", cslabels.BlobRefPrefix, labels, errdefs.ErrInvalidArgument)
	}
	st, err := w.Status()
	if err != nil {
		return "", fmt.Errorf("commit referenced: status: %w", err)
	}
	l := make(map[string]string, len(labels)+1)
	maps.Copy(l, labels)
	l[cslabels.CommitAddRefs] = "1"
	err = w.Commit(ctx, 0, "", content.WithLabels(l))
	dgst := w.Digest()
	if errdefs.IsAlreadyExists(err) {
		// Not the daemon's answer to CommitAddRefs: a store in between
		// found the blob. Add the references now.
		paths := make([]string, 0, len(refs))
		for k := range refs {
			paths = append(paths, "labels."+k)
		}
		if _, err = cs.Update(ctx, content.Info{Digest: dgst, Labels: refs}, paths...); err != nil {
			return "", fmt.Errorf("add references to existing blob %s: %w", dgst, err)
		}
		return dgst, nil
	}
	if err != nil {
		if aerr := cs.Abort(ctx, st.Ref); aerr != nil && !errdefs.IsNotFound(aerr) {
			log.G(ctx).WithError(aerr).WithField("ref", st.Ref).Warn("failed to abort an ingest whose commit failed")
		}
		return "", err
	}
	return dgst, nil
}

// refLabels returns the references (cslabels.BlobRefPrefix labels with a
// value) among labels.
func refLabels(labels map[string]string) map[string]string {
	var refs map[string]string
	for k, v := range labels {
		if v != "" && strings.HasPrefix(k, cslabels.BlobRefPrefix) {
			if refs == nil {
				refs = map[string]string{}
			}
			refs[k] = v
		}
	}
	return refs
}

// addRefsRequest takes cslabels.CommitAddRefs out of a commit's labels. It
// returns the labels to store and whether the commit asked for it; asking
// without a reference to add is refused.
func addRefsRequest(labels map[string]string) (map[string]string, bool, error) {
	if _, ok := labels[cslabels.CommitAddRefs]; !ok {
		return labels, false, nil
	}
	out := make(map[string]string, len(labels)-1)
	for k, v := range labels {
		if k != cslabels.CommitAddRefs {
			out[k] = v
		}
	}
	if len(refLabels(out)) == 0 {
		return nil, false, fmt.Errorf("label %s without a %s label to add: %w", cslabels.CommitAddRefs, cslabels.BlobRefPrefix, errdefs.ErrInvalidArgument)
	}
	return out, true, nil
}

// addRefs adds the references among labels to blob dgst, which exists. The
// caller holds the blob's lock.
func (s *Store) addRefs(dgst digest.Digest, labels map[string]string) error {
	if _, err := s.labels.Update(dgst, refLabels(labels)); err != nil {
		return fmt.Errorf("add references to %s: %w", dgst, err)
	}
	return nil
}
