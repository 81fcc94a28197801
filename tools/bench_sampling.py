"""Sampling cost: the N-step compiled sampler against N network calls, and sampler throughput.

Usage (one backend per process, from KERAS_BACKEND):

    KERAS_BACKEND=jax python tools/bench_sampling.py --out=bench_sampling_jax.json

On the digits_mlp preset (untrained weights: speed does not depend on them), batch 64:

* `sampler N`: `DiffusionModel.sample(noise, N)` (DDIM, clipping on; the loop compiled by
  `Sampler.predict_on_batch` on JAX and TensorFlow, eager on torch), for N in --steps;
* `calls N`: a Keras model of the same kind whose call runs N network calls back to back in the
  same `ops.fori_loop` (z <- x_hat(z, lambda), no schedule, no DDIM update, no clipping),
  compiled the same way: what N network evaluations cost with no sampler around them;
* the per-step overhead ratio time(sampler N) / time(calls N) at N = --ratio_steps (goal
  <= 1.1): the median over --pairs tightly paired calls (wall and process CPU time), beside the
  ratio of the rounds' medians, and the older definition time(sampler N) / (N x time(sampler 1)).

All configurations are timed in rounds (each round times every configuration once, after a
first compiling call and one warm-up call), so load changes hit them alike; medians of the
rounds are reported. Each timing repeats the call until it lasts >= --min_time seconds.
"""

import argparse
import math
import os
import statistics
import sys
import time

from bench_common import write_report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def make_calls_model(diffusion, n):
    import keras
    from keras import ops

    class Calls(keras.Model):
        """N network calls in one compiled loop (the sampler's loop without the sampler)."""

        def call(self, noise):
            batch = ops.shape(noise)[0]

            def body(k, z):  # a different lambda each call, as in sampling (no hoisting)
                logsnr = ops.broadcast_to(10.0 - 0.3 * ops.cast(k, "float32"), (batch,))
                return diffusion.denoise(z, logsnr).x

            return ops.fori_loop(0, n, body, noise)

    return Calls()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="digits_mlp")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", default="1,4,64,1024", help="sampler step counts")
    p.add_argument("--ratio_steps", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min_time", type=float, default=0.3)
    p.add_argument("--pairs", type=int, default=21,
                   help="paired (sampler N, calls N) timings for the overhead ratio")
    p.add_argument("--jit_compile", choices=["default", "true", "false"], default="default",
                   help="the samplers' and the calls model's jit_compile (default: the library's "
                        "per-backend default, samplers.sampler_jit_compile)")
    p.add_argument("--torch_threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default, one per core)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    jit = {"default": None, "true": True, "false": False}[args.jit_compile]

    import keras
    from keras import ops

    from keras_pd.data import load_dataset
    from keras_pd.samplers import sampler_jit_compile
    from keras_pd.training import TrainConfig, build_teacher

    backend = keras.backend.backend()
    if backend == "torch" and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    keras.utils.set_random_seed(0)
    data = load_dataset("digits")
    cfg = TrainConfig(dataset="digits", preset=args.preset).resolved()
    model = build_teacher(cfg, data)
    noise = np.random.default_rng(0).standard_normal((args.batch,) + data.data_shape)
    noise = noise.astype(np.float32)
    noise_t = ops.convert_to_tensor(noise)
    steps = [int(s) for s in args.steps.split(",")]
    calls = make_calls_model(model, args.ratio_steps)
    calls.compile(jit_compile=sampler_jit_compile(jit))
    configs = {f"sampler {n}": (lambda n=n: model.sample(noise, n, jit_compile=jit))
               for n in steps}
    configs[f"calls {args.ratio_steps}"] = lambda: ops.convert_to_numpy(
        calls.predict_on_batch(noise_t))

    first, inner, times = {}, {}, {k: [] for k in configs}
    for name, fn in configs.items():
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, math.ceil(args.min_time / max(time.perf_counter() - t0, 1e-6)))
    for _ in range(args.rounds):
        for name, fn in configs.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - t0) / inner[name])
    med = {k: statistics.median(v) for k, v in times.items()}
    n = args.ratio_steps
    # The ratio itself from tightly paired calls (sampler, calls, calls, sampler, ...): each pair
    # is a fraction of a second apart, so the machine's load changes cancel; wall and CPU time.
    pairs = {"wall": [], "cpu": []}
    if f"sampler {n}" in configs:
        for i in range(args.pairs):
            order = ((f"sampler {n}", f"calls {n}") if i % 2 == 0
                     else (f"calls {n}", f"sampler {n}"))
            took = {}
            for name in order:
                t0, c0 = time.perf_counter(), time.process_time()
                configs[name]()
                took[name] = (time.perf_counter() - t0, time.process_time() - c0)
            for j, key in enumerate(("wall", "cpu")):
                pairs[key].append(took[f"sampler {n}"][j] / took[f"calls {n}"][j])
    report = {"backend": backend, "preset": args.preset, "batch": args.batch,
              "jit_compile": args.jit_compile, "torch_threads": args.torch_threads,
              "loadavg": os.getloadavg(), "first_call_s": first, "inner": inner,
              "all_s": times, "median_s": med,
              "samples_per_s": {k: args.batch / v for k, v in med.items()
                                if k.startswith("sampler")}}
    if f"sampler {n}" in med:
        report["sampler_over_calls"] = med[f"sampler {n}"] / med[f"calls {n}"]
        if pairs["wall"]:
            report["paired_ratio_wall"] = statistics.median(pairs["wall"])
            report["paired_ratio_cpu"] = statistics.median(pairs["cpu"])
            report["paired_all"] = pairs
        report["sampler_over_calls_rounds"] = [a / b for a, b in zip(times[f"sampler {n}"],
                                                                      times[f"calls {n}"])]
        if "sampler 1" in med:
            report["sampler_over_n_one_step"] = med[f"sampler {n}"] / (n * med["sampler 1"])
    for k, v in med.items():
        print(f"{backend:10s} {k:14s} {1000 * v:9.2f} ms/call  "
              f"{args.batch / v:10.1f} samples/s  first call {first[k]:.1f} s")
    for k in ("sampler_over_calls", "paired_ratio_wall", "paired_ratio_cpu",
              "sampler_over_n_one_step"):
        if k in report:
            print(f"{backend:10s} {k}: {report[k]:.3f}")
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
