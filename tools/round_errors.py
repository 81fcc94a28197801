"""Where a distillation cascade's error goes: how much of each round's gap its student learned.

For a round whose teacher T samples with 2N DDIM steps and whose student S (initialised as T)
samples with N, on the same starting noise:

    gap     = MSE(T at N steps, T at 2N steps)   what the round has to learn
    error   = MSE(S at N steps, T at 2N steps)   what it missed
    learned = 1 - error / gap

and, beside them, the RMS distance of the N-step student and of the original teacher's own
N-step DDIM from the original teacher at its full step count. Unclipped sampling (what
distillation targets) and clipping at every step (the evaluation protocol).

    KERAS_BACKEND=jax python tools/round_errors.py --workdir=runs/digits

Prints one JSON line per round and a markdown table; docs/results.md, "Where each round's
error goes", is this tool's output on the seed-2 run.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_pd import checkpoint as ckpt  # noqa: E402
from keras_pd.evaluation import find_students  # noqa: E402


def mse(a, b):
    return float(np.mean((a - b) ** 2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="pipeline workdir: teacher/ and students")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=2, help="seed of the starting noise")
    p.add_argument("--batch", type=int, default=500)
    args = p.parse_args(argv)

    teacher, card = ckpt.load_model(os.path.join(args.workdir, "teacher"))
    full = int(card["sampling_steps"])
    noise = np.random.default_rng(args.seed).standard_normal(
        (args.num_samples,) + teacher.data_shape).astype("float32")

    def sample(model, n, clip):
        return np.concatenate([model.sample(noise[i:i + args.batch], n, clip=clip)
                               for i in range(0, len(noise), args.batch)])

    reference = {clip: sample(teacher, full, clip) for clip in (False, True)}
    students = dict(sorted(find_students(args.workdir).items(), reverse=True))
    previous, rows = teacher, []
    for n, path in students.items():
        student, _ = ckpt.load_model(path)
        row = dict(N=n)
        for clip in (False, True):
            target = sample(previous, 2 * n, clip)
            gap = mse(sample(previous, n, clip), target)
            mine = sample(student, n, clip)
            row["clip" if clip else "noclip"] = dict(
                round_gap=gap, round_error=mse(mine, target),
                learned=1.0 - mse(mine, target) / gap,
                student_rms=mse(mine, reference[clip]) ** 0.5,
                ddim_rms=mse(sample(teacher, n, clip), reference[clip]) ** 0.5)
        print(json.dumps(row), flush=True)
        rows.append(row)
        previous = student

    print(f"\n| N | round gap (MSE) | round error (MSE) | learned | learned (clip every step) | "
          f"student vs teacher-{full} (RMS) | DDIM-N vs teacher-{full} (RMS) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        a, c = row["noclip"], row["clip"]
        print(f"| {row['N']} | {a['round_gap']:.2g} | {a['round_error']:.2g} | "
              f"{100 * a['learned']:.0f}% | {100 * c['learned']:.0f}% | "
              f"{a['student_rms']:.3f} | {a['ddim_rms']:.3f} |")


if __name__ == "__main__":
    main()
