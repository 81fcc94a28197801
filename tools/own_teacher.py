"""Teachers trained elsewhere, distilled with keras-pd's command (docs/own-teacher.md).

Each KIND is a digits teacher written the way another codebase would write it, with no keras-pd
code: a functional Keras model, its own schedule and noise-level input, trained by its own plain
Keras loop (`fit` on freshly drawn noisy batches, the optimizer's EMA), saved as a `.keras` file.

    kerasio  the keras.io DDIM example's conventions: model([noisy_images, noise_variances]),
             the variance [B, 1, 1, 1] embedded sinusoidally in a Lambda layer, images
             standardized by a Normalization layer's per-channel mean and variance, predicting
             the noise, mean absolute error, signal rate cos(angle) from 0.95 (t = 0) to 0.02.
    ddpm     DDPM: linear betas 1e-4 .. 0.02, T = 1000, the integer step k in 0..999 through an
             Embedding table, predicting the noise, mean squared error.
    flow     rectified flow: z_t = (1 - t) x + t eps, the time t [B, 1], predicting the velocity
             eps - x, mean squared error.

Then it runs the documented commands (`apps.distill --teacher_model=...`, then `apps.evaluate`)
as subprocesses, so what is measured is what a user runs; each step is skipped when done (rerun
to resume).

    KERAS_BACKEND=jax python tools/own_teacher.py --kind=kerasio --seed=0 --workdir=runs/own
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KINDS = ("kerasio", "ddpm", "flow")
WIDTH, BLOCKS, EMB = 256, 4, 128
KERASIO_MIN_SIGNAL, KERASIO_MAX_SIGNAL = 0.02, 0.95


def kerasio_rates(t):
    """The keras.io example's angle schedule: (noise rate, signal rate) at diffusion time t."""
    start, end = math.acos(KERASIO_MAX_SIGNAL), math.acos(KERASIO_MIN_SIGNAL)
    angle = start + t * (end - start)
    return np.sin(angle), np.cos(angle)


def ddpm_alpha_bar():
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))


def denoiser(kind):
    """The functional network of each kind: a residual MLP on the flattened 8x8 image."""
    import keras
    from keras import layers

    z = keras.Input((8, 8, 1), name="noisy_images")
    if kind == "kerasio":
        level = keras.Input((1, 1, 1), name="noise_variances")
        # As in the example: sinusoidal features of the variance, frequencies 1 .. 1000, in a
        # Lambda (self-contained: its code is saved as bytecode without its module's globals).
        emb = layers.Lambda(
            lambda v: __import__("keras").ops.concatenate([
                __import__("keras").ops.sin(2.0 * 3.141592653589793 * v * __import__(
                    "keras").ops.exp(__import__("keras").ops.linspace(0.0, 6.907755, 16))),
                __import__("keras").ops.cos(2.0 * 3.141592653589793 * v * __import__(
                    "keras").ops.exp(__import__("keras").ops.linspace(0.0, 6.907755, 16)))],
                axis=-1), output_shape=(1, 1, 32))(level)
        emb = layers.Flatten()(emb)
    elif kind == "ddpm":
        level = keras.Input((), dtype="int32", name="timestep")
        emb = layers.Embedding(1000, EMB)(level)
    else:
        level = keras.Input((1,), name="t")
        emb = layers.Dense(EMB, activation="swish")(level)
    emb = layers.Dense(EMB, activation="swish")(emb)
    h = layers.Dense(WIDTH)(layers.Flatten()(z))
    for _ in range(BLOCKS):
        r = layers.Dense(WIDTH, activation="swish")(layers.LayerNormalization()(h))
        r = layers.Add()([r, layers.Dense(WIDTH)(emb)])
        r = layers.Dense(WIDTH)(layers.Activation("swish")(r))
        h = layers.Add()([h, r])
    out = layers.Dense(64)(layers.Activation("swish")(layers.LayerNormalization()(h)))
    return keras.Model([z, level], layers.Reshape((8, 8, 1))(out), name=f"{kind}_denoiser")


def noisy_batch(kind, x, rng, mean=None, std=None):
    """(inputs, target) of one training batch in the kind's own conventions."""
    n = len(x)
    eps = rng.standard_normal(x.shape).astype("float32")
    if kind == "kerasio":
        images = ((x + 1.0) / 2.0 - mean) / std  # the Normalization layer's output
        noise_rates, signal_rates = (r.reshape(-1, 1, 1, 1).astype("float32")
                                     for r in kerasio_rates(rng.uniform(0, 1, n)))
        return [signal_rates * images + noise_rates * eps, noise_rates ** 2], eps
    if kind == "ddpm":
        k = rng.integers(0, 1000, n)
        a = ddpm_alpha_bar()[k].reshape(-1, 1, 1, 1).astype("float32")
        return [np.sqrt(a) * x + np.sqrt(1 - a) * eps, k.astype("int32")], eps
    t = rng.uniform(0, 1, (n, 1)).astype("float32")
    tt = t.reshape(-1, 1, 1, 1)
    return [(1 - tt) * x + tt * eps, t], eps - x


def train_teacher(kind, seed, path, steps, batch_size=128):
    """Trains one kind's network with one plain `fit` on fresh draws; saves it to `path`."""
    import keras

    from keras_pd.data import load_dataset

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = load_dataset("digits").x
    pixels = (x + 1.0) / 2.0
    mean, var = pixels.mean(axis=(0, 1, 2)), pixels.var(axis=(0, 1, 2))
    model = denoiser(kind)
    model.compile(keras.optimizers.AdamW(1e-3, weight_decay=1e-4, use_ema=True,
                                         ema_momentum=0.999),
                  loss="mean_absolute_error" if kind == "kerasio" else "mean_squared_error")
    t0 = time.time()

    def batches():  # fresh examples, noise and times for every update
        while True:
            inputs, target = noisy_batch(kind, x[rng.integers(0, len(x), batch_size)], rng,
                                         mean, np.sqrt(var))
            yield tuple(inputs), target

    model.fit(batches(), steps_per_epoch=steps, epochs=1, verbose=0)
    model.optimizer.finalize_variable_values(model.trainable_variables)  # the EMA weights
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)
    return dict(seconds=round(time.time() - t0, 1), mean=mean.tolist(), variance=var.tolist())


def distill_flags(kind, stats):
    """`apps.distill`'s convention flags for each kind (docs/own-teacher.md)."""
    if kind == "kerasio":
        lam = [2 * math.log(s / math.sqrt(1 - s * s))
               for s in (KERASIO_MIN_SIGNAL, KERASIO_MAX_SIGNAL)]
        return ["--teacher_schedule=cosine", f"--logsnr_min={lam[0]:.6f}",
                f"--logsnr_max={lam[1]:.6f}", "--teacher_parameterization=eps",
                "--teacher_input=noise_variance", "--unsafe_deserialization",
                "--data_mean=" + ",".join(f"{v:.6f}" for v in stats["mean"]),
                "--data_variance=" + ",".join(f"{v:.6f}" for v in stats["variance"])]
    if kind == "ddpm":
        return ["--teacher_schedule=ddpm", "--teacher_parameterization=eps",
                "--teacher_input=ddpm_step"]
    return ["--teacher_schedule=flow", "--teacher_parameterization=flow",
            "--teacher_input=flow_time"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/own")
    p.add_argument("--train_steps", type=int, default=20000)
    p.add_argument("--teacher_steps", type=int, default=128)
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--distill_flags", default="", help="extra apps.distill flags, space-separated")
    args = p.parse_args(argv)

    run = os.path.join(args.workdir, f"{args.kind}_s{args.seed}")
    os.makedirs(run, exist_ok=True)
    path = os.path.join(run, f"{args.kind}.keras")
    stats_path = os.path.join(run, "teacher_training.json")
    if not os.path.exists(stats_path):
        stats = train_teacher(args.kind, args.seed, path, args.train_steps)
        with open(stats_path, "w") as f:
            json.dump(dict(stats, kind=args.kind, seed=args.seed, steps=args.train_steps), f)
        print(f"{args.kind} teacher: {path} ({stats['seconds']:.0f} s)", flush=True)
    stats = json.load(open(stats_path))
    command = [sys.executable, "-m", "apps.distill", f"--teacher_model={path}",
               *distill_flags(args.kind, stats), f"--teacher_steps={args.teacher_steps}",
               "--end_steps=1", "--dataset=digits", f"--seed={args.seed}",
               f"--workdir={run}", *args.distill_flags.split()]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    timings = {"train teacher": stats["seconds"]}
    for name, cmd in (("distill", command),
                      ("evaluate", [sys.executable, "-m", "apps.evaluate", f"--workdir={run}",
                                    f"--num_samples={args.num_samples}", f"--seed={args.seed}",
                                    *(["--unsafe_deserialization"]
                                      if args.kind == "kerasio" else [])])):
        print("$", " ".join(c if c != sys.executable else "python" for c in cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        timings[name] = round(time.time() - t0, 1)
    with open(os.path.join(run, "timings.json"), "w") as f:
        json.dump(timings, f, indent=1)
    results = json.load(open(os.path.join(run, "results.json")))
    print(json.dumps({k: results[k] for k in ("metric", "table") if k in results})[:3000])


if __name__ == "__main__":
    main()
