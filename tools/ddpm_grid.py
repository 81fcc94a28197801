"""How a 2N-step grid meets a T = 1000 DDPM teacher fed integer steps (docs/own-teacher.md).

A grid of N steps with N dividing T lands on DDPM steps exactly; the cascade's powers of two
above 8 do not, and an integer-step model then gets the nearest step. This scores the imported
teacher's DDIM samples at step counts on and off the grid (same noise, the project's metric),
so the cost of rounding shows as a break in the curve, if there is one.

    KERAS_BACKEND=jax python tools/ddpm_grid.py --teacher=runs/own/ddpm_s0/teacher
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--steps", default="100,125,128,200,250,256")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from keras_pd import checkpoint as ckpt
    from keras_pd.data import load_dataset
    from keras_pd.evaluation import Scorer

    model, card = ckpt.load_model(args.teacher)
    dataset = load_dataset(card["dataset"] or "digits", seed=0)
    scorer = Scorer(dataset, os.path.dirname(os.path.abspath(args.teacher)), seed=0)
    noise = np.random.default_rng(args.seed).standard_normal(
        (args.num_samples,) + model.data_shape).astype("float32")
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        samples = np.concatenate([model.sample(noise[i:i + 500], steps)
                                  for i in range(0, len(noise), 500)])
        t = model.schedule.num_timesteps
        rows.append(dict(steps=steps, on_grid=t % steps == 0,
                         metric=round(float(scorer(samples)["metric"]), 3)))
        print(json.dumps(rows[-1]), flush=True)
    print("| DDIM steps | " + " | ".join(str(r["steps"]) for r in rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    print("| on the T = 1000 grid | " + " | ".join("yes" if r["on_grid"] else "no"
                                                  for r in rows) + " |")
    print("| FID | " + " | ".join(f"{r['metric']:.2f}" for r in rows) + " |")


if __name__ == "__main__":
    main()
