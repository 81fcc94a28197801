"""Domain-classifier metrics for small labelled datasets.

The standard FID network (Inception, 299x299 ImageNet photos) says little
about 8x8 digits or 28x28 MNIST. For such data a small classifier trained on
the dataset's own labels gives the features instead:

* :func:`classifier_fid`: Frechet distance between the classifier's
  penultimate-layer ("features") activations of samples and of real data.
* :func:`classifier_score`: the Inception-Score analogue
  ``exp(E_x KL(p(y|x) || p(y)))``, between 1 (one class, or no confident
  predictions) and the number of classes.
* :func:`class_coverage`: how the samples spread over the classes.

:func:`train_classifier` trains the classifier on 80% of the labelled data
(a split fixed by the seed), reports its accuracy on the other 20%, and
caches it in ``workdir`` (``classifier.keras`` + ``classifier.json``).

Numbers from different classifiers are not comparable: keep the cached
classifier with the experiment and report its test accuracy, the sample
count and the reference set next to every score.

Backend agnostic: only ``keras`` is used (no TensorFlow / JAX / PyTorch
imports).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
import warnings

import keras
import numpy as np

from keras_pd.data import BatchStream, Dataset, load_dataset
from keras_pd.metrics.frechet import fid_from_features

__all__ = [
    "DomainClassifier",
    "FEATURES_LAYER",
    "build_classifier",
    "class_coverage",
    "classifier_fid",
    "classifier_score",
    "evaluate_samples",
    "split_indices",
    "train_classifier",
]

FEATURES_LAYER = "features"
FEATURES_DIM = 128
MODEL_FILE = "classifier.keras"
INFO_FILE = "classifier.json"
_INFO_FORMAT = 1
# Training settings that must match for a cached classifier to be reused.
_CACHE_KEYS = ("format", "dataset", "data_shape", "num_classes", "num_examples", "seed", "test_fraction",
               "epochs", "batch_size", "learning_rate", "width")


# ---------------------------------------------------------------------------
# Network.


def build_classifier(data_shape, num_classes: int, width: int = 64, seed: int | None = None) -> keras.Model:
    """Builds a small classifier whose penultimate layer gives the features.

    Images ``[H, W, C]`` get a small CNN: 3x3 ReLU convolutions with
    ``width // 2`` channels, then ``width`` channels after each 2x2
    max-pooling, pooling until the side is at most 7 (8x8 -> 4x4,
    28x28 -> 7x7, 32x32 -> 4x4). Vectors ``[D]`` get a two-layer MLP of
    ``width`` units. Both end in ``Dense(128, relu, name="features")`` and a
    softmax ``Dense(num_classes, name="probabilities")``.

    Args:
        data_shape: Shape of one example, ``(H, W, C)`` or ``(D,)``.
        num_classes: Number of classes (>= 2).
        width: Channels / units of the widest layers.
        seed: Seed of the weight initializers (None: unseeded).

    Returns:
        An uncompiled functional ``keras.Model`` mapping ``[B, *data_shape]``
        to class probabilities ``[B, num_classes]``.

    Raises:
        ValueError: Unsupported data shape, num_classes or width.
    """
    shape = tuple(int(d) for d in data_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"data_shape must be (H, W, C) or (D,), got {tuple(data_shape)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 2:
        raise ValueError(f"width must be an int >= 2, got {width!r}")
    width = int(width)
    counter = [0]

    def init():
        if seed is None:
            return "glorot_uniform"
        counter[0] += 1
        return keras.initializers.GlorotUniform(seed=int(seed) * 1000 + counter[0])

    inputs = keras.Input(shape=shape, name="x")
    h = inputs
    if len(shape) == 3:
        channels = max(width // 2, 1)
        h = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", kernel_initializer=init())(h)
        side = min(shape[0], shape[1])
        while side > 7:
            h = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", kernel_initializer=init())(h)
            h = keras.layers.MaxPooling2D(2)(h)
            side //= 2
            channels = width
        h = keras.layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer=init())(h)
        h = keras.layers.Flatten()(h)
    else:
        for _ in range(2):
            h = keras.layers.Dense(width, activation="relu", kernel_initializer=init())(h)
    h = keras.layers.Dense(FEATURES_DIM, activation="relu", kernel_initializer=init(), name=FEATURES_LAYER)(h)
    outputs = keras.layers.Dense(int(num_classes), activation="softmax", kernel_initializer=init(),
                                 name="probabilities")(h)
    return keras.Model(inputs, outputs, name="domain_classifier")


# ---------------------------------------------------------------------------
# The trained classifier.


def _to_numpy(x) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        x = keras.ops.convert_to_numpy(x)
    return np.asarray(x, dtype=np.float32)


class DomainClassifier:
    """A trained domain classifier and its feature extractor.

    Attributes:
        model: The ``keras.Model`` giving class probabilities.
        feature_model: ``keras.Model`` giving the ``"features"`` layer
            activations ``[B, 128]``.
        test_accuracy: Accuracy on the held-out split.
        info: The metadata stored in ``classifier.json`` (dataset, data
            shape, seed, training settings, test accuracy).
        from_cache: Whether the classifier was loaded from ``workdir``.
    """

    def __init__(self, model: keras.Model, test_accuracy: float, info: dict | None = None,
                 from_cache: bool = False):
        """Wraps a classifier built by :func:`build_classifier`.

        Args:
            model: Model with a layer named ``"features"``.
            test_accuracy: Accuracy on held-out data.
            info: Metadata dict (see :attr:`info`).
            from_cache: Whether it was loaded from a cache.

        Raises:
            ValueError: The model has no ``"features"`` layer.
        """
        try:
            features = model.get_layer(FEATURES_LAYER).output
        except ValueError as e:
            raise ValueError(f"classifier model has no layer named {FEATURES_LAYER!r}") from e
        self.model = model
        self.feature_model = keras.Model(model.inputs[0], features, name="domain_classifier_features")
        self._both = keras.Model(model.inputs[0], [features, model.outputs[0]], name="domain_classifier_both")
        self.test_accuracy = float(test_accuracy)
        self.info = dict(info or {})
        self.from_cache = bool(from_cache)

    @property
    def data_shape(self) -> tuple:
        """Shape of one input example."""
        return tuple(int(d) for d in self.model.inputs[0].shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return int(self.model.outputs[0].shape[-1])

    def _predict(self, x, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Features and probabilities of ``x`` in fixed-size batches."""
        x = _to_numpy(x)
        if x.ndim != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape or x.shape[0] == 0:
            raise ValueError(f"inputs must have shape [N, {', '.join(map(str, self.data_shape))}] with N > 0, "
                             f"got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"inputs contain {np.sum(~np.isfinite(x))} NaN or inf values")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n = x.shape[0]
        bs = min(int(batch_size), n)  # one batch shape: no retracing for the last batch
        feats, probs = [], []
        for start in range(0, n, bs):
            batch = x[start : start + bs]
            m = batch.shape[0]
            if m < bs:
                batch = np.concatenate([batch, np.zeros((bs - m, *self.data_shape), np.float32)])
            f, p = self._both.predict_on_batch(batch)
            feats.append(np.asarray(f, np.float32)[:m])
            probs.append(np.asarray(p, np.float32)[:m])
        return np.concatenate(feats), np.concatenate(probs)

    def features(self, x, batch_size: int = 512) -> np.ndarray:
        """Penultimate-layer features.

        Args:
            x: Inputs ``[N, *data_shape]`` in [-1, 1].
            batch_size: Examples per forward pass.

        Returns:
            float32 array ``[N, 128]``.

        Raises:
            ValueError: Wrong shape, NaN / inf inputs or bad batch_size.
        """
        return self._predict(x, batch_size)[0]

    def probabilities(self, x, batch_size: int = 512) -> np.ndarray:
        """Class probabilities p(y|x).

        Args:
            x: Inputs ``[N, *data_shape]`` in [-1, 1].
            batch_size: Examples per forward pass.

        Returns:
            float32 array ``[N, num_classes]``.

        Raises:
            ValueError: Wrong shape, NaN / inf inputs or bad batch_size.
        """
        return self._predict(x, batch_size)[1]

    def __repr__(self) -> str:
        return (f"DomainClassifier(dataset={self.info.get('dataset')!r}, data_shape={self.data_shape}, "
                f"num_classes={self.num_classes}, test_accuracy={self.test_accuracy:.4f})")


# ---------------------------------------------------------------------------
# Training and caching.


def split_indices(num_examples: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The fixed train / test split used by :func:`train_classifier`.

    Args:
        num_examples: Dataset size N (>= 2).
        test_fraction: Fraction of examples held out, in (0, 1).
        seed: Seed of the permutation.

    Returns:
        ``(train_idx, test_idx)``: sorted int64 index arrays, disjoint, covering
        ``0..N-1``; the test split has ``round(test_fraction * N)`` (at least
        1) examples.

    Raises:
        ValueError: Bad num_examples or test_fraction.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 2:
        raise ValueError(f"num_examples must be an int >= 2, got {num_examples!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    n = int(num_examples)
    n_test = min(max(int(round(float(test_fraction) * n)), 1), n - 1)
    perm = np.random.default_rng([int(seed), 0x5EED]).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _atomic_save(workdir: str, filename: str, write) -> None:
    """Calls ``write(tmp)`` on a temporary file next to the target, then renames it."""
    suffix = os.path.splitext(filename)[1]  # keras wants a ".keras" name
    tmp = os.path.join(workdir, f".{filename}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, os.path.join(workdir, filename))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(info: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")


def _load_cached(workdir: str, expected: dict) -> DomainClassifier | None:
    model_path = os.path.join(workdir, MODEL_FILE)
    info_path = os.path.join(workdir, INFO_FILE)
    if not (os.path.isfile(model_path) and os.path.isfile(info_path)):
        return None
    try:
        with open(info_path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        warnings.warn(f"ignoring unreadable classifier cache {info_path}; retraining", stacklevel=3)
        return None
    mismatched = [k for k in _CACHE_KEYS if info.get(k) != expected[k]]
    if mismatched:
        warnings.warn(f"classifier cache in {workdir} was trained with other settings ({', '.join(mismatched)}); "
                      "retraining and overwriting it", stacklevel=3)
        return None
    try:
        model = keras.saving.load_model(model_path, compile=False)
        return DomainClassifier(model, info["test_accuracy"], info=info, from_cache=True)
    except Exception as e:  # truncated or foreign file: a cache miss
        warnings.warn(f"ignoring unreadable classifier cache {model_path} ({type(e).__name__}); retraining",
                      stacklevel=3)
        return None


def _check_positive(value, what: str, kind=int):
    bad = isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
    if bad or (kind is int and int(value) != value) or not value > 0:
        raise ValueError(f"{what} must be a positive {kind.__name__}, got {value!r}")
    return kind(value)


def train_classifier(
    dataset,
    workdir: str | None = None,
    epochs: int = 15,
    seed: int = 0,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    width: int = 64,
    test_fraction: float = 0.2,
    verbose: int = 0,
) -> DomainClassifier:
    """Trains (or loads from ``workdir``) a domain classifier.

    The labelled examples are split with :func:`split_indices`; the network
    from :func:`build_classifier` is trained on the train split with Adam and
    cross-entropy (deterministic batches from
    :class:`keras_pd.data.BatchStream`), and its accuracy is measured on the
    test split.

    Caching: with ``workdir``, the classifier is saved as
    ``workdir/classifier.keras`` and its metadata as
    ``workdir/classifier.json``, each written to a temporary file and renamed.
    A later call loads them when the dataset (name, shape, size, classes) and
    every training setting match; otherwise it retrains and overwrites them
    (with a warning).

    Args:
        dataset: A :class:`keras_pd.data.Dataset` with labels, or a name for
            :func:`keras_pd.data.load_dataset`.
        workdir: Cache directory (created if needed), or None for no cache.
        epochs: Passes over the train split.
        seed: Seed of the split, the initial weights and the batch order.
        batch_size: Examples per update.
        learning_rate: Adam learning rate.
        width: Network width (see :func:`build_classifier`).
        test_fraction: Fraction of examples held out for the test accuracy.
        verbose: Keras ``fit`` verbosity.

    Returns:
        The :class:`DomainClassifier`.

    Raises:
        ValueError: The dataset has no labels, or bad settings.
    """
    if isinstance(dataset, str):
        dataset = load_dataset(dataset)
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be a keras_pd.data.Dataset or a dataset name, got {type(dataset).__name__}")
    if dataset.y is None or dataset.num_classes is None:
        raise ValueError(f"dataset {dataset.name!r} has no labels; the domain classifier needs them")
    epochs = _check_positive(epochs, "epochs")
    batch_size = _check_positive(batch_size, "batch_size")
    learning_rate = _check_positive(learning_rate, "learning_rate", float)
    width = _check_positive(width, "width")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    train_idx, test_idx = split_indices(len(dataset), test_fraction, seed)
    info = {
        "format": _INFO_FORMAT,
        "dataset": dataset.name,
        "data_shape": list(dataset.data_shape),
        "num_classes": int(dataset.num_classes),
        "num_examples": len(dataset),
        "seed": seed,
        "test_fraction": float(test_fraction),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "width": width,
    }
    if workdir is not None:
        workdir = os.fspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        cached = _load_cached(workdir, info)
        if cached is not None:
            return cached

    start = time.perf_counter()
    model = build_classifier(dataset.data_shape, dataset.num_classes, width=width, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
    stream = BatchStream(dataset.x[train_idx], dataset.y[train_idx], batch_size=batch_size, seed=seed)
    model.fit(stream.generator(), steps_per_epoch=math.ceil(len(train_idx) / batch_size), epochs=epochs,
              shuffle=False, verbose=verbose)
    classifier = DomainClassifier(model, 0.0, info=info)
    predicted = np.argmax(classifier.probabilities(dataset.x[test_idx]), axis=-1)
    classifier.test_accuracy = float(np.mean(predicted == dataset.y[test_idx]))
    info.update(
        test_accuracy=classifier.test_accuracy,
        num_train=int(len(train_idx)),
        num_test=int(len(test_idx)),
        train_seconds=round(time.perf_counter() - start, 2),
        keras_backend=keras.backend.backend(),
    )
    classifier.info = info
    if workdir is not None:
        _atomic_save(workdir, MODEL_FILE, model.save)
        _atomic_save(workdir, INFO_FILE, lambda path: _write_json(info, path))
    return classifier


# ---------------------------------------------------------------------------
# Metrics.


def _coverage_from_probabilities(probs: np.ndarray) -> dict:
    num_classes = probs.shape[-1]
    counts = np.bincount(np.argmax(probs, axis=-1), minlength=num_classes)
    fractions = counts / float(probs.shape[0])
    covered = int(np.sum(fractions >= 1.0 / (2 * num_classes)))
    return {
        "class_fractions": [float(f) for f in fractions],
        "classes_covered": covered,
        "num_classes": int(num_classes),
        "coverage": covered / num_classes,
    }


def _score_from_probabilities(probs: np.ndarray) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean of ``p(y|x)``."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / np.sum(p, axis=-1, keepdims=True)
    marginal = np.mean(p, axis=0, keepdims=True)
    safe = np.where(p > 0, p, 1.0)
    kl = np.sum(np.where(p > 0, p * (np.log(safe) - np.log(np.maximum(marginal, 1e-300))), 0.0), axis=-1)
    return float(np.exp(np.mean(kl)))


def _check_classifier(classifier) -> None:
    if not isinstance(classifier, DomainClassifier):
        raise ValueError(f"classifier must be a DomainClassifier, got {type(classifier).__name__}")


def classifier_fid(classifier: DomainClassifier, samples, reference_x, batch_size: int = 512) -> float:
    """Frechet distance between classifier features of samples and real data.

    Args:
        classifier: A trained :class:`DomainClassifier`.
        samples: Generated examples ``[N, *data_shape]`` in [-1, 1].
        reference_x: Real examples ``[M, *data_shape]`` in [-1, 1].
        batch_size: Examples per forward pass.

    Returns:
        The Frechet distance (see :func:`keras_pd.metrics.frechet_distance`).

    Raises:
        ValueError: Wrong shapes or NaN / inf values.
    """
    _check_classifier(classifier)
    return fid_from_features(classifier.features(samples, batch_size), classifier.features(reference_x, batch_size))


def classifier_score(classifier: DomainClassifier, samples, batch_size: int = 512) -> float:
    """Inception-Score analogue ``exp(E_x KL(p(y|x) || p(y)))``.

    ``p(y)`` is the mean of ``p(y|x)`` over the samples. The score is 1 when
    every sample gets the same prediction and at most the number of classes
    (confident predictions spread evenly over all classes).

    Args:
        classifier: A trained :class:`DomainClassifier`.
        samples: Examples ``[N, *data_shape]`` in [-1, 1].
        batch_size: Examples per forward pass.

    Returns:
        The score as a Python float.

    Raises:
        ValueError: Wrong shapes or NaN / inf values.
    """
    _check_classifier(classifier)
    return _score_from_probabilities(classifier.probabilities(samples, batch_size))


def class_coverage(classifier: DomainClassifier, samples, batch_size: int = 512) -> dict:
    """How samples spread over the classes (by the classifier's argmax).

    A class counts as covered when at least ``1 / (2K)`` of the samples are
    predicted as it (half its share under a uniform spread over K classes).

    Args:
        classifier: A trained :class:`DomainClassifier`.
        samples: Examples ``[N, *data_shape]`` in [-1, 1].
        batch_size: Examples per forward pass.

    Returns:
        Dict with ``class_fractions`` (list of K fractions summing to 1),
        ``classes_covered`` (int), ``num_classes`` (K) and ``coverage``
        (``classes_covered / K``).

    Raises:
        ValueError: Wrong shapes or NaN / inf values.
    """
    _check_classifier(classifier)
    return _coverage_from_probabilities(classifier.probabilities(samples, batch_size))


def evaluate_samples(classifier: DomainClassifier, samples, reference_x, batch_size: int = 512) -> dict:
    """All classifier metrics of a set of samples, in one pass over each set.

    Args:
        classifier: A trained :class:`DomainClassifier`.
        samples: Generated examples ``[N, *data_shape]`` in [-1, 1].
        reference_x: Real examples ``[M, *data_shape]`` in [-1, 1].
        batch_size: Examples per forward pass.

    Returns:
        Dict with ``fid`` (:func:`classifier_fid`), ``score``
        (:func:`classifier_score`), the :func:`class_coverage` fields
        (``coverage``, ``classes_covered``, ``class_fractions``,
        ``num_classes``), ``num_samples`` (N), ``num_reference`` (M) and
        ``classifier_test_accuracy``. All values are plain Python numbers or
        lists (JSON serializable).

    Raises:
        ValueError: Wrong shapes or NaN / inf values.
    """
    _check_classifier(classifier)
    sample_features, sample_probs = classifier._predict(samples, batch_size)
    reference_features = classifier.features(reference_x, batch_size)
    result = {
        "fid": fid_from_features(sample_features, reference_features),
        "score": _score_from_probabilities(sample_probs),
    }
    result.update(_coverage_from_probabilities(sample_probs))
    result.update(
        num_samples=int(sample_features.shape[0]),
        num_reference=int(reference_features.shape[0]),
        classifier_test_accuracy=classifier.test_accuracy,
    )
    return result
