#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after another: go test
# -fuzz takes one package and one target per run. Targets are found with
# `go test -list '^Fuzz'`, so fuzzers added to any package are picked up.
#
#   scripts/fuzz.sh                  # every package (./...)
#   scripts/fuzz.sh ./layerdiff/     # some packages
#   FUZZTIME=60s scripts/fuzz.sh
#
# FUZZTIME          per target (default 10s): a duration or a count ("1000x")
# FUZZMINIMIZETIME  per input go minimizes (default 10x). Go's default, 60s,
#                   minimizes every new interesting input for up to a minute,
#                   which leaves a short run next to no time to fuzz.
# FUZZPARALLEL      workers per target (default: go's, GOMAXPROCS)
#
# Each target first runs its seed corpus (testdata/fuzz/<target>/) and what
# earlier runs kept in go's cache (go env GOCACHE)/fuzz, within FUZZTIME: a
# short FUZZTIME after long runs may not get past that ("?" execs). A
# failing input is written to <package>/testdata/fuzz/<target>/; check it
# in with the fix, so that the plain unit tests run it from then on. The
# script goes on with the other targets, prints how many inputs each ran,
# and exits 1 if any failed. Run as root to fuzz what needs root (layerdiff
# makes device nodes and owners); otherwise those paths just fail.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

FUZZTIME=${FUZZTIME:-10s}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-10x}
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(./...)

# `go test -list` prints each package's matching names, then a line
# "ok <import path> <time>" (or "? <import path> [no test files]").
# A package that does not build is reported, and the others fuzzed.
failed=0
list=$(go test -list '^Fuzz' -run '^$' "${pkgs[@]}" 2>&1) || failed=1
targets=()
names=()
summary=()
while IFS= read -r line; do
  case "$line" in
    Fuzz*) names+=("$line") ;;
    ok*)
      pkg=$(awk '{print $2}' <<<"$line")
      for n in "${names[@]}"; do targets+=("$pkg $n"); done
      names=()
      ;;
    FAIL*)
      pkg=$(awk '{print $2}' <<<"$line")
      [ -z "$pkg" ] || summary+=("$(printf '%-8s %12s  %s %s' "NO-BUILD" "-" "$pkg" "(go test -list failed)")")
      names=()
      ;;
    *) names=() ;;
  esac
done <<<"$list"
if [ "$failed" -ne 0 ]; then
  echo "$list" | grep -v '^Fuzz' >&2
fi

if [ ${#targets[@]} -eq 0 ]; then
  echo "scripts/fuzz.sh: no fuzz targets in ${pkgs[*]}" >&2
  exit 1
fi

parallel=()
[ -z "${FUZZPARALLEL:-}" ] || parallel=(-parallel "$FUZZPARALLEL")
# go 1.26's fuzzing coordinator can fail a target with a bare "context
# deadline exceeded" when -fuzztime ends while a worker is mid-input
# (go.dev/issue/75804, fixed in go 1.27): no input is written, nothing was
# found. Such a run is tried once more; any other failure is not.
deadline_flake() {
  grep -q 'context deadline exceeded' "$1" && ! grep -q -e 'Failing input written' -e '^panic:' "$1"
}
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  log=$(mktemp)
  status=FAILED
  for attempt in 1 2; do
    echo "==> $pkg $name ($FUZZTIME)"
    if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" \
        "${parallel[@]}" "$pkg" 2>&1 | tee "$log"; then
      status=ok
      [ "$attempt" -eq 1 ] || status=ok-retry
      break
    fi
    deadline_flake "$log" || break
    echo "==> $name: only go's fuzztime deadline race (go.dev/issue/75804); once more"
  done
  [ "$status" != FAILED ] || failed=1
  execs=$( (grep -o 'execs: [0-9]*' "$log" || true) | tail -n1 | awk '{print $2}')
  summary+=("$(printf '%-8s %12s  %s %s' "$status" "${execs:-?}" "$pkg" "$name")")
  rm -f "$log"
done

echo
echo "==> fuzzing summary (execs per target, $FUZZTIME each)"
printf '%s\n' "${summary[@]}"
exit "$failed"
