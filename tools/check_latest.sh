#!/usr/bin/env bash
# Installs keras-pd as a new user does, from pyproject's version ranges alone (no constraints
# file: whatever the registry resolves today), in a fresh virtual environment, then runs every
# app once per backend at tiny sizes. The pinned CI cannot see a failure that only the newest
# releases bring (a crash at import, an API that moved); this can. docs/reliability.md.
#
# Usage: bash tools/check_latest.sh [VENV_DIR]
#   VENV_DIR             where the venv goes (recreated); default: a temp dir, removed at the end
#   REPO=PATH            the checkout to install (default: this one)
#   BACKENDS="jax torch" the backends to run (default: tensorflow jax torch)
#   APPS="train sample"  the apps to run (default: train distill sample evaluate export pipeline;
#                        distill, sample, evaluate and export use train's teacher)
#   KEEP_VENV=1          keep the temp venv (a CUDA build of torch makes it several GB)
# Prints the resolved versions, then one line per backend and app (pass / FAIL with the exit
# status; 139 is a segmentation fault) and each failure's last lines; exits 1 on any failure.
set -u
repo="${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
backends="${BACKENDS:-tensorflow jax torch}"
apps="${APPS:-train distill sample evaluate export pipeline}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/check_latest.XXXXXX")"
venv="${1:-$tmp/venv}"
# The temp dir (work dirs, logs, and the venv unless VENV_DIR was given) goes at the end.
if [ -n "${1:-}" ] || [ "${KEEP_VENV:-0}" != 1 ]; then
  trap 'rm -rf "$tmp"' EXIT
else
  trap 'rm -rf "$tmp/work"; echo "kept $venv"' EXIT
fi

echo "== venv $venv from $repo[dev], pyproject's ranges only"
python3 -m venv --clear "$venv" || { echo "FAIL: python3 -m venv"; exit 1; }
py="$venv/bin/python"
if ! "$py" -m pip install -q -e "$repo[dev]" > "$tmp/pip.log" 2>&1; then
  tail -n 30 "$tmp/pip.log"
  echo "FAIL: pip install -e $repo[dev]"
  exit 1
fi
# Versions from the installed metadata: importing a broken release here would crash this line.
"$py" - <<'EOF'
import importlib.metadata as md, platform, sys
names = ["keras", "tensorflow", "tensorflow-cpu", "tensorboard", "jax", "jaxlib", "torch",
         "triton", "tensorflow-datasets", "ai-edge-litert", "onnx", "onnxruntime", "tf2onnx",
         "onnxscript", "numpy"]
found = []
for name in names:
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
print(f"== resolved: Python {platform.python_version()}; " + ", ".join(found))
EOF

work="$tmp/work"
results=()
failed=0
run_one() {  # backend app command...
  local backend="$1" app="$2"; shift 2
  local log="$work/$backend/$app.log" start=$SECONDS rc
  (cd "$work/$backend" && env KERAS_BACKEND="$backend" TF_CPP_MIN_LOG_LEVEL=2 \
     ${threads:+OMP_NUM_THREADS=$threads} timeout 1800 "$py" -m "apps.$app" "$@") \
     > "$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    results+=("$backend $app pass $((SECONDS - start))s")
  else
    results+=("$backend $app FAIL(exit $rc) $((SECONDS - start))s")
    failed=1
    echo "--- $backend $app failed (exit $rc), last lines of $log:"
    tail -n 15 "$log"
  fi
}
for backend in $backends; do
  mkdir -p "$work/$backend"
  threads=""
  # torch's OpenMP workers spin on a shared 2-core machine (tools/run_tests.sh says the same).
  [ "$backend" = torch ] && threads="${OMP_NUM_THREADS:-1}"
  ext=tflite; fmt=litert
  [ "$backend" = torch ] && { fmt=onnx; ext=onnx; }
  for app in $apps; do
    case "$app" in
      train) run_one "$backend" train --dataset=toy2d --workdir=teacher --train_steps=40 \
               --batch_size=64 --warmup_steps=10 --sampling_steps=8 --checkpoint_every=20 \
               --sample_every=40 ;;
      distill) run_one "$backend" distill --teacher=teacher --workdir=. --end_steps=4 \
                 --updates_per_round=20 --checkpoint_every=10 --batch_size=64 ;;
      sample) run_one "$backend" sample --checkpoint=teacher --num_samples=8 --output=samples ;;
      evaluate) run_one "$backend" evaluate --workdir=. --num_samples=50 ;;
      export) run_one "$backend" export --checkpoint=teacher --format=$fmt --output=sampler.$ext ;;
      pipeline) run_one "$backend" pipeline --quick --dataset=toy2d --workdir=pipeline ;;
      *) results+=("$backend $app FAIL(unknown app)"); failed=1 ;;
    esac
  done
done
echo "== results"
printf '%s\n' "${results[@]}"
if [ $failed -ne 0 ]; then
  echo "check_latest: FAILED"
  exit 1
fi
echo "check_latest: all passed"
