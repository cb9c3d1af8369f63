#!/usr/bin/env bash
# Side by side: applydiff and diff throughput of cs-snapshotter's CLI and of
# the real containers-storage CLI (v1.50.2, overlay driver, built from the Go
# module proxy), on the same layers, in one run:
#   big    a multi-hundred-MB layer from host directories (/usr/local/go and
#          /usr/include), uncompressed and gzip
#   small  a many-small-files layer (30,000 files of 100 B to 4 KiB)
# Each tool gets a fresh store per round; every diff is checked to be the
# applied tar byte for byte. Prints medians and cs/containers-storage ratios
# and writes JSON next to the work directory.
#
#   sudo scripts/compare-cstorage.sh            # ROUNDS=3 by default
# Environment: ROUNDS, WORK (scratch dir, default /var/tmp/cs-compare),
# KEEP=1 keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PATH="/usr/local/go/bin:$PATH"
ROUNDS=${ROUNDS:-3}
WORK=${WORK:-/var/tmp/cs-compare}
CS_STORAGE_VERSION=v1.50.2

[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
command -v bc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bc >/dev/null
mkdir -p "$WORK" bin
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK/stores"; }
trap cleanup EXIT

echo "==> building cs-snapshotter and containers-storage $CS_STORAGE_VERSION" >&2
go build -o bin/cs-snapshotter ./cmd/cs-snapshotter
if ! [ -x bin/containers-storage ] || ! bin/containers-storage version 2>/dev/null | grep -q "${CS_STORAGE_VERSION#v}"; then
  mod=$(mktemp -d)
  printf 'module cstorage-build\n\ngo 1.24\n' >"$mod/go.mod"
  (cd "$mod" && go get "github.com/containers/storage/cmd/containers-storage@$CS_STORAGE_VERSION" >/dev/null 2>&1 &&
   go build -tags "exclude_graphdriver_btrfs exclude_graphdriver_devicemapper" -o "$REPO/bin/containers-storage" \
     github.com/containers/storage/cmd/containers-storage)
  rm -rf "$mod"
fi

echo "==> making the layers in $WORK" >&2
if [ ! -f "$WORK/big.tar" ]; then
  tar -C / -cf "$WORK/big.tar" usr/local/go usr/include
  gzip -1 -c "$WORK/big.tar" >"$WORK/big.tar.gz"
fi
if [ ! -f "$WORK/small.tar" ]; then
  rm -rf "$WORK/small-src" && mkdir -p "$WORK/small-src"
  python3 - "$WORK/small-src" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(42)
for d in range(300):
    dd = os.path.join(root, "d%03d" % d)
    os.makedirs(dd)
    for f in range(100):
        with open(os.path.join(dd, "f%03d" % f), "wb") as fh:
            fh.write(rnd.randbytes(rnd.randint(100, 4096)))
PY
  tar -C "$WORK/small-src" -cf "$WORK/small.tar" .
  rm -rf "$WORK/small-src"
fi

now() { date +%s.%N; }
# run TOOL LAYERFILE ROUND: prints "applydiff_seconds diff_seconds"
run() {
  local tool=$1 file=$2 round=$3 g r id t0 t1 t2 out
  g="$WORK/stores/$tool-$round/graph"; r="$WORK/stores/$tool-$round/run"
  rm -rf "$WORK/stores/$tool-$round"; mkdir -p "$g" "$r"
  local cli=(bin/$tool --graph "$g" --run "$r" --storage-driver overlay)
  id=$("${cli[@]}" create-layer | tail -1)
  sync; echo 3 >/proc/sys/vm/drop_caches
  t0=$(now)
  "${cli[@]}" applydiff -f "$file" "$id" >/dev/null
  sync
  t1=$(now)
  echo 3 >/proc/sys/vm/drop_caches
  out="$WORK/stores/$tool-$round/diff.tar"
  t1b=$(now)
  "${cli[@]}" diff -u -f "$out" "$id"
  t2=$(now)
  local want
  want=$(case "$file" in *.gz) gzip -dc "$file" | sha256sum ;; *) sha256sum <"$file" ;; esac | cut -d' ' -f1)
  if [ "$(sha256sum <"$out" | cut -d' ' -f1)" != "$want" ]; then
    echo "$tool: diff of $file is not the applied tar" >&2; exit 1
  fi
  rm -f "$out"
  "${cli[@]}" shutdown >/dev/null 2>&1 || true
  for m in $(grep -o "$WORK/stores/$tool-$round[^ ]*" /proc/mounts | sort -r); do umount "$m" 2>/dev/null || true; done
  rm -rf "$WORK/stores/$tool-$round"
  echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t1b" | bc)"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -A RES
for layer in big.tar big.tar.gz small.tar; do
  size=$(case "$layer" in *.gz) gzip -dc "$WORK/$layer" | wc -c ;; *) stat -c %s "$WORK/$layer" ;; esac)
  RES[$layer.size]=$size
  for tool in cs-snapshotter containers-storage; do
    : >"$WORK/$tool.$layer.apply"; : >"$WORK/$tool.$layer.diff"
  done
  for round in $(seq "$ROUNDS"); do
    # Interleave the tools so both see the same machine state.
    for tool in cs-snapshotter containers-storage; do
      read -r a d < <(run "$tool" "$WORK/$layer" "$round")
      echo "$a" >>"$WORK/$tool.$layer.apply"; echo "$d" >>"$WORK/$tool.$layer.diff"
      echo "    $layer round $round $tool: applydiff ${a}s diff ${d}s" >&2
    done
  done
  for tool in cs-snapshotter containers-storage; do
    RES[$tool.$layer.apply]=$(median <"$WORK/$tool.$layer.apply")
    RES[$tool.$layer.diff]=$(median <"$WORK/$tool.$layer.diff")
  done
done

printf '\n%-11s %-10s %12s %12s %14s %14s %8s\n' layer op cs-snapshotter c/storage "cs MB/s" "c/s MB/s" "speedup"
json="["
for layer in big.tar big.tar.gz small.tar; do
  for op in apply diff; do
    a=${RES[cs-snapshotter.$layer.$op]}; b=${RES[containers-storage.$layer.$op]}; sz=${RES[$layer.size]}
    printf '%-11s %-10s %11.2fs %11.2fs %14.0f %14.0f %7.2fx\n' "$layer" "$op" "$a" "$b" \
      "$(echo "$sz/1000000/$a" | bc -l)" "$(echo "$sz/1000000/$b" | bc -l)" "$(echo "$b/$a" | bc -l)"
    json+="{\"layer\":\"$layer\",\"op\":\"$op\",\"bytes\":$sz,\"cs_seconds\":$a,\"cstorage_seconds\":$b},"
  done
done
echo "${json%,}]" >"$WORK/compare-cstorage.json"
echo "(medians of $ROUNDS rounds, cold page cache; speedup = containers-storage time / cs-snapshotter time; JSON in $WORK/compare-cstorage.json)"
