#!/usr/bin/env bash
# The full reliability run (docs/reliability.md): every test of tests/reliability/ at its full size
# (RELIABILITY_FULL=1: 24 SIGKILL rounds per crash-matrix operation, the full loads and fuzzing budgets),
# then the figures the tests printed. CI runs the same tests at their small default size.
#
#   scripts/run_reliability.sh                     # everything under tests/reliability/
#   scripts/run_reliability.sh tests/reliability/test_crash_matrix.py   # a part of it
#   RELIABILITY_ROUNDS=100 scripts/run_reliability.sh tests/reliability/test_crash_matrix.py
set -euo pipefail
cd "$(dirname "$0")/.."
log="${RELIABILITY_LOG:-${TMPDIR:-/tmp}/reliability-run.log}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(tests/reliability)
fi
started=$(date +%s)
status=0
RELIABILITY_FULL=1 python -m pytest "${targets[@]}" -q -s -p no:cacheprovider --timeout 3600 2>&1 | tee "$log" \
    || status=$?
echo
echo "== figures ($(( $(date +%s) - started )) s, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)) =="
grep -ohE "[A-Z]+-FIGURES .*" "$log" || true
exit "$status"
