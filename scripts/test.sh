#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/install-deps.sh),
# checks gofmt and go vet, then runs every package's tests, containerd's
# snapshotter and content suites (in-process and over the socket) and the
# end-to-end tests with real containerd, ctr, nerdctl and runc, then each
# fuzz target for $FUZZTIME (default 5s).
# Must run as root (overlayfs mounts, containerd, runc).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:/usr/local/bin:$PATH"

[ "$(id -u)" -eq 0 ] || { echo "scripts/test.sh: run as root (overlayfs, containerd and runc need it)" >&2; exit 1; }

scripts/install-deps.sh

echo "==> gofmt, go vet"
unformatted=$(git ls-files '*.go' | xargs gofmt -l)
if [ -n "$unformatted" ]; then
  echo "gofmt would change:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...

echo "==> go test"
go test -count=1 -timeout 30m "$@" ./...

# Each fuzz target for a bounded time beyond its seed corpus (which the
# go test run above already ran); FUZZTIME=0 skips this.
if [ "${FUZZTIME:-5s}" != 0 ]; then
  echo "==> fuzz (${FUZZTIME:-5s} per target)"
  FUZZTIME=${FUZZTIME:-5s} scripts/fuzz.sh
fi
