#!/usr/bin/env bash
# Runs containers/storage's own bats tests (v1.50.2, from the Go module
# cache) against cs-snapshotter's containers-storage-compatible CLI, with the
# overlay driver, as root:
#
#   sudo scripts/cstorage-bats.sh                   # the layer-related files
#   sudo scripts/cstorage-bats.sh diff.bats names   # just these files
#
# The tests are copied at run time from
# $(go env GOMODCACHE)/github.com/containers/storage@v1.50.2/tests (filled by
# `go mod download` when missing), never vendored. bats is installed with
# apt-get when missing. Every test case's result goes to $OUT/results.txt as
# "PASS|FAIL|SKIP<TAB>file.bats: test name"; each file's TAP output goes to
# $OUT/<file>.tap. A summary per file is printed at the end.
#
# Environment:
#   STORAGE_BINARY  the CLI to test (default: bin/cs-snapshotter, built here)
#   OUT             where results.txt and the TAP logs go (default: a
#                   directory in the scratch directory, printed at the end)
#   BATS_FILTER     only test cases whose names match this regex (bats -f)
#   KEEP=1          keep the scratch directory
#   VERBOSE=1       print the TAP output of failing files
#
# Exit status: 0 every case ran passed (or skipped), 1 some failed, 2 the run
# could not be set up (no bats, no module, no binary, not root).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PATH="$PATH:/usr/local/go/bin"
CS_STORAGE_MODULE=github.com/containers/storage@v1.50.2

# The files with layer, image, container and image store tests. Files
# about ID mappings (idmaps.bats) or containers-storage's own on-disk
# layout (check.bats, overlay-recreate.bats, create-image.bats) are left
# out; cleanup-layer.bats, create-layer.bats and create-container.bats are
# in although they (also) need such things, so that the summary shows them.
DEFAULT_FILES=(
  abs apply-diff apply-junk bigdata changes cleanup-layer create-layer
  delete-layer delete diff diffsize import-layer layers metadata
  mount-layer names status image image-by-digest delete-image manifests
  container container-dirs create-container delete-container
  stores split-store
)

die() { echo "cstorage-bats: $*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "run as root (the overlay driver mounts)"

if ! command -v bats >/dev/null; then
  echo "==> installing bats" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bats >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bats >/dev/null 2>&1; } ||
    die "bats is not installed and 'apt-get install bats' failed"
fi
command -v bats >/dev/null || die "bats is not installed"

command -v go >/dev/null || die "go is not on PATH (needed to find $CS_STORAGE_MODULE)"
TESTS_SRC="$(go env GOMODCACHE)/${CS_STORAGE_MODULE}/tests"
if [ ! -f "$TESTS_SRC/helpers.bash" ]; then
  echo "==> go mod download $CS_STORAGE_MODULE" >&2
  tmpmod=$(mktemp -d)
  (cd "$tmpmod" && GOFLAGS=-mod=mod GOWORK=off go mod download "$CS_STORAGE_MODULE") >&2 ||
    { rm -rf "$tmpmod"; die "cannot download $CS_STORAGE_MODULE (needs the Go module proxy)"; }
  rm -rf "$tmpmod"
fi
[ -f "$TESTS_SRC/helpers.bash" ] || die "no $TESTS_SRC/helpers.bash after go mod download"

if [ -z "${STORAGE_BINARY:-}" ]; then
  echo "==> building bin/cs-snapshotter" >&2
  go build -o bin/cs-snapshotter ./cmd/cs-snapshotter || die "cannot build cs-snapshotter"
  STORAGE_BINARY="$REPO/bin/cs-snapshotter"
fi
STORAGE_BINARY=$(readlink -f "$STORAGE_BINARY")
[ -x "$STORAGE_BINARY" ] || die "STORAGE_BINARY $STORAGE_BINARY is not executable"

FILES=()
for f in "${@:-${DEFAULT_FILES[@]}}"; do
  f=$(basename "$f" .bats)
  [ -f "$TESTS_SRC/$f.bats" ] || die "no $f.bats in $TESTS_SRC"
  FILES+=("$f")
done

WORK=$(mktemp -d /var/tmp/cstorage-bats.XXXXXX)
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK/tests" "$WORK/tmp" "$OUT"
OUT=$(readlink -f "$OUT")

# Unmount whatever a failed test left mounted under the scratch directory
# (deepest first), so that the next file starts clean and the directory can
# be removed.
unmount_leftovers() {
  awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}
cleanup() {
  unmount_leftovers
  if [ "${KEEP:-0}" = 1 ]; then
    echo "==> kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

cp "$TESTS_SRC/helpers.bash" "$WORK/tests/"
for f in "${FILES[@]}"; do cp "$TESTS_SRC/$f.bats" "$WORK/tests/"; done
chmod -R u+w "$WORK/tests"

export STORAGE_BINARY STORAGE_DRIVER=overlay STORAGE_OPTION= STORAGE_TRANSIENT=0
# helpers.bash puts TESTDIR in $BATS_TMPDIR, which is $TMPDIR; the CLI's
# own temporary mounts go there too.
export TMPDIR="$WORK/tmp"
echo "==> $(bats --version); $STORAGE_BINARY; tests from $TESTS_SRC" >&2

: >"$OUT/results.txt"
status=0
summary=()
for f in "${FILES[@]}"; do
  echo "==> $f.bats" >&2
  args=(--tap)
  [ -n "${BATS_FILTER:-}" ] && args+=(-f "$BATS_FILTER")
  start=$SECONDS
  (cd "$WORK/tests" && bats "${args[@]}" "$f.bats") >"$OUT/$f.tap" 2>&1
  unmount_leftovers
  pass=0 fail=0 skip=0
  while IFS= read -r line; do
    case "$line" in
      "not ok "*)
        name=${line#not ok }; name=${name#* }
        printf 'FAIL\t%s.bats: %s\n' "$f" "$name" >>"$OUT/results.txt"; fail=$((fail + 1)) ;;
      "ok "*" # skip"*)
        name=${line#ok }; name=${name#* }; name=${name% # skip*}
        printf 'SKIP\t%s.bats: %s\n' "$f" "$name" >>"$OUT/results.txt"; skip=$((skip + 1)) ;;
      "ok "*)
        name=${line#ok }; name=${name#* }
        printf 'PASS\t%s.bats: %s\n' "$f" "$name" >>"$OUT/results.txt"; pass=$((pass + 1)) ;;
    esac
  done <"$OUT/$f.tap"
  if [ $((pass + fail + skip)) -eq 0 ]; then
    printf 'FAIL\t%s.bats: (no test ran)\n' "$f" >>"$OUT/results.txt"; fail=1
  fi
  grep -E '^(ok|not ok) ' "$OUT/$f.tap" | sed 's/^/    /' >&2
  [ "$fail" -gt 0 ] && { status=1; [ "${VERBOSE:-0}" = 1 ] && sed 's/^/      /' "$OUT/$f.tap" >&2; }
  summary+=("$(printf '%-20s %3d passed %3d failed %3d skipped  %4ds' "$f.bats" "$pass" "$fail" "$skip" $((SECONDS - start)))")
done

echo
echo "containers/storage v1.50.2 bats tests against $STORAGE_BINARY (overlay):"
printf '  %s\n' "${summary[@]}"
printf '  %-20s %3d passed %3d failed %3d skipped\n' total \
  "$(grep -c '^PASS' "$OUT/results.txt")" "$(grep -c '^FAIL' "$OUT/results.txt")" "$(grep -c '^SKIP' "$OUT/results.txt")"
case "$OUT" in
  "$WORK"/*) [ "${KEEP:-0}" = 1 ] && echo "results and TAP logs: $OUT" ;;
  *) echo "results and TAP logs: $OUT" ;;
esac
exit $status
