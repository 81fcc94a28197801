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
# files, flag errors, numpy metrics, reports) run on one pass only: KERAS_PD_BACKEND_FREE_ON
# names the passes that share them (default all three, each test on one, by a hash of its id);
# tests marked `one_backend(NAME)` (end-to-end runs whose backend-specific parts are tested on
# every backend) run on NAME's pass only. tests/conftest.py deselects them on the other
# passes. A plain `pytest` runs everything on its backend.
set -u
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
export KERAS_PD_BACKEND_FREE_ON="${KERAS_PD_BACKEND_FREE_ON:-jax,tensorflow,torch}"
jobs="${KERAS_PD_TEST_JOBS:-3}"
logs="$(mktemp -d "${TMPDIR:-/tmp}/keras-pd-tests.XXXXXX")"
start=$SECONDS

run_pass() {  # run_pass BACKEND [pytest args]: one backend's pass, its log and exit code
  local backend=$1
  shift
  local envs=()  # per-backend environment
  # Small models: torch's OpenMP workers cost more than they give here, and they spin badly
  # when anything else shares the CPU (10-100x slower steps seen on this machine).
  [ "$backend" = torch ] && envs=(OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
  # JAX's persistent compilation cache, one per pass (removed with the logs): many tests train
  # or sample the same small model, and a program compiled once is then read back instead of
  # compiled again (a 4-update toy2d run measured 8 s compiled, 1.5 s from the cache), in the
  # pass and in the app subprocesses it starts.
  [ "$backend" = jax ] && envs=(JAX_COMPILATION_CACHE_DIR="$logs/jax-cache"
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0)
  local t0=$SECONDS
  env "${envs[@]}" KERAS_BACKEND="$backend" python -m pytest -q -p no:cacheprovider \
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
