#!/usr/bin/env bash
# The "main job" demo of cs-snapshotter: containerd v2 using cs-snapshotter
# as its `cs` snapshotter and its content store (proxy plugins on one unix
# socket), importing a small busybox image and running a container from it.
#
#   sudo scripts/demo.sh
#
# Steps: install the tools (scripts/install-deps.sh), build cs-snapshotter
# and mkimage into ./bin, build the image archive, start cs-snapshotter and
# containerd in a scratch directory, `ctr images import --snapshotter cs`,
# `ctr run --snapshotter cs ... cat /etc/cs-hello.txt`, list the snapshots
# (containerd's view and the daemon's own), then stop everything.
#
# Environment:
#   CS_DEMO_DIR    scratch directory (default: a new /tmp/cs-demo.XXXXXX,
#                  removed at the end; a given directory is kept)
#   CS_DEMO_KEEP=1 keep the scratch directory (logs, config, state)
#   SKIP_INSTALL=1 do not run scripts/install-deps.sh
# Exits non-zero if any step fails.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
export PATH="/usr/local/go/bin:/usr/local/bin:$PATH"

IMAGE=docker.io/library/cs-busybox:latest
HELLO_PATH=/etc/cs-hello.txt
HELLO_TEXT="hello from cs-snapshotter"

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (containerd, overlayfs mounts and runc need it)"

if [ -n "${CS_DEMO_DIR:-}" ]; then
  DIR=$CS_DEMO_DIR
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  KEEP=1
else
  DIR=$(mktemp -d /tmp/cs-demo.XXXXXX)
  KEEP=${CS_DEMO_KEEP:-0}
fi

CS_SOCK=$DIR/cs.sock
CTRD_SOCK=$DIR/containerd.sock
CS_LOG=$DIR/cs-snapshotter.log
CTRD_LOG=$DIR/containerd.log
CS_PID=
CTRD_PID=
CTR=(ctrq --address "$CTRD_SOCK" -n default)

# ctrq: ctr without two stderr warnings that are noise here: the cgroup v1
# deprecation notice, and (when ctr talks to the daemon's socket directly)
# the missing introspection service, which the daemon does not serve.
ctrq() {
  ctr "$@" 2> >(grep -v -e 'DEPRECATION: The support for cgroup v1' \
                        -e 'introspection.v1.Introspection' >&2 || true)
}

# stop PID NAME: SIGTERM, wait up to 10 s, then SIGKILL.
stop() {
  local pid=$1 name=$2 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "    $name (pid $pid) did not stop within 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ "$rc" -ne 0 ]; then
    for f in "$CS_LOG" "$CTRD_LOG"; do
      [ -f "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 30 "$f" >&2; }
    done
  fi
  step "stopping containerd and cs-snapshotter"
  if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
    # Tasks left by a failed step: kill them so their shims exit.
    for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
      "${CTR[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1
      "${CTR[@]}" tasks rm -f "$id" >/dev/null 2>&1
    done
  fi
  stop "$CTRD_PID" containerd
  stop "$CS_PID" cs-snapshotter
  # Anything still mounted under the scratch directory (deepest first).
  awk -v d="$DIR" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo |
    sort -r | while read -r mp; do umount -l "$mp" 2>/dev/null; done
  if [ "$KEEP" = 1 ]; then
    echo "    kept $DIR (logs: $CS_LOG, $CTRD_LOG)"
  else
    rm -rf "$DIR"
  fi
  if [ "$rc" -eq 0 ]; then
    printf '\n==> demo finished successfully\n'
  else
    printf '\n==> demo FAILED (exit %d)\n' "$rc" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "FAILED (line $LINENO): $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_socket PID NAME SOCKET: wait until the socket exists, failing if the
# process dies first.
wait_socket() {
  local pid=$1 name=$2 sock=$3 i
  for i in $(seq 300); do
    [ -S "$sock" ] && return 0
    kill -0 "$pid" 2>/dev/null || die "$name exited before creating $sock (see its log above)"
    sleep 0.1
  done
  die "$name did not create $sock within 30 s"
}

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  step "installing runc, busybox-static, containerd, ctr, nerdctl (scripts/install-deps.sh)"
  scripts/install-deps.sh
fi
for tool in containerd ctr containerd-shim-runc-v2 runc; do
  command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-deps.sh"
done

step "building cs-snapshotter and mkimage into $REPO/bin"
mkdir -p bin
go build -o bin/cs-snapshotter ./cmd/cs-snapshotter
go build -o bin/mkimage ./test/cmd/mkimage

step "building the busybox image archive ($IMAGE, 3 layers) in $DIR"
bin/mkimage -o "$DIR/cs-busybox.tar" -name "$IMAGE" -layers 3 -v

step "starting cs-snapshotter (socket $CS_SOCK, log $CS_LOG)"
bin/cs-snapshotter serve --root "$DIR/cs-root" --run-root "$DIR/cs-run" \
  --address "$CS_SOCK" --log-level debug >"$CS_LOG" 2>&1 &
CS_PID=$!
wait_socket "$CS_PID" cs-snapshotter "$CS_SOCK"
echo "    cs-snapshotter running, pid $CS_PID"

step "writing the containerd config $DIR/containerd.toml"
sed -e "s|{{.Root}}|$DIR/containerd-root|g" \
    -e "s|{{.State}}|$DIR/containerd-state|g" \
    -e "s|{{.Address}}|$CTRD_SOCK|g" \
    -e "s|{{.CSSocket}}|$CS_SOCK|g" \
    -e "s|{{.CSRoot}}|$DIR/cs-root|g" \
    -e "s|{{.Platform}}|linux/$(go env GOARCH)|g" \
    test/e2e/testdata/containerd.toml.tmpl >"$DIR/containerd.toml"
if grep -q '{{' "$DIR/containerd.toml"; then die "unfilled placeholder in $DIR/containerd.toml"; fi
sed 's/^/    /' "$DIR/containerd.toml"

step "starting containerd (socket $CTRD_SOCK, log $CTRD_LOG)"
containerd --config "$DIR/containerd.toml" --log-level debug >"$CTRD_LOG" 2>&1 &
CTRD_PID=$!
wait_socket "$CTRD_PID" containerd "$CTRD_SOCK"
echo "    containerd running, pid $CTRD_PID"
"${CTR[@]}" plugins ls 2>/dev/null | awk 'NR == 1 || $2 == "cs" || $2 == "cs-content"' | sed 's/^/    /'
"${CTR[@]}" plugins ls 2>/dev/null | awk '$2 == "cs" && $NF == "ok" {s=1} $2 == "cs-content" && $NF == "ok" {c=1} END {exit !(s && c)}' ||
  die "containerd did not load the cs and cs-content proxy plugins"

step "importing the image: ctr images import --snapshotter cs"
"${CTR[@]}" images import --snapshotter cs "$DIR/cs-busybox.tar"
"${CTR[@]}" images ls

step "running a container: ctr run --rm --snapshotter cs $IMAGE ... cat $HELLO_PATH"
out=$("${CTR[@]}" run --rm --snapshotter cs "$IMAGE" "cs-demo-$$" cat "$HELLO_PATH")
printf '%s\n' "$out" | sed 's/^/    | /'
[ "$out" = "$HELLO_TEXT" ] || die "expected \"$HELLO_TEXT\" from the container, got \"$out\""

step "snapshots as containerd sees them: ctr snapshots --snapshotter cs ls"
"${CTR[@]}" snapshots --snapshotter cs ls

step "snapshots and blobs held by the daemon itself (ctr on $CS_SOCK)"
# ctr can talk to the daemon's socket directly: it serves containerd's
# Snapshots and Content APIs. containerd names the daemon's snapshots
# <namespace>/<n>/<name>; the container's active snapshot may still be
# listed for a moment, until containerd's GC removes it.
ctrq --address "$CS_SOCK" -n default snapshots --snapshotter cs ls
ctrq --address "$CS_SOCK" -n default content ls
