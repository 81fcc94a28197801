"""Samples an exported LiteRT sampler with the LiteRT runtime only: no Keras, no TensorFlow.

What an app on a phone does, in Python: load the .tflite written by `python -m apps.export
--format=litert`, feed standard normal noise (and labels) through its one signature, get samples
in [-1, 1]. Needs numpy, ai-edge-litert and Pillow (or matplotlib) only.

    python tools/litert_sample.py --model=exports/student_0004.tflite --output=litert.png
    python tools/litert_sample.py --model=exports/student_0004.tflite --benchmark=50 --threads=2

The model's batch size is fixed at export; --num samples take ceil(num / batch) calls. For a
class-conditional model the labels cycle 0..K-1 (K from the JSON written beside the model) unless
--labels gives them.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

SIGNATURE = "serving_default"


def load(model_path, threads):
    """Returns (interpreter, signature runner, input details by name)."""
    interpreter = Interpreter(model_path=model_path, num_threads=threads)
    signatures = interpreter.get_signature_list()
    key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
    runner = interpreter.get_signature_runner(key)
    return interpreter, runner, runner.get_input_details()


def sidecar(model_path):
    """The JSON written beside the model by the exporter, or {}."""
    path = model_path[:-len(".tflite")] + ".json" if model_path.endswith(".tflite") else ""
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def load_noise(path, shape):
    """Starting noise from a .npy [num, *shape] (no pickle); exits with one line otherwise."""
    try:
        noise = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read noise file {path}: {' '.join(str(e).split())}")
    if noise.ndim != len(shape) + 1 or tuple(noise.shape[1:]) != tuple(shape) or not len(noise):
        raise SystemExit(f"error: noise file {path} has shape {noise.shape}; the model takes "
                         f"[num, {', '.join(map(str, shape))}]")
    if not np.all(np.isfinite(noise)):
        raise SystemExit(f"error: noise file {path} holds non-finite values")
    return noise.astype("float32")


def make_labels(num, labels, num_classes):
    if labels:
        values = [int(v) for v in labels.split(",")]
        return np.resize(np.array(values, dtype="int32"), num)
    if not num_classes:
        raise SystemExit("error: this model takes labels: pass --labels (no JSON beside it)")
    return (np.arange(num) % num_classes).astype("int32")


def sample(runner, inputs, noise, labels=None, guidance=None):
    """Runs `noise` [num, ...] through the fixed-batch model; returns samples [num, ...].

    `guidance` (a float w) is fed to models that take it (guided students)."""
    batch = int(inputs["noise"]["shape"][0])
    num = len(noise)
    pad = (-num) % batch  # the last call is padded to the fixed batch
    noise = np.concatenate([noise, np.zeros((pad,) + noise.shape[1:], noise.dtype)])
    if labels is not None:
        labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
    out = []
    for i in range(0, len(noise), batch):
        feed = {"noise": noise[i:i + batch]}
        if labels is not None:
            feed["labels"] = labels[i:i + batch]
        if "guidance" in inputs:
            feed["guidance"] = np.full((batch,), guidance or 0.0, "float32")
        out.append(next(iter(runner(**feed).values())))
    return np.concatenate(out)[:num]


def grid_image(samples, gap=1):
    """[num, H, W, C] in [-1, 1] -> uint8 grid (C = 1 or 3), tiles apart by `gap` gray pixels."""
    num, h, w, c = samples.shape
    cols = math.ceil(math.sqrt(num))
    rows = math.ceil(num / cols)
    grid = np.zeros((rows * (h + gap) - gap, cols * (w + gap) - gap, c), "float32")
    for i, img in enumerate(samples):
        r, k = divmod(i, cols)
        y, x = r * (h + gap), k * (w + gap)
        grid[y:y + h, x:x + w] = img
    return np.round((np.clip(grid, -1, 1) + 1) * 127.5).astype("uint8")


def save_png(path, image, scale):
    image = np.repeat(np.repeat(image, scale, 0), scale, 1)
    if image.shape[-1] == 1:
        image = image[..., 0]
    try:
        from PIL import Image

        Image.fromarray(image).save(path)
    except ImportError:
        import matplotlib.image

        matplotlib.image.imsave(path, image, cmap="gray" if image.ndim == 2 else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the exported .tflite")
    parser.add_argument("--output", default="litert_samples.png", help="grid PNG to write")
    parser.add_argument("--npy", default=None, help="also write the samples to this .npy")
    parser.add_argument("--num", type=int, default=64, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    parser.add_argument("--noise", default=None,
                        help=".npy of starting noise [num, *data_shape] (overrides --num, --seed)")
    parser.add_argument("--labels", default=None, help="class-conditional: comma-separated")
    parser.add_argument("--guidance", type=float, default=0.0,
                        help="guidance weight w, for models that take it (guided students)")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads")
    parser.add_argument("--scale", type=int, default=4, help="pixel upscaling of the PNG")
    parser.add_argument("--benchmark", type=int, default=0,
                        help="time this many single calls after a warm-up; print JSON")
    parser.add_argument("--print_modules", action="store_true",
                        help="print which of tensorflow/keras/jax/torch got imported (tests)")
    args = parser.parse_args(argv)
    if args.num < 1:
        raise SystemExit(f"error: --num must be a positive integer, got {args.num}")
    if not os.path.exists(args.model):
        raise SystemExit(f"error: no such model file: {args.model}")

    try:
        _, runner, inputs = load(args.model, args.threads)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: cannot load {args.model} as a LiteRT model: "
                         f"{' '.join(str(e).split())[:300]}")
    shape = tuple(int(d) for d in inputs["noise"]["shape"][1:])
    meta = sidecar(args.model)
    if args.noise:
        noise = load_noise(args.noise, shape)
        args.num = len(noise)
    else:
        rng = np.random.default_rng(args.seed)
        noise = rng.standard_normal((args.num,) + shape).astype("float32")
    labels = None
    if "labels" in inputs:
        labels = make_labels(args.num, args.labels, meta.get("num_classes"))
    samples = sample(runner, inputs, noise, labels, args.guidance)
    report = {"model": args.model, "num": args.num, "data_shape": list(shape),
              "min": float(samples.min()), "max": float(samples.max())}

    if len(shape) == 3 and shape[-1] in (1, 3):
        save_png(args.output, grid_image(samples), args.scale)
        report["png"] = args.output
    else:
        print(f"data shape {shape} is not an image: no PNG written (use --npy)", file=sys.stderr)
    if args.npy:
        np.save(args.npy, samples)
        report["npy"] = args.npy

    if args.benchmark > 0:
        batch = int(inputs["noise"]["shape"][0])
        feed = {"noise": noise[:1].repeat(batch, 0)}
        if labels is not None:
            feed["labels"] = labels[:1].repeat(batch, 0)
        if "guidance" in inputs:
            feed["guidance"] = np.full((batch,), args.guidance, "float32")
        for _ in range(3):
            runner(**feed)
        times = []
        for _ in range(args.benchmark):
            start = time.perf_counter()
            runner(**feed)
            times.append(time.perf_counter() - start)
        times = np.array(times) * 1e3
        report.update(threads=args.threads, batch=batch, calls=args.benchmark,
                      ms_per_call_median=float(np.median(times)),
                      ms_per_call_p10=float(np.percentile(times, 10)),
                      ms_per_call_p90=float(np.percentile(times, 90)),
                      ms_per_sample_median=float(np.median(times)) / batch,
                      bytes=os.path.getsize(args.model))
    if args.print_modules:
        report["frameworks_imported"] = sorted(
            m for m in ("tensorflow", "keras", "jax", "torch", "tf_keras") if m in sys.modules)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
