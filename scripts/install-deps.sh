#!/usr/bin/env bash
# Installs what cs-snapshotter's end-to-end tests and demo need on a fresh
# Debian 12 machine: runc and busybox-static from apt, containerd v2.2.1
# (containerd, ctr, containerd-shim-runc-v2) and nerdctl v2.1.2 built from the
# Go module proxy. Binaries go to $PREFIX/bin (default /usr/local). Idempotent:
# what is already at the wanted version is left alone.
set -euo pipefail

PREFIX=${PREFIX:-/usr/local}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.2.1}
NERDCTL_VERSION=${NERDCTL_VERSION:-v2.1.2}
BIN="$PREFIX/bin"
export PATH="/usr/local/go/bin:$PATH"

log() { echo "install-deps: $*" >&2; }

apt_pkgs=()
command -v runc >/dev/null || apt_pkgs+=(runc)
[ -x /usr/bin/time ] || apt_pkgs+=(time) # peak RSS in test/bench/scale
[ -x /bin/busybox ] && /bin/busybox --help 2>&1 | grep -q 'statically linked' || \
  { dpkg -s busybox-static >/dev/null 2>&1 || apt_pkgs+=(busybox-static); }
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

have_version() { # binary wanted-version
  [ -x "$BIN/$1" ] && "$BIN/$1" --version 2>/dev/null | grep -q -- "$2"
}

if ! have_version containerd "$CONTAINERD_VERSION" || ! have_version ctr "$CONTAINERD_VERSION" || [ ! -x "$BIN/containerd-shim-runc-v2" ]; then
  log "building containerd $CONTAINERD_VERSION (containerd, ctr, containerd-shim-runc-v2)"
  GOBIN="$BIN" CGO_ENABLED=1 go install -tags no_btrfs \
    -ldflags "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
fi

if ! have_version nerdctl "${NERDCTL_VERSION#v}"; then
  log "building nerdctl $NERDCTL_VERSION"
  # nerdctl's version list is not served by the proxy, so `go install @version`
  # fails; building inside a tiny module that requires it works.
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  printf 'module nerdctl-build\n\ngo 1.24\n' >"$work/go.mod"
  (cd "$work" &&
   go get "github.com/containerd/nerdctl/v2/cmd/nerdctl@$NERDCTL_VERSION" &&
   go build -tags no_btrfs -o "$BIN/nerdctl" \
     -ldflags "-X github.com/containerd/nerdctl/v2/pkg/version.Version=$NERDCTL_VERSION" \
     github.com/containerd/nerdctl/v2/cmd/nerdctl)
fi

for b in containerd ctr containerd-shim-runc-v2 nerdctl runc; do
  command -v "$b" >/dev/null || { log "missing $b after install"; exit 1; }
done
log "ok: $("$BIN/containerd" --version | awk '{print $3}'), nerdctl $("$BIN/nerdctl" --version | awk '{print $3}'), $(runc --version | head -1)"
