#!/usr/bin/env bash
# Sampling gap: tools/bench_sampling.py on digits_mlp and the digits UNet, for jax, tensorflow and
# torch with 1 and 2 threads, one after another; reports land in runs/samp_<preset>_<config>.json.
# Usage: bash tools/bench_sampling_gap.sh   (alone on the machine; a few minutes on 2 cores)
set -u
mkdir -p runs
for preset in digits_mlp digits; do
  if [ $preset = digits ]; then st=1,4,16; rs=16; else st=1,4,64; rs=64; fi
  for cfg in jax tensorflow torch1 torch2; do
    b=${cfg%[12]}; thr=${cfg#torch}
    envs="KERAS_BACKEND=$b"
    [ $b = torch ] && envs="$envs OMP_NUM_THREADS=$thr"
    echo "=== $preset $cfg"
    env $envs timeout 600 python tools/bench_sampling.py --preset=$preset --steps=$st --ratio_steps=$rs --rounds=3 --pairs=5 --out=runs/samp_${preset}_${cfg}.json 2>&1 | grep -v "WARN\|oneDNN\|cpu_fea\|To enable\|absl\|xla_bridge" | tail -8
  done
done
