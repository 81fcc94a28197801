#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend; fails if any backend fails.
# Usage: bash tools/run_tests.sh [extra pytest args]     e.g. -m "not slow" (the fast tier)
#
# Tests marked `backend_free` (their outcome cannot depend on the backend: data, checkpoint
# files, flag errors, numpy metrics, reports) run on one pass only, the one named by
# KERAS_PD_BACKEND_FREE_ON (default jax, where the app subprocesses among them start fastest);
# tests/conftest.py deselects them on the other passes. A plain `pytest` runs them all.
set -u
export TF_CPP_MIN_LOG_LEVEL=2
export KERAS_PD_BACKEND_FREE_ON="${KERAS_PD_BACKEND_FREE_ON:-jax}"
failed=()
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  threads=()
  # The suite's models are tiny: torch's OpenMP workers cost more than they give on 2 cores,
  # and they spin badly when anything else shares the CPU (10-100x slower steps seen here).
  [ "$backend" = torch ] && threads=(OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
  start=$SECONDS
  env "${threads[@]}" KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@" \
    || failed+=("$backend")
  echo "=== KERAS_BACKEND=$backend: $((SECONDS - start)) s ==="
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED on: ${failed[*]}"
  exit 1
fi
echo "all backends passed"
