#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend; fails if any backend fails.
# Usage: bash tools/run_tests.sh [extra pytest args]     e.g. -m "not slow" (the fast tier)
#
# The three passes run side by side (KERAS_PD_TEST_JOBS at a time, default 3): each pass is
# mostly one busy thread (tracing, compiling, small kernels, app start-up), so on this 2-core
# machine three at once finish in about the time of the sum divided by two. Each pass writes
# its own log (printed when all are done) and its own pytest temporary directory.
#
# Tests marked `backend_free` (their outcome cannot depend on the backend: data, checkpoint
# files, flag errors, numpy metrics, reports) run on one pass only, the one named by
# KERAS_PD_BACKEND_FREE_ON (default jax, where the app subprocesses among them start fastest);
# tests marked `one_backend(NAME)` (end-to-end runs whose backend-specific parts are tested on
# every backend) run on NAME's pass only. tests/conftest.py deselects them on the other
# passes. A plain `pytest` runs everything on its backend.
set -u
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
export KERAS_PD_BACKEND_FREE_ON="${KERAS_PD_BACKEND_FREE_ON:-jax}"
jobs="${KERAS_PD_TEST_JOBS:-3}"
logs="$(mktemp -d "${TMPDIR:-/tmp}/keras-pd-tests.XXXXXX")"
start=$SECONDS

run_pass() {  # run_pass BACKEND [pytest args]: one backend's pass, its log and exit code
  local backend=$1
  shift
  local threads=()
  # Small models: torch's OpenMP workers cost more than they give here, and they spin badly
  # when anything else shares the CPU (10-100x slower steps seen on this machine).
  [ "$backend" = torch ] && threads=(OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
  local t0=$SECONDS
  env "${threads[@]}" KERAS_BACKEND="$backend" python -m pytest -q -p no:cacheprovider \
    --basetemp="$logs/tmp-$backend" "$@" >"$logs/$backend.log" 2>&1
  echo $? >"$logs/$backend.rc"
  echo "$((SECONDS - t0))" >"$logs/$backend.seconds"
}

# Longest pass first, so the shortest one fills the gap when fewer jobs than passes run.
for backend in jax tensorflow torch; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  run_pass "$backend" "$@" &
done
wait

failed=()
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  cat "$logs/$backend.log"
  echo "=== KERAS_BACKEND=$backend: $(cat "$logs/$backend.seconds") s (side by side) ==="
  [ "$(cat "$logs/$backend.rc")" = 0 ] || failed+=("$backend")
done
echo "=== all passes: $((SECONDS - start)) s wall, $jobs at a time ==="
rm -rf "$logs"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED on: ${failed[*]}"
  exit 1
fi
echo "all backends passed"
