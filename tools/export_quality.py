"""What exporting and quantizing a student costs in quality, and what it gains in speed.

For each student of a pipeline workdir (default: 1, 2, 4 and 8 steps) and each LiteRT weight
format (float32, float16, dynamic-range int8), exports the student's sampler, runs the evaluation
noise through the bare LiteRT interpreter, and scores the samples with the workdir's domain
classifier: the same noise, sample count and reference set as `apps.evaluate`, so the float32
row reproduces the Keras row of results.json. Then times each file at batch 1 (2 threads) and
the teacher's full-step sampling in Keras at batch 1, for the speed-up.

    KERAS_BACKEND=tensorflow python tools/export_quality.py --workdir=runs/digits
    KERAS_BACKEND=jax python tools/export_quality.py --workdir=runs/digits --parts=teacher

Writes workdir/export_quality.json (merged across runs) and prints a markdown table.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from keras_pd import checkpoint as ckpt  # noqa: E402
from keras_pd import export  # noqa: E402
from keras_pd.data import load_dataset  # noqa: E402
from keras_pd.evaluation import Scorer, find_students  # noqa: E402

QUANTS = ("none", "float16", "dynamic_int8")


def litert_samples(path, noise):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path, num_threads=2).get_signature_runner("serving_default")
    batch = ckpt.read_json(export.metadata_path(path))["batch_size"]
    return np.concatenate([runner(noise=noise[i:i + batch])["samples"]
                           for i in range(0, len(noise), batch)])


def quality(args, out):
    card = ckpt.read_card(os.path.join(args.workdir, "teacher"))
    dataset = load_dataset(card["dataset"], seed=card.get("seed", 0))
    scorer = Scorer(dataset, args.workdir, seed=args.seed)
    shape = tuple(card["data_shape"])
    noise = np.random.default_rng(args.seed).standard_normal(
        (args.num,) + shape).astype("float32")
    keras_cells = ckpt.read_json(os.path.join(args.workdir, "results.json"))["cells"]
    folder = os.path.join(args.workdir, "exports", "quality")
    os.makedirs(folder, exist_ok=True)
    students = find_students(args.workdir)
    for steps in args.steps:
        for quant in QUANTS:
            key = f"{steps}_{quant}"
            row = out["rows"].setdefault(key, {"steps": steps, "quantize": quant})
            for batch, tag in ((args.batch, "eval"), (1, "latency")):
                path = os.path.join(folder, f"student_{steps:04d}_{quant}_b{batch}.tflite")
                if not os.path.exists(path):
                    export.export_sampler(students[steps], path, steps=steps, format="litert",
                                          quantize=quant, batch_size=batch)
                if tag == "eval":
                    samples = litert_samples(path, noise)
                    row["fid"] = scorer(samples)["metric"]
                    row["keras_fid"] = keras_cells[f"distilled_{steps}"]["metric"]
                else:
                    row["bytes"] = ckpt.read_json(export.metadata_path(path))["bytes"]
                    row.update(export.measure_latency(path, runs=args.runs))
            print(f"{steps} steps {quant}: FID {row['fid']:.3f} (Keras {row['keras_fid']:.3f}), "
                  f"{row['bytes'] / 1e6:.2f} MB, {row['median_ms']:.3f} ms", flush=True)
    out["export_backend"] = keras.backend.backend()


def teacher_timing(args, out):
    model, card = ckpt.load_model(os.path.join(args.workdir, "teacher"))
    steps = int(card["sampling_steps"])
    noise = np.random.default_rng(args.seed).standard_normal(
        (1,) + model.data_shape).astype("float32")
    model.sample(noise, steps)  # compile
    times = []
    for _ in range(args.teacher_runs):
        t0 = time.perf_counter()
        keras.ops.convert_to_numpy(model.sample(noise, steps))
        times.append((time.perf_counter() - t0) * 1e3)
    out["teacher"] = {"steps": steps, "median_ms": float(np.median(times)),
                      "runs": args.teacher_runs, "backend": keras.backend.backend()}
    print(f"teacher {steps} steps in Keras ({keras.backend.backend()}), batch 1: "
          f"{out['teacher']['median_ms']:.1f} ms", flush=True)


def markdown(out):
    teacher = out.get("teacher")
    lines = ["| steps | weights | size | FID (LiteRT) | FID (Keras) | latency / sample | "
             "speed-up vs teacher |", "|---:|---|---:|---:|---:|---:|---:|"]
    for row in sorted(out["rows"].values(), key=lambda r: (r["steps"], QUANTS.index(r["quantize"]))):
        speed = f"{teacher['median_ms'] / row['median_ms']:,.0f}x" if teacher else "n/a"
        lines.append(f"| {row['steps']} | {row['quantize']} | {row['bytes'] / 1e6:.2f} MB | "
                     f"{row['fid']:.2f} | {row['keras_fid']:.2f} | {row['median_ms']:.3f} ms | "
                     f"{speed} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/digits")
    parser.add_argument("--steps", default="1,2,4,8")
    parser.add_argument("--num", type=int, default=1000, help="samples per FID")
    parser.add_argument("--batch", type=int, default=100, help="batch of the FID exports")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=200, help="latency calls per file")
    parser.add_argument("--teacher_runs", type=int, default=10)
    parser.add_argument("--parts", default="quality,teacher")
    args = parser.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    path = os.path.join(args.workdir, "export_quality.json")
    out = ckpt.read_json(path) if os.path.exists(path) else {"rows": {}}
    out.update(num_samples=args.num, seed=args.seed, machine=platform.processor() or "cpu",
               cpus=os.cpu_count(), keras=keras.__version__)
    if "quality" in args.parts:
        quality(args, out)
    if "teacher" in args.parts:
        teacher_timing(args, out)
    ckpt.write_json(path, out)
    print(markdown(out))


if __name__ == "__main__":
    main()
