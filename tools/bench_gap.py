"""Backend gap: the same training step on every Keras backend, interleaved, with CPU time.

Usage:

    python tools/bench_gap.py --preset=digits_mlp --rounds=3 --out=bench_gap.json

Configurations (each one a fresh subprocess per round; rounds alternate their order):
`jax`, `tensorflow` (Keras' default on a CPU-only machine: tf.function graph, no XLA),
`tensorflow+jit` (`compile(jit_compile=True)`: XLA), `torch` (eager, one intra-op thread),
`torch+2t` (two threads), `BACKEND+speK` (K updates per compiled call; without it, what
`runs.fit_steps` picks: 10 here on JAX and TensorFlow, 1 on torch), `torch+unfused` (Keras' own per-variable EMA and clipping instead of
keras_pd.torch_optimizer's fused ones), `BACKEND+nhwc` (UNet presets computed channels-last,
which is what torch did before the UNet picked channels-first there) and `torch+jit`
(`jit_compile=True`: torch.compile). Each process trains the preset through the library's real
path (`build_teacher`, `make_optimizer` with the dataset's defaults, `fit` on a `BatchStream`),
a warm-up epoch then --epochs timed epochs of --steps steps, and reports the median wall
ms/step and the median CPU ms/step (process CPU seconds per step: on a shared machine the wall
time also counts waiting for a core; the CPU time counts the work done, which is what the
backends differ in). Ratios are to the fastest configuration, per round and as medians.
"""

import argparse
import json
import os
import statistics
import sys
import time

from bench_common import (backend_env, batches, digits_teacher, fit_ms, run_worker,
                          teacher_optimizer, write_report)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker(args):
    from keras_pd.runs import steps_per_execution

    if args.nhwc:  # the UNet channels-last on every backend (its torch default is channels-first)
        from keras_pd.networks import presets

        presets.PRESETS[args.preset]["data_format"] = "channels_last"
    model, data, cfg = digits_teacher(args.preset, args.batch, args.dataset,
                                      threads=args.threads)
    model.compile(optimizer=teacher_optimizer(cfg), jit_compile=True if args.jit else "auto")
    # What runs.fit_steps does (--spe=0), or a given number of updates per compiled call.
    model.steps_per_execution = args.spe or steps_per_execution(
        0, args.steps * (1 + args.epochs), args.steps)
    if args.unfused:  # back to Keras' own optimizer class (FusedTorchMixin is the first base)
        model.optimizer.__class__ = type(model.optimizer).__bases__[1]
    wall, cpu, wall_all = fit_ms(model, batches(data, args.batch), args.steps, args.epochs)
    return {"wall_ms": wall, "cpu_ms": cpu, "wall_all": wall_all,
            "jit_compile": bool(model.jit_compile), "warmup_s": wall_all[0] * args.steps / 1000}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="digits_mlp")
    p.add_argument("--dataset", default="digits", help="training data (e.g. mnist5k for the "
                   "28x28 presets)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", default="jax,tensorflow,tensorflow+jit,torch")
    p.add_argument("--timeout", type=int, default=1200)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--unfused", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nhwc", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--spe", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return None
    configs = [c for c in args.configs.split(",") if c]
    report = {"preset": args.preset, "dataset": args.dataset, "batch": args.batch,
              "loadavg_start": os.getloadavg(), "runs": []}
    start = time.perf_counter()
    for r in range(args.rounds):
        for config in (configs if r % 2 == 0 else configs[::-1]):
            backend, *mods = config.split("+")
            argv_w = [sys.executable, os.path.abspath(__file__), "--worker",
                      f"--preset={args.preset}", f"--dataset={args.dataset}",
                      f"--batch={args.batch}",
                      f"--steps={args.steps}", f"--epochs={args.epochs}"]
            argv_w += [f"--{m}" for m in mods if m in ("jit", "unfused", "nhwc")]
            threads = 2 if "2t" in mods else 1
            argv_w += [f"--spe={m[3:]}" for m in mods if m.startswith("spe")]
            argv_w.append(f"--threads={threads}")
            res = run_worker(argv_w, backend_env(backend, threads), args.timeout)
            res.update(config=config, round=r, loadavg=os.getloadavg()[0])
            report["runs"].append(res)
            print(f"[{time.perf_counter() - start:5.0f}s] {json.dumps(res)}", flush=True)
    summary = {}
    for config in configs:
        ok = [x for x in report["runs"] if x["config"] == config and "error" not in x]
        if ok:
            summary[config] = {k: statistics.median(x[k] for x in ok)
                               for k in ("wall_ms", "cpu_ms")}
    for key in ("wall_ms", "cpu_ms"):
        best = min(v[key] for v in summary.values())
        for v in summary.values():
            v[key.replace("_ms", "_ratio")] = v[key] / best
    for config, row in summary.items():
        print(config, json.dumps({k: round(v, 2) for k, v in row.items()}))
    report["summary"] = summary
    report["loadavg_end"] = os.getloadavg()
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
