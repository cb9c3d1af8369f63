// Package layerdiff moves a layer's diff in and out of an overlay upper
// directory the way containers/storage's layer store does (layers.go
// applyDiffWithOptions and Diff), so that a layer pulled once can later be
// pushed, saved or served as exactly the bytes it was pulled as.
//
//   - Apply reads a layer blob once — compressed digest, decompression
//     (gzip, zstd, bzip2, xz or none), uncompressed digest, tar-split
//     recording — and extracts it into an overlay upper directory,
//     whiteouts in overlay form, as containerd's archive.Apply does but
//     with fewer system calls (extract.go). It reports the digests, sizes
//     and owner sets containers/storage records. Entries
//     that would land outside the directory (names or hard link targets
//     with "..", writes through symlinks that lead out, in the layer, the
//     upper directory or the lowers) are refused with ErrEscape, as
//     containers/storage refuses them, rather than contained.
//   - Reassemble rebuilds the uncompressed tar from the tar-split and the
//     extracted files, byte for byte: its digest is the UncompressedDigest.
//   - WriteDiff writes the changes of an upper directory over its lowers as
//     a new OCI tar, for layers without a tar-split (unpacked by
//     containerd, or a container's changes); Compress compresses it.
//
// Bit-exact reassembly needs the tree to still hold each payload the tar
// carried. Apply checks that and reports it as ApplyResult.Reproducible; it
// is false for layers that overwrite or remove their own files, whiteouts
// with content and sparse files, and Reassemble then fails rather than
// return other bytes. A tar-split refuses two entries with one name, so
// Apply with a tar-split refuses such layers, as containers/storage does.
//
// Not handled: UID/GID mapping; old GNU sparse files (containerd refuses
// them); syncing — Apply does not fsync, callers that record the layer as
// complete should sync the filesystem first.
package layerdiff
