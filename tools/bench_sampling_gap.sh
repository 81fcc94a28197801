#!/usr/bin/env bash
# Sampling gap: tools/bench_sampling.py on digits_mlp and the digits UNet, one configuration after
# another: jax; tensorflow with the library's default (XLA for DDIM) and with graph mode (before);
# torch eager (the default) with torch's default threads (one per core) and with one thread, and
# with --jit_compile=true (torch.compile, the opt-in). Reports land in runs/samp_<preset>_<config>.json.
# Usage: bash tools/bench_sampling_gap.sh [configs...]   (alone on the machine; ~15 min on 2 cores)
set -u
mkdir -p runs
configs=${*:-jax tensorflow tensorflow-graph torch torch-1thread torch-compile}
for preset in digits_mlp digits; do
  for cfg in $configs; do
    if [ $preset = digits ]; then st=1,4,16; rs=16; else st=1,4,64; rs=64; fi
    b=${cfg%%-*}; jit=default; thr=0
    [ $cfg = tensorflow-graph ] && jit=false
    [ $cfg = torch-1thread ] && thr=1
    [ $cfg = torch-compile ] && { jit=true; st=1,4,16; rs=4; }
    echo "=== $preset $cfg"
    KERAS_BACKEND=$b timeout 900 python tools/bench_sampling.py --preset=$preset --steps=$st \
      --ratio_steps=$rs --rounds=3 --pairs=5 --jit_compile=$jit --torch_threads=$thr \
      --out=runs/samp_${preset}_${cfg}.json 2>&1 \
      | grep -v "WARN\|oneDNN\|cpu_fea\|To enable\|absl\|xla_bridge\|I0000" | tail -8
  done
done
