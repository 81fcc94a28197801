"""Distillation data drawn from the teacher itself: its own DDIM samples, cached in the workdir.

Algorithm 2 trains the student on z_t = alpha_t x + sigma_t eps with x from the data, but the
student is sampled along the teacher's own trajectories. Drawing x from the teacher's samples
puts the training distribution where sampling goes, and needs no training data at all
(docs/distillation.md, "Distillation data"; measured in docs/results.md).

The sample set is a pure function of (teacher weights, count, seed, steps, guidance range):
starting noise and labels come from numpy generators seeded by `seed`, and DDIM is
deterministic. It is written once, atomically (samples, then its card), and reused on resume;
a cached set that does not match what is asked for, or whose checksum is wrong, is
regenerated with a warning, never used.
"""

import hashlib
import os
import time
import warnings

import numpy as np

from keras_pd import checkpoint as ckpt
from keras_pd.checks import check_positive_int
from keras_pd.data import Dataset, DatasetError, load_dataset
from keras_pd.samplers import sampler_jit_compile

#: Where the cascade's training examples come from: the dataset, the teacher's samples, or both.
DISTILL_DATA = ("data", "teacher", "mix")
#: The workdir's sample set: SAMPLES_DIR/samples.npz and SAMPLES_DIR/card.json.
SAMPLES_DIR = "teacher_samples"
SAMPLES_FILE = "samples.npz"
#: Samples per compiled sampler call (one shape: the sampler compiles once).
SAMPLE_BATCH = 2000


def check_distill_data(source):
    """Raises ValueError unless `source` is one of DISTILL_DATA."""
    if source not in DISTILL_DATA:
        raise ValueError(f"distill_data must be one of {', '.join(DISTILL_DATA)}, got {source!r}")
    return source


def balanced_labels(count, num_classes, seed):
    """`count` labels, each class count // num_classes or one more times, in a seeded order."""
    labels = np.arange(count, dtype="int32") % num_classes
    return np.random.default_rng([seed, 1]).permutation(labels).astype("int32")


def draw_teacher_samples(model, count, steps, seed, guidance_range=None,
                         batch_size=SAMPLE_BATCH):
    """`count` samples of `model` with `steps` clipped DDIM steps.

    Args:
        model: a DiffusionModel.
        count: number of samples.
        steps: DDIM steps.
        seed: seed of the starting noise, the labels and the guidance weights.
        guidance_range: (w_min, w_max) for a teacher trained for guidance: each sample draws
            w ~ U[w_min, w_max]; None samples the conditional (or unconditional) model.
        batch_size: samples per sampler call.

    Returns:
        (x [count, *data_shape] float32 in [-1, 1], labels int32 [count] or None).
    """
    count = check_positive_int(count, "teacher_samples")
    noise = np.random.default_rng([seed, 0]).standard_normal(
        (count,) + tuple(model.data_shape)).astype("float32")
    labels = balanced_labels(count, model.num_classes, seed) if model.num_classes else None
    ws = None
    if guidance_range is not None:
        ws = np.random.default_rng([seed, 2]).uniform(*guidance_range, count).astype("float32")
    jit_compile = sampler_jit_compile(None, "ddim", count * steps)  # the whole set's
    out = []
    for i in range(0, count, batch_size):
        chunk = noise[i:i + batch_size]
        rows = len(chunk)
        if rows < batch_size and count > batch_size:  # the last chunk: pad to the one shape
            chunk = np.concatenate([chunk, noise[:batch_size - rows]])
        pick = np.arange(i, i + len(chunk)) % count
        x = model.sample(chunk, steps, labels=None if labels is None else labels[pick],
                         guidance=None if ws is None else ws[pick], jit_compile=jit_compile)
        out.append(x[:rows])
    return np.concatenate(out).astype("float32"), labels


def checksum(x, labels):
    """sha256 of the samples' and labels' bytes."""
    h = hashlib.sha256(np.ascontiguousarray(x, "float32").tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels, "int32").tobytes())
    return h.hexdigest()


def _spec(teacher_dir, teacher_card, count, steps, seed, guidance_range):
    """What a sample set must have been made from to be reused."""
    return dict(teacher=os.path.abspath(teacher_dir),
                teacher_sha256=ckpt.file_sha256(os.path.join(teacher_dir, ckpt.MODEL_NAME)),
                count=int(count), seed=int(seed), sampler="ddim", steps=int(steps), clip=True,
                data_shape=list(teacher_card["data_shape"]),
                num_classes=teacher_card.get("num_classes"),
                guidance_range=None if guidance_range is None else list(guidance_range))


def _load_cached(directory, spec):
    """The cached (x, labels, card) when it matches `spec` and its checksum; else (None, why)."""
    card_path = os.path.join(directory, ckpt.CARD_NAME)
    path = os.path.join(directory, SAMPLES_FILE)
    if not os.path.exists(card_path) and not os.path.exists(path):
        return None, None
    try:
        card = ckpt.read_json(card_path)
        with np.load(path) as f:
            x = f["x"]
            labels = f["labels"] if "labels" in f.files else None
    except (OSError, ValueError, KeyError) as e:
        return None, f"unreadable ({type(e).__name__}: {e})"
    for key, want in spec.items():
        if card.get(key) != want:
            return None, f"made with {key}={card.get(key)!r}, this run asks for {want!r}"
    if list(x.shape) != [spec["count"]] + spec["data_shape"]:
        return None, f"holds samples of shape {list(x.shape)}"
    if (labels is None) != (spec["num_classes"] is None) or (
            labels is not None and labels.shape != (spec["count"],)):
        return None, "its labels do not match the teacher"
    if checksum(x, labels) != card.get("checksum"):
        return None, "its checksum does not match its samples"
    return (x, labels, card), None


def teacher_sample_set(teacher_dir, directory, count, steps=None, seed=0, guidance_range=None,
                       verbose=1):
    """The teacher's sample set in `directory`, generated once and reused (module docstring).

    Args:
        teacher_dir: the teacher's run directory.
        directory: where samples.npz and card.json go.
        count: number of samples.
        steps: DDIM steps (None: the teacher card's `sampling_steps`).
        seed: seed of noise, labels and guidance weights.
        guidance_range: w range for teachers trained for guidance (None: w not used).
        verbose: print what happens.

    Returns:
        (x, labels or None, card): card has count, seed, sampler, steps, checksum, seconds.
    """
    teacher_card = ckpt.read_card(teacher_dir)
    steps = check_positive_int(steps or teacher_card["sampling_steps"], "teacher_sample_steps")
    spec = _spec(teacher_dir, teacher_card, check_positive_int(count, "teacher_samples"), steps,
                 seed, guidance_range)
    cached, why = _load_cached(directory, spec)
    if cached is not None:
        if verbose:
            print(f"{directory}: reusing {count} teacher samples ({steps} DDIM steps)",
                  flush=True)
        return cached
    if why:
        warnings.warn(f"{directory}: cached teacher samples not used, regenerating: {why}",
                      stacklevel=2)
    model, _ = ckpt.load_model(teacher_dir)
    t0 = time.time()
    x, labels = draw_teacher_samples(model, count, steps, seed, guidance_range)
    seconds = round(time.time() - t0, 1)
    if not np.all(np.isfinite(x)):
        raise FloatingPointError(f"the teacher in {teacher_dir} produced non-finite samples")
    arrays = dict(x=x) if labels is None else dict(x=x, labels=labels)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    # Samples first, then the card naming their checksum: a kill between leaves no valid pair.
    ckpt.atomic_write(os.path.join(directory, SAMPLES_FILE), write)
    card = dict(spec, checksum=checksum(x, labels), seconds=seconds)
    ckpt.write_json(os.path.join(directory, ckpt.CARD_NAME), card)
    if verbose:
        print(f"{directory}: {count} teacher samples, {steps} DDIM steps, {seconds:.0f} s",
              flush=True)
    return x, labels, card


def check_data_shape(teacher_card, dataset):
    """Raises CheckpointError when `dataset`'s examples are not the shape the teacher was
    trained on."""
    if list(dataset.data_shape) != teacher_card["data_shape"]:
        raise ckpt.CheckpointError(
            f"teacher was trained on data of shape {teacher_card['data_shape']} "
            f"({teacher_card.get('dataset')}), dataset {dataset.name!r} has shape "
            f"{list(dataset.data_shape)}")


def distillation_data(source, teacher_dir, directory, *, count, steps=None, seed=0,
                      dataset=None, data_dir=None, guidance_range=None, verbose=1):
    """The examples a cascade distils on (`source`: one of DISTILL_DATA).

    "data" is the training set (`dataset`, default the teacher card's); "teacher" the teacher's
    own samples (`teacher_sample_set`; no dataset needed: the shape comes from the teacher);
    "mix" both, concatenated (each batch draws from their union).

    Returns:
        (Dataset, provenance dict for the students' cards).
    """
    check_distill_data(source)
    card = ckpt.read_card(teacher_dir)
    name = dataset or card.get("dataset")
    real = None
    if source in ("data", "mix"):
        if not name:
            raise DatasetError(f"the teacher's card in {teacher_dir} names no dataset: give "
                               "--dataset, or distill on --distill_data=teacher")
        real = load_dataset(name, data_dir=data_dir, seed=seed,
                            image_size=card.get("image_size") if name == card.get("dataset")
                            else None)
        check_data_shape(card, real)
        if source == "data":
            return real, dict(distill_data="data", dataset=real.name, examples=len(real))
        real = real.in_memory()  # mixed with the samples in memory
    x, labels, samples_card = teacher_sample_set(teacher_dir, directory, count, steps, seed,
                                                 guidance_range, verbose)
    provenance = dict(distill_data=source, teacher_samples={
        k: samples_card[k] for k in ("count", "seed", "sampler", "steps", "checksum",
                                     "guidance_range", "seconds")})
    flip = real.flip if real is not None else bool(card.get("flip", False))
    if source == "teacher":
        data = Dataset(f"teacher_samples:{name}", x, labels, card.get("num_classes"), flip)
        return data, dict(provenance, examples=len(x))
    both = Dataset(f"mix:{real.name}", np.concatenate([real.x, x]).astype("float32"),
                   None if labels is None else np.concatenate([real.y, labels]).astype("int32"),
                   real.num_classes, real.flip)
    return both, dict(provenance, dataset=real.name, examples=len(both))
