#!/usr/bin/env bash
# GPU quality run for docs/results.md (issue 21, item 4): an mnist5k teacher with the `mnist`
# UNet preset, distilled on 20,000 of its own samples to 4 and then 1 step, evaluated with the
# domain-classifier FID (1,000 samples; the teacher by DDIM at every step count), on JAX in
# bfloat16. Writes results.json, results.md, results.png, the sample grids, every card and a
# log under $OUT. Budget: under 8 minutes on one H100/H200 (each stage has its own timeout).
#
# Like tools/device_bench.sh, the GPU host has JAX but neither Keras nor TensorFlow nor mlxtend,
# and no network: they travel as wheels in .whl/ (git-ignored):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0 \
#       grain==0.2.18 array-record==0.8.1 mlxtend==0.23.4
#
# then, through the device tool: command `bash tools/device_quality.sh`, carry [".whl"],
# timeout_s 540. Tested here on the CPU with a tiny setting (a few minutes):
#
#   TINY=1 OUT=/tmp/device_quality bash tools/device_quality.sh
NAME=device_quality NEEDS="keras, grain, mlxtend"
source "$(dirname "$0")/device_common.sh"
export KERAS_BACKEND=jax
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
} 2>&1 | tee "$OUT/device.txt" | tee -a "$LOG"

W=${WORKDIR:-/tmp/device_quality_run}
if [ "${TINY:-0}" = "1" ]; then  # CPU smoke test of the same path
  TRAIN=(--train_steps=20 --batch_size=16 --checkpoint_every=20 --sample_every=0
         --sampling_steps=8 --preset=mnist_small)
  DISTILL=(--teacher_steps=8 --updates_per_round=4 --teacher_samples=64 --batch_size=16
           --checkpoint_every=4)
  EVAL=(--num_samples=64)
  LIMITS=(600 900 1200)
else
  # 10,000 teacher updates of batch 128 (mnist5k's lr, EMA); a 64-step teacher distilled
  # 64 -> 1 with 1,000 updates a round (2,000 for the rounds to 2 and 1 step).
  TRAIN=(--train_steps=10000 --batch_size=128 --checkpoint_every=2500 --sample_every=0
         --sampling_steps=64 --preset=mnist)
  DISTILL=(--teacher_steps=64 --updates_per_round=1000 --teacher_samples=20000 --batch_size=128
           --checkpoint_every=1000)
  EVAL=(--num_samples=1000)
  LIMITS=(200 200 90)
fi
POLICY=(--dtype_policy=mixed_bfloat16)

stage() {  # name, limit, command...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s) $(date -u +%T)" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | grep -v -E "^(WARNING|I0000|W0000|I1|E0000)" | tail -n 20 \
    | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "$name: exit $rc, $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
  return "$rc"
}

stage train "${LIMITS[0]}" python3 -m apps.train --dataset=mnist5k --workdir="$W/teacher" \
  "${TRAIN[@]}" "${POLICY[@]}" \
&& stage distill "${LIMITS[1]}" python3 -m apps.distill --teacher="$W/teacher" \
  --workdir="$W" --end_steps=1 "${DISTILL[@]}" "${POLICY[@]}" \
&& stage evaluate "${LIMITS[2]}" python3 -m apps.evaluate --workdir="$W" \
  --teacher="$W/teacher" --seed=0 "${EVAL[@]}"
echo "exit: $?" | tee -a "$LOG"
for f in results.json results.md results.png; do [ -f "$W/$f" ] && cp "$W/$f" "$OUT/"; done
python3 - "$W" "$OUT" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, shutil, sys
w, out = sys.argv[1:]
cards = {}
for d in sorted(os.listdir(w)):
    card = os.path.join(w, d, "card.json")
    if os.path.exists(card):
        c = json.load(open(card))
        cards[d] = {k: c.get(k) for k in ("kind", "sampling_steps", "steps_trained",
                                          "wall_time_s", "parameters", "complete")}
json.dump(cards, open(os.path.join(out, "cards.json"), "w"), indent=1)
grids = os.path.join(w, "grids")
if os.path.isdir(grids):  # at most 4 grids come back (the tool's 8-file limit)
    for name in sorted(os.listdir(grids))[:4]:
        shutil.copy(os.path.join(grids, name), os.path.join(out, name))
print(json.dumps(cards))
EOF
echo "total $(( $(date +%s) - T_START )) s" | tee -a "$LOG"
