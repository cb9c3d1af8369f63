#!/usr/bin/env bash
# Runs the snapshotter benchmarks (daemon/bench_test.go) and prints ns/op and
# allocs/op per operation for cs in-process, cs over its socket and
# containerd's overlayfs snapshotter. Needs root. With the defaults it takes
# about three minutes on 2 cores, a third of it building the three stores of
# 10,000 snapshots.
#
# Environment:
#   BENCHTIME  go test -benchtime (default 1s)
#   COUNT      go test -count (default 1; use 6+ for benchstat)
#   BENCH      benchmark pattern (default BenchmarkSnapshotter)
#   SNAPSHOTS  snapshots in each store (default 10000)
#   OUT        where the raw go test output goes (default a file in /var/tmp);
#              feed it to benchstat for confidence intervals
#
# scripts/bench.sh --table FILE prints the table of an earlier run's output.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

BENCHTIME=${BENCHTIME:-1s}
COUNT=${COUNT:-1}
BENCH=${BENCH:-BenchmarkSnapshotter}
export CS_BENCH_SNAPSHOTS=${SNAPSHOTS:-10000}
OUT=${OUT:-/var/tmp/cs-bench-$(date +%Y%m%d-%H%M%S).txt}

# Table: median over -count runs, one row per operation, one column per
# subject.
table() {
  awk '
  /^BenchmarkSnapshotter\/.*ns\/op/ {
    name = $1; sub(/-[0-9]+$/, "", name)
    split(name, p, "/"); subj = p[2]; op = p[3]
    k = ++n[op, subj]
    for (i = 2; i < NF; i++) {
      if ($(i+1) == "ns/op") ns[op, subj, k] = $i
      if ($(i+1) == "allocs/op") al[op, subj, k] = $i
    }
    if (!(op in seenop)) { seenop[op] = 1; ops[++nops] = op }
    if (!(subj in seensubj)) { seensubj[subj] = 1; subjs[++nsubjs] = subj }
  }
  function median(a, op, s,    c, i, j, v, t) {
    if (!((op, s) in n)) return "-"
    c = n[op, s]
    for (i = 1; i <= c; i++) v[i] = a[op, s, i] + 0
    for (i = 2; i <= c; i++) for (j = i; j > 1 && v[j-1] > v[j]; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
    return sprintf("%.0f", c % 2 ? v[(c+1)/2] : (v[c/2] + v[c/2+1]) / 2)
  }
  function table(title, a,    i, j, op, base, v) {
    printf "\n%-14s", title
    for (j = 1; j <= nsubjs; j++) printf "%14s", subjs[j]
    if (title == "ns/op") for (j = 2; j <= nsubjs; j++) printf "%14s", "r:" subjs[j]
    printf "\n"
    for (i = 1; i <= nops; i++) {
      op = ops[i]
      printf "%-14s", op
      for (j = 1; j <= nsubjs; j++) printf "%14s", median(a, op, subjs[j])
      if (title == "ns/op") {
        base = median(a, op, subjs[1])
        for (j = 2; j <= nsubjs; j++) {
          v = median(a, op, subjs[j])
          printf "%14s", (base == "-" || v == "-" || base == 0) ? "-" : sprintf("%.2fx", v / base)
        }
      }
      printf "\n"
    }
  }
  END {
    if (nops == 0) { print "bench.sh: no results" > "/dev/stderr"; exit 1 }
    table("ns/op", ns)
    printf "(median of runs; r:X = X ns/op / %s ns/op)\n", subjs[1]
    table("allocs/op", al)
  }' "$1"
}

if [ "${1:-}" = --table ]; then
  table "$2"
  exit
fi

if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: must run as root (the snapshotters check overlayfs support)" >&2
  exit 1
fi

echo "bench.sh: $BENCH, $CS_BENCH_SNAPSHOTS snapshots, -benchtime=$BENCHTIME -count=$COUNT; raw output in $OUT" >&2
go test -run '^$' -bench "$BENCH" -benchtime="$BENCHTIME" -count="$COUNT" \
  -timeout=60m -v ./daemon/ | grep -v -e '^=== ' -e '^BenchmarkSnapshotter[^ \t]*$' | tee "$OUT"

table "$OUT"
