"""What the network predicts, and how x_hat, eps_hat and v_hat follow from it (REFERENCE 2).

alpha and sigma given to these functions must already broadcast against z
(see `schedules.expand_to`).
"""

from typing import NamedTuple

from keras import ops

PARAMETERIZATIONS = ("eps", "x", "v", "both", "flow")


class Prediction(NamedTuple):
    """A denoiser's prediction of the clean data and of the noise, with v derived.

    Attributes:
        x: x_hat, the predicted clean data.
        eps: eps_hat, the predicted noise, consistent with z = alpha x_hat + sigma eps_hat.
        v: v_hat = alpha eps_hat - sigma x_hat.
    """

    x: object
    eps: object
    v: object


def _tensors(*values):
    return [ops.convert_to_tensor(v, "float32") for v in values]


def check_parameterization(name):
    """Raises ValueError naming `parameterization` when `name` is not one of PARAMETERIZATIONS."""
    if name not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {name!r}; expected one of {', '.join(PARAMETERIZATIONS)}"
        )
    return name


def output_channels(parameterization, channels):
    """Network output channels: `channels`, or twice that for the (x, eps) parameterization."""
    check_parameterization(parameterization)
    return 2 * channels if parameterization == "both" else channels


def x_from_eps(z, eps, alpha, sigma):
    """x = (z - sigma eps) / alpha. Blows up as alpha -> 0 (t -> 1)."""
    return (z - sigma * eps) / alpha


def eps_from_x(z, x, alpha, sigma):
    """eps = (z - alpha x) / sigma: the noise consistent with z and x."""
    return (z - alpha * x) / sigma


def v_from_x_eps(x, eps, alpha, sigma):
    """v = alpha eps - sigma x, the angular velocity dz/dphi (REFERENCE 2)."""
    return alpha * eps - sigma * x


def x_from_v(z, v, alpha, sigma):
    """x = alpha z - sigma v (uses alpha^2 + sigma^2 = 1)."""
    return alpha * z - sigma * v


def eps_from_v(z, v, alpha, sigma):
    """eps = sigma z + alpha v (uses alpha^2 + sigma^2 = 1)."""
    return sigma * z + alpha * v


def x_from_flow(z, u, alpha, sigma):
    """x = (z - sigma u) / (alpha + sigma) for the flow velocity u = eps - x.

    From z = alpha x + sigma eps = (alpha + sigma) x + sigma u; no identity of alpha and sigma
    is used. In rectified flow's own coordinates (z_t = (1 - t) x + t eps, `FlowSchedule`) u is
    the velocity dz_t/dt the flow-matching network predicts; here, in the variance-preserving
    coordinates of the same lambda, the same u gives the same x.
    """
    return (z - sigma * u) / (alpha + sigma)


def x_from_both(z, x_tilde, eps_tilde, alpha, sigma):
    """(x, eps) parameterization: x = sigma^2 x_tilde + alpha (z - sigma eps_tilde).

    Interpolates between the direct x prediction (trusted at high noise) and the
    eps-derived one (trusted at low noise).
    """
    return ops.square(sigma) * x_tilde + alpha * (z - sigma * eps_tilde)


def clip_x(x, clip):
    """x_hat clipped to the data range: [-1, 1] for clip=True, [low, high] for a pair
    (broadcastable to x: a model whose data are standardized per channel, `DiffusionModel`'s
    data_mean and data_variance); unchanged for clip=False or None."""
    if clip is None or clip is False:
        return x
    low, high = (-1.0, 1.0) if clip is True else clip
    return ops.clip(x, low, high)


def prediction_from_x(z, x, alpha, sigma):
    """The full Prediction when x_hat is known: eps and v recomputed from it."""
    z, x, alpha, sigma = _tensors(z, x, alpha, sigma)
    eps = eps_from_x(z, x, alpha, sigma)
    return Prediction(x, eps, v_from_x_eps(x, eps, alpha, sigma))


def predict(parameterization, output, z, alpha, sigma, clip=False):
    """Turns a raw network output into a Prediction (REFERENCE 2).

    Args:
        parameterization: one of PARAMETERIZATIONS.
        output: the network output; for "both", x_tilde and eps_tilde concatenated on the last
            axis; for "flow", the velocity u = eps - x.
        z: the noisy input z_t.
        alpha: alpha_t, broadcastable to z.
        sigma: sigma_t, broadcastable to z.
        clip: clip x_hat to [-1, 1], or to a (low, high) pair (`clip_x`; sampling only).
            eps_hat is then recomputed from the clipped x_hat, as it must be (REFERENCE 8).

    Returns:
        Prediction(x, eps, v).
    """
    check_parameterization(parameterization)
    output, z, alpha, sigma = _tensors(output, z, alpha, sigma)
    if parameterization == "eps":
        eps = output
        x = x_from_eps(z, eps, alpha, sigma)
    elif parameterization == "x":
        x = output
        eps = eps_from_x(z, x, alpha, sigma)
    elif parameterization == "v":
        x = x_from_v(z, output, alpha, sigma)
        eps = eps_from_v(z, output, alpha, sigma)
    elif parameterization == "flow":
        x = x_from_flow(z, output, alpha, sigma)
        eps = x + output
    else:
        x_tilde, eps_tilde = ops.split(output, 2, axis=-1)
        x = x_from_both(z, x_tilde, eps_tilde, alpha, sigma)
        eps = eps_from_x(z, x, alpha, sigma)
    if clip is not None and clip is not False:
        return prediction_from_x(z, clip_x(x, clip), alpha, sigma)
    return Prediction(x, eps, v_from_x_eps(x, eps, alpha, sigma))
