#!/usr/bin/env bash
# GPU figures for docs/performance.md (issue 8, item 7): cifar10-preset training examples/s and
# MFU in bfloat16 against the chip's own measured bf16 matmul peak, on the JAX and PyTorch
# backends, and 4-step (and 1-step) DDIM sampling throughput. Writes JSON reports, the device's
# name and a log under $OUT. Budget: under 8 minutes in all (each backend has its own timeout).
#
# The GPU host has JAX and PyTorch but neither Keras nor TensorFlow, and no network: Keras and
# the two packages it needs that the host lacks travel as wheels in .whl/ (git-ignored):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
#
# then, through the device tool: command `bash tools/device_bench.sh`, carry [".whl"],
# timeout_s 540. Test here first on the CPU with a tiny setting (about 5-10 minutes on 2 shared
# cores; TensorFlow is hidden from the run as on the GPU host):
#
#   TINY=1 OUT=/tmp/device_bench bash tools/device_bench.sh
NAME=device_bench NEEDS=keras
source "$(dirname "$0")/device_common.sh"
# No TensorFlow on the GPU host: make sure nothing here needs it (a stub that refuses import).
STUB=$(mktemp -d)
printf 'raise ImportError("tensorflow is not installed on the device host")\n' > "$STUB/tensorflow.py"
export PYTHONPATH=$PWD:$STUB${PYTHONPATH:+:$PYTHONPATH}

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 \
    || echo "no nvidia-smi"
  # KERAS_BACKEND set: Keras' default backend is TensorFlow, which the host lacks
  KERAS_BACKEND=jax python3 -c "import sys, jax, torch, keras; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices(), 'torch', torch.__version__, torch.cuda.is_available(), 'keras', keras.__version__)"
} 2>&1 | tee "$OUT/device.txt" | tee -a "$LOG"

if [ "${TINY:-0}" = "1" ]; then  # CPU smoke test of the same path, in minutes
  ARGS=(--presets=digits --batch_size=8 --train_steps=2 --repeats=1 --sample_batch=4
        --sample_steps=1,4 --peak_size=256 --min_time=0.05)
  LIMIT_JAX=600; LIMIT_TORCH=600
else
  # cifar10 preset (60M parameters, 35.8 GFLOP forward per example), the paper's batch 128;
  # epochs of 10 steps, 3 timed after the warm-up (compiling) epoch; sampling at batch 256.
  ARGS=(--presets=cifar10 --batch_size=128 --train_steps=10 --repeats=3 --sample_batch=256
        --sample_steps=1,4 --peak_size=8192 --min_time=0.5)
  LIMIT_JAX=250; LIMIT_TORCH=170
fi
COMMON=(--no_distill --dtype_policy=mixed_bfloat16 --mfu_peak=backend --peak_dtype=bfloat16)

for backend in jax torch; do
  limit=$LIMIT_JAX; [ "$backend" = torch ] && limit=$LIMIT_TORCH
  echo "== $backend (limit ${limit}s) $(date -u +%T)" | tee -a "$LOG"
  KERAS_BACKEND=$backend timeout "$limit" python3 tools/bench.py "${ARGS[@]}" "${COMMON[@]}" \
    --out="$OUT/device_bench_$backend.json" 2>&1 | grep -v -E "^(WARNING|I0000|W0000)" \
    | tail -n 40 | tee -a "$LOG"
  echo "exit $backend: ${PIPESTATUS[0]}" | tee -a "$LOG"
done
rm -rf "$STUB"
echo "total $(( $(date +%s) - T_START )) s" | tee -a "$LOG"
