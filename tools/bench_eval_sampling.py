"""The evaluation grid's sampling: one compiled sampler per (N, g) against one for all N and g.

Usage (one backend per run, from KERAS_BACKEND):

    KERAS_BACKEND=jax python tools/bench_eval_sampling.py --out=bench_eval_sampling_jax.json

`apps.evaluate` samples the teacher with DDIM at N = 1, 2, 4, ..., --teacher_steps and with the
ancestral sampler at the same N for each g in keras_pd.evaluation.GAMMAS: 48 cells for a
128-step teacher, --num_samples samples each in batches of 500. This times that grid, sampling
only (no scoring), on the digits_mlp preset (untrained weights: speed does not depend on them):

* `per_cell`: a fixed-N `Sampler` per cell (`Sampler(model, N, sampler, g)`), what
  `DiffusionModel.sample` built before step counts and g became inputs: one compilation per cell;
* `shared`: `DiffusionModel.sample`, one compiled sampler per sampler kind for every N and g.

Each configuration runs in a fresh process (compilations included, as in a real evaluation),
alternating over --rounds; medians are reported with every round's time.
"""

import argparse
import os
import statistics
import sys
import time

from bench_common import run_worker, write_report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(mode, teacher_steps, num_samples, batch):
    import json

    import keras
    import numpy as np

    from keras_pd.diffusion import DiffusionModel
    from keras_pd.evaluation import GAMMAS
    from keras_pd.networks import make_network
    from keras_pd.samplers import Sampler

    keras.utils.set_random_seed(0)
    model = DiffusionModel(make_network("digits_mlp", (8, 8, 1), 1), (8, 8, 1))
    noise = np.random.default_rng(0).standard_normal((num_samples, 8, 8, 1)).astype("float32")
    cells = [(n, "ddim", 0.0) for n in (2 ** k for k in range(teacher_steps.bit_length()))]
    cells += [(n, "ancestral", g) for n, _, _ in list(cells) for g in GAMMAS]
    t0 = time.perf_counter()
    for n, sampler, g in cells:
        fixed = Sampler(model, n, sampler, g, seed=0) if mode == "per_cell" else None
        for i in range(0, num_samples, batch):
            if fixed is not None:
                keras.ops.convert_to_numpy(fixed.predict_on_batch(noise[i:i + batch]))
            else:
                model.sample(noise[i:i + batch], n, sampler=sampler, gamma=g, seed=0)
    wall = time.perf_counter() - t0
    print("RESULT " + json.dumps({"wall_s": wall, "cells": len(cells)}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher_steps", type=int, default=128)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="")
    parser.add_argument("--worker", choices=("per_cell", "shared"))
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.teacher_steps, args.num_samples, args.batch)
    import keras

    times = {"per_cell": [], "shared": []}
    report = {"backend": keras.backend.backend(), "args": vars(args), "rounds": times}
    for r in range(args.rounds):
        order = ("per_cell", "shared") if r % 2 == 0 else ("shared", "per_cell")
        for mode in order:
            res = run_worker([sys.executable, os.path.abspath(__file__), f"--worker={mode}",
                              f"--teacher_steps={args.teacher_steps}",
                              f"--num_samples={args.num_samples}", f"--batch={args.batch}"],
                             dict(os.environ), timeout=3600)
            if "error" in res:
                raise SystemExit(f"{mode} failed: {res['error']}")
            times[mode].append(round(res["wall_s"], 2))
            report["cells"] = res["cells"]
            print(f"round {r + 1} {mode}: {res['wall_s']:.1f} s", flush=True)
            write_report(args.out, report)
    report["median_s"] = {m: statistics.median(v) for m, v in times.items()}
    report["ratio_per_cell_over_shared"] = report["median_s"]["per_cell"] / report["median_s"][
        "shared"]
    write_report(args.out, report)
    print(report["median_s"], f"ratio {report['ratio_per_cell_over_shared']:.2f}")


if __name__ == "__main__":
    main()
