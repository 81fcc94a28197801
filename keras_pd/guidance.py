"""Classifier-free guidance: the guided prediction and the draws of guidance weights.

Classifier-free guidance (Ho & Salimans, 2021) trains one class-conditional network that also
sees a null label (label dropout), and samples with

    x_hat_w(z_t) = (1 + w) x_hat(z_t, c) - w x_hat(z_t, null)

(the same combination of eps_hat, since eps_hat is affine in x_hat for a fixed z_t). w = 0 is
the conditional model; larger w trades diversity for fidelity to the label. Guided distillation
(Meng et al., "On Distillation of Guided Diffusion Models", CVPR 2023) first trains a student
that takes w as an input to match x_hat_w in one network call (`guided_distillation.
GuidanceDistillationModel`), then distils that student progressively with w passed through.
"""

import keras
from keras import ops

from keras_pd.parameterization import Prediction, clip_x, prediction_from_x, v_from_x_eps

GUIDANCE_MAX = 100.0


def check_guidance_range(low, high):
    """Raises ValueError unless 0 <= low <= high <= GUIDANCE_MAX; returns (low, high)."""
    low, high = float(low), float(high)
    if not 0.0 <= low <= high <= GUIDANCE_MAX:
        raise ValueError(f"guidance range [{low}, {high}] must satisfy 0 <= min <= max <= "
                         f"{GUIDANCE_MAX:g}")
    return low, high


def null_labels(labels, num_classes):
    """The null label (index `num_classes`) in place of every label."""
    return ops.full_like(ops.cast(labels, "int32"), num_classes)


def drop_labels(labels, num_classes, rate, uniform):
    """Label dropout for classifier-free guidance: a label becomes null where uniform < rate.

    Args:
        labels: int [B].
        num_classes: K (the null label).
        rate: probability of dropping a label.
        uniform: U[0, 1) draws [B] (the caller's, so that they follow its seed and sharding).
    """
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    return ops.where(uniform < rate, num_classes, labels)


def guided_x(x_cond, x_uncond, w):
    """x_hat_w = (1 + w) x_hat(c) - w x_hat(null), with w broadcast over the example axes."""
    w = ops.reshape(ops.cast(w, "float32"), (-1,) + (1,) * (len(x_cond.shape) - 1))
    return (1.0 + w) * x_cond - w * x_uncond


def guided_prediction(cond, uncond, w, z, alpha, sigma, clip=False):
    """The guided Prediction from the conditional and unconditional ones at the same z_t.

    x and eps are combined with the same weights (v follows from them); with `clip`, the guided
    x_hat is clipped to [-1, 1] and eps_hat recomputed from it, as for any prediction.

    Args:
        cond: Prediction with the requested labels.
        uncond: Prediction with the null label.
        w: guidance weights [B].
        z: z_t; alpha, sigma: alpha_t and sigma_t broadcastable to z.
        clip: clip the guided x_hat (sampling only): True, or a (low, high) pair
            (`parameterization.clip_x`).

    Returns:
        Prediction(x, eps, v).
    """
    z, alpha, sigma = (ops.convert_to_tensor(v, "float32") for v in (z, alpha, sigma))
    x = guided_x(ops.convert_to_tensor(cond.x), ops.convert_to_tensor(uncond.x), w)
    if clip is not None and clip is not False:
        return prediction_from_x(z, clip_x(x, clip), alpha, sigma)
    eps = guided_x(ops.convert_to_tensor(cond.eps), ops.convert_to_tensor(uncond.eps), w)
    return Prediction(x, eps, v_from_x_eps(x, eps, alpha, sigma))


def sample_guidance(rows, low, high, seed):
    """Guidance weights w ~ U[low, high], [rows] (guided distillation's draws)."""
    return low + (high - low) * keras.random.uniform((rows,), seed=seed)
