"""Sampling from a run directory to files: what `apps.sample` calls."""

import os

import numpy as np

from keras_pd import checkpoint as ckpt
from keras_pd.checks import check_positive_int
from keras_pd.images import save_grid_png
from keras_pd.samplers import sampler_jit_compile
from keras_pd.schedules import check_steps


def load_noise(path, data_shape):
    """Reads starting noise from a .npy file of shape [num, *data_shape].

    Raises:
        ValueError: naming the file, when it is unreadable or has the wrong shape.
    """
    try:
        noise = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read noise file {path}: {e}") from None
    if noise.ndim != len(data_shape) + 1 or tuple(noise.shape[1:]) != tuple(data_shape):
        raise ValueError(f"noise file {path} has shape {noise.shape}; the model needs "
                         f"[num, {', '.join(map(str, data_shape))}]")
    if not np.all(np.isfinite(noise)):
        raise ValueError(f"noise file {path} holds non-finite values")
    return noise.astype("float32")


def parse_labels(labels, num, num_classes):
    """Labels for a class-conditional model: None (cycle 0..K-1), one int, or one per sample."""
    if labels is None or len(labels) == 0:
        return (np.arange(num) % num_classes).astype("int32")
    values = np.array([int(v) for v in labels], dtype="int32")
    if values.min() < 0 or values.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got {labels}")
    if len(values) == 1:
        return np.full((num,), values[0], "int32")
    if len(values) != num:
        raise ValueError(f"got {len(values)} labels for {num} samples: give one or one per sample")
    return values


def output_paths(output):
    """The files `generate` writes for an output prefix: (PREFIX.png, PREFIX.npz)."""
    return output + ".png", output + ".npz"


def generate(checkpoint, output, steps=None, sampler="ddim", gamma=0.0, num_samples=64, seed=0,
             noise_file=None, labels=None, batch_size=256, guidance=None, jit_compile=None):
    """Samples a run directory's model and writes OUTPUT.png (grid) and OUTPUT.npz (`samples`,
    and `labels` for a class-conditional model); `output_paths(output)` names the two files.

    Args:
        checkpoint: a run directory (teacher workdir or student directory).
        output: path prefix of the files written.
        steps: sampling steps (default: the card's `sampling_steps`).
        sampler: "ddim" or "ancestral".
        gamma: the ancestral sampler's variance interpolation.
        num_samples: how many samples when no noise file is given.
        seed: seed of the starting noise (and of the ancestral sampler's noise).
        noise_file: a .npy of starting noise [num, *data_shape]; overrides num_samples and seed.
        labels: list of label strings/ints for class-conditional models.
        batch_size: samples per compiled call.
        guidance: classifier-free guidance weight w (models trained with label dropout, and
            guided students); None: unguided.
        jit_compile: how the sampler compiles (`samplers.sampler_jit_compile`); True on
            PyTorch runs torch.compile: a one-time compilation, then faster calls (its cost
            and gain: docs/performance.md, "Sampler compilation per backend").

    Returns:
        The samples, numpy [num, *data_shape] in [-1, 1].
    """
    model, card = ckpt.load_model(checkpoint)
    steps = check_steps(steps if steps is not None else card["sampling_steps"], "steps")
    check_positive_int(batch_size, "batch_size")
    if noise_file:
        noise = load_noise(noise_file, model.data_shape)
    else:
        check_positive_int(num_samples, "num_samples")
        noise = np.random.default_rng(seed).standard_normal(
            (num_samples,) + model.data_shape).astype("float32")
    num = len(noise)
    if labels and not model.num_classes:
        raise ValueError(f"labels {','.join(map(str, labels))} given, but the model in "
                         f"{checkpoint} is not class-conditional: drop --labels")
    lab = parse_labels(labels, num, model.num_classes) if model.num_classes else None
    if guidance is not None and not model.guidable:
        raise ValueError(f"guidance given, but the model in {checkpoint} was not trained for it "
                         "(needs --class_conditional --label_dropout > 0, or a guided student)")
    if guidance is not None and not 0.0 <= guidance <= 100.0:
        raise ValueError(f"guidance must lie in [0, 100], got {guidance}")
    jit_compile = sampler_jit_compile(jit_compile, sampler, num * steps)  # the whole job's
    out = []
    for i in range(0, num, batch_size):
        out.append(model.sample(noise[i:i + batch_size], steps, sampler=sampler, gamma=gamma,
                                labels=None if lab is None else lab[i:i + batch_size],
                                seed=seed, guidance=guidance, jit_compile=jit_compile))
    samples = np.concatenate(out)
    png, npz = output_paths(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    save_grid_png(samples, png)
    ckpt.atomic_write(npz, lambda tmp: _save_npz(tmp, samples, lab))
    return samples


def _save_npz(path, samples, labels):
    with open(path, "wb") as f:
        if labels is None:
            np.savez(f, samples=samples)
        else:
            np.savez(f, samples=samples, labels=labels)
