#!/usr/bin/env bash
# The test suite, as the README and CI run it (after `bash scripts/setup.sh --test`):
#   bash scripts/test.sh [pytest arguments]      e.g. -x, -k sampler, --lf
# 1. Every test not marked `alone`, on two pytest-xdist workers (RLPT_JAX_TEST_WORKERS),
#    a test file per worker: most tests are single-threaded XLA compiles and small runs, so
#    two at once use both cores better (2-core Xeon: 41 instead of 45 minutes in all).
# 2. The tests marked `alone` (several JAX processes each, ~10 GiB together), one at a time
#    with nothing beside them: next to the other worker's run they exceeded 24 GiB.
# Both steps always run; the script fails if either failed. `pytest tests` runs everything
# in one process, which is slower but equivalent.
set -uo pipefail
cd "$(dirname "$0")/.."
workers=${RLPT_JAX_TEST_WORKERS:-2}

run() {  # pytest, where "nothing selected" (exit 5, e.g. a -k that names one step's tests) is fine
  .venv/bin/python -m pytest "$@"
  local rc=$?
  [[ $rc == 5 ]] && rc=0
  return $rc
}

run -q -n "$workers" --dist loadfile -m "not alone" --durations=25 "$@" tests
first=$?
run -q -m alone --durations=5 "$@" tests
second=$?
if [[ $first != 0 || $second != 0 ]]; then
  echo "[test] failed: parallel step exit $first, 'alone' step exit $second" >&2
  exit 1
fi
