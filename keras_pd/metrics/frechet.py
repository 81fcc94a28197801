"""Frechet distance between Gaussians fitted to features (NumPy / SciPy only).

The Frechet (2-Wasserstein) distance between ``N(mu1, S1)`` and
``N(mu2, S2)`` is

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)),

the quantity behind FID (Heusel et al., 2017) when the features come from the
Inception network, and behind "classifier FID" when they come from a domain
classifier. :func:`frechet_distance` (and :func:`fid_from_features`, through
the same private function) is the one place that evaluates it.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["feature_statistics", "fid_from_features", "frechet_distance"]

# Largest tolerated imaginary part of sqrtm(S1 S2) relative to its real part.
_MAX_RELATIVE_IMAG = 1e-3
# Largest tolerated relative residual ||X X - A|| / ||A|| of X = sqrtm(A).
_MAX_SQRTM_RESIDUAL = 1e-6
# Tolerated negative round-off of the distance, relative to its scale.
_NEGATIVE_ROUNDOFF = 1e-6


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set of feature vectors.

    Args:
        features: Array-like ``[N, D]`` with ``N >= 2`` (``[N]`` is treated
            as ``[N, 1]``).

    Returns:
        ``(mu, sigma)``: float64 mean ``[D]`` and unbiased covariance
        ``[D, D]`` (``np.cov(..., rowvar=False)``).

    Raises:
        ValueError: Wrong shape, fewer than 2 rows, or NaN / inf values.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"features must have shape [N, D] with N >= 2, got {np.shape(features)}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"features contain {np.sum(~np.isfinite(f))} NaN or inf values")
    mu = np.mean(f, axis=0)
    sigma = np.atleast_2d(np.cov(f, rowvar=False))
    return mu, sigma


def _check_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"mu{name} must be [D] and sigma{name} [D, D], got {mu.shape} and {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"mu{name} or sigma{name} contains NaN or inf")
    return mu, sigma


def _is_singular(sigma: np.ndarray, name: str) -> bool:
    """Whether a covariance is numerically singular; rejects non-PSD ones."""
    w = np.linalg.eigvalsh(0.5 * (sigma + sigma.T))
    top = max(float(np.max(np.abs(w))), np.finfo(np.float64).tiny)
    tol = sigma.shape[0] * np.finfo(np.float64).eps * top
    if w[0] < -1e3 * tol:
        raise ValueError(f"sigma{name} is not positive semi-definite (smallest eigenvalue {w[0]:.3g})")
    return bool(w[0] <= tol)


def _trace_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray) -> float | None:
    """``Tr sqrtm(sigma1 @ sigma2)`` with ``scipy.linalg.sqrtm``; None when unusable.

    Unusable means non-finite, or ``X @ X`` far from the product. Small
    imaginary round-off is dropped; a large imaginary part raises.
    """
    product = sigma1 @ sigma2
    root = scipy.linalg.sqrtm(product)
    if not np.all(np.isfinite(root)):
        return None
    diag = np.diagonal(root)
    if np.iscomplexobj(diag):
        largest_real = max(float(np.max(np.abs(diag.real))), np.finfo(np.float64).tiny)
        largest_imag = float(np.max(np.abs(diag.imag)))
        if largest_imag > _MAX_RELATIVE_IMAG * largest_real:
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has a large imaginary component {largest_imag:.3g}")
    scale = max(float(np.linalg.norm(product)), np.finfo(np.float64).tiny)
    if float(np.linalg.norm(root @ root - product)) > _MAX_SQRTM_RESIDUAL * scale:
        return None
    return float(np.sum(diag.real))


def _trace_sqrtm_symmetric(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr sqrtm(sigma1 @ sigma2)`` as ``Tr sqrtm(R sigma2 R)``, ``R = sigma1^(1/2)`` (PSD inputs).

    ``sigma1 @ sigma2`` is similar to the PSD matrix ``R sigma2 R``, so both
    have the same non-negative eigenvalues; symmetric eigendecompositions
    find them stably (and fast) even when the product is singular, where
    ``sqrtm`` turns to slow complex arithmetic.
    """
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root1 @ sigma2 @ root1
    return float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (inner + inner.T)), 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between two Gaussians.

    ``d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))`` (squared
    2-Wasserstein distance; FID is this value, not its square root).

    ``Tr sqrtm(S1 S2)`` comes from ``scipy.linalg.sqrtm``, as in the
    reference FID implementations. Numerical guard: when either covariance
    is numerically singular (for example fewer samples than feature
    dimensions), or ``sqrtm`` returns non-finite or inaccurate values,
    ``eps * I`` is added to both covariances and the trace is taken from the
    eigenvalues of ``R S2 R`` with ``R = S1^(1/2)`` (the same value, computed
    stably). Small imaginary round-off of ``sqrtm`` is dropped, and tiny
    negative results are clamped to 0.

    Args:
        mu1: Mean ``[D]`` of the first Gaussian.
        sigma1: Covariance ``[D, D]`` of the first Gaussian.
        mu2: Mean ``[D]`` of the second Gaussian.
        sigma2: Covariance ``[D, D]`` of the second Gaussian.
        eps: Diagonal offset used by the guard.

    Returns:
        The distance as a non-negative Python float.

    Raises:
        ValueError: Mismatched shapes, NaN / inf, a covariance that is not
            positive semi-definite, a large imaginary part of ``sqrtm`` or a
            clearly negative result.
    """
    return _frechet_distance(mu1, sigma1, mu2, sigma2, eps, singular=None)


def _frechet_distance(mu1, sigma1, mu2, sigma2, eps: float, singular: bool | None) -> float:
    """:func:`frechet_distance`; ``singular=True`` skips the singularity check (known rank deficit)."""
    mu1, sigma1 = _check_stats(mu1, sigma1, "1")
    mu2, sigma2 = _check_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two Gaussians have different dimensions: {mu1.shape[0]} and {mu2.shape[0]}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    dim = mu1.shape[0]
    if singular is None:
        singular = _is_singular(sigma1, "1") | _is_singular(sigma2, "2")  # also rejects non-PSD input
    trace_root = None if singular else _trace_sqrtm(sigma1, sigma2)
    regularized = trace_root is None
    if regularized:
        offset = eps * np.eye(dim)
        sigma1, sigma2 = sigma1 + offset, sigma2 + offset
        trace_root = _trace_sqrtm_symmetric(sigma1, sigma2)

    diff = mu1 - mu2
    scale = float(diff @ diff) + float(np.trace(sigma1) + np.trace(sigma2))
    distance = scale - 2.0 * trace_root
    if distance < 0.0:
        if distance < -_NEGATIVE_ROUNDOFF * scale:
            raise ValueError(f"frechet distance is negative ({distance:.3g}); are the covariances valid?")
        distance = 0.0
    return distance


def fid_from_features(features1, features2, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    Args:
        features1: ``[N1, D]`` features (e.g. of generated samples).
        features2: ``[N2, D]`` features (e.g. of reference data).
        eps: Diagonal offset of the numerical guard (see
            :func:`frechet_distance`).

    Returns:
        The Frechet distance as a Python float.

    Raises:
        ValueError: Bad shapes or values (see :func:`feature_statistics` and
            :func:`frechet_distance`).
    """
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    # N samples give a covariance of rank <= N - 1: singular when N <= D (skips the eigenvalue check).
    known_singular = True if min(np.shape(features1)[0], np.shape(features2)[0]) <= mu1.shape[0] else None
    return _frechet_distance(mu1, sigma1, mu2, sigma2, eps, singular=known_singular)
