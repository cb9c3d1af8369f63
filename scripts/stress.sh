#!/bin/sh
# The long variants of the crash, concurrency and access tests (test/e2e:
# crash_test.go, load_test.go, access_test.go): at least 200 daemon kills
# and 50 kills of an embedded store, 3 minutes of 16 clients. The default
# suite (`go test ./...`) runs the short variants of the same tests.
#
#   sudo scripts/stress.sh                   # seed 1
#   sudo CS_SEED=42 scripts/stress.sh        # another plan (same seed, same plan)
#
# Knobs (environment): CS_SEED, CS_CRASH_KILLS (200), CS_CRASH_EMBEDDED_KILLS
# (50), CS_CRASH_LAYER_MB (48), CS_LOAD_DURATION (3m), CS_STRESS_RUN (a
# go test -run pattern), CS_STRESS_LOG (the full log; default
# /tmp/cs-stress.log). Needs root and scripts/install-deps.sh, like the
# e2e suite. The figures of each test are printed at the end.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "stress.sh: run as root (the e2e tests run containerd, mount and start containers)" >&2
	exit 1
fi
export CS_STRESS=1
export CS_SEED="${CS_SEED:-1}"
log="${CS_STRESS_LOG:-/tmp/cs-stress.log}"
run="${CS_STRESS_RUN:-^(TestCrashDaemon|TestCrashEmbeddedStore|TestConcurrentLoad|TestUnprivilegedAccess|TestRebootForgetsMounts)\$}"

echo "stress: seed $CS_SEED, tests $run; full log in $log"
status=0
go test -count=1 -timeout "${CS_STRESS_TIMEOUT:-6h}" -v -run "$run" ./test/e2e/ >"$log" 2>&1 || status=$?

# The figures: each test's summary and what failed.
awk '
	/^(=== RUN|--- (PASS|FAIL|SKIP)|PASS$|FAIL$|ok |FAIL\t)/ { print; keep = 0; next }
	/(crash test, seed|embedded store crash test|load, seed|nobody could|nobody connecting|mounts of map|round [0-9]+ \(seed)/ { print; keep = 1; next }
	keep && /^        / { print; next }
	{ keep = 0 }
' "$log"
exit $status
