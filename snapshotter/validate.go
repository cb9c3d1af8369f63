package snapshotter

import (
	"fmt"
	"unicode/utf8"

	"github.com/containerd/errdefs"
)

// MaxKeyLen bounds the keys and names of new snapshots, in bytes: the size
// containerd allows a label (key and value together), so a key fits in a
// label's value. containerd itself sets no bound; its metadata store adds
// "<namespace>/<n>/" in front of a client's key, so a client key up to
// about 4,000 bytes passes through containerd.
const MaxKeyLen = 4096

// validateNewKey checks the key (or name) a snapshot is to be created
// with: not empty, UTF-8 (containerd's gRPC API carries nothing else, and
// one such key would make every listing over the socket fail) and at most
// MaxKeyLen bytes. what says which argument it is ("key", "name").
func validateNewKey(what, key string) error {
	if err := validateKey(what, key); err != nil {
		return err
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("snapshot %s %q is not valid UTF-8: %w", what, shorten(key), errdefs.ErrInvalidArgument)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("snapshot %s is %d bytes long, over the limit of %d (%q): %w", what, len(key), MaxKeyLen, shorten(key), errdefs.ErrInvalidArgument)
	}
	return nil
}

// validateKey checks a key naming an existing snapshot: it must not be
// empty. Anything else is looked up (a snapshot made before the rules of
// validateNewKey can still be found and removed).
func validateKey(what, key string) error {
	if key == "" {
		return fmt.Errorf("snapshot %s must not be empty: %w", what, errdefs.ErrInvalidArgument)
	}
	return nil
}

// shorten cuts a key down for an error message.
func shorten(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
