#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend; fails if any backend fails.
# Usage: bash tools/run_tests.sh [extra pytest args]
set -u
export TF_CPP_MIN_LOG_LEVEL=2
failed=()
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  threads=()
  # The suite's models are tiny: torch's OpenMP workers cost more than they give on 2 cores,
  # and they spin badly when anything else shares the CPU (10-100x slower steps seen here).
  [ "$backend" = torch ] && threads=(OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
  env "${threads[@]}" KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@" \
    || failed+=("$backend")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED on: ${failed[*]}"
  exit 1
fi
echo "all backends passed"
