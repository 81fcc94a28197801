"""The forward process and its noise schedule (REFERENCE 1).

Variance-preserving diffusion: z_t = alpha_t * x + sigma_t * eps, alpha_t^2 + sigma_t^2 = 1,
described by the log signal-to-noise ratio lambda_t = log(alpha_t^2 / sigma_t^2).
Every function works on tensors of any shape through `keras.ops`.
"""

import math

from keras import ops

from keras_pd.checks import check_positive_int

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


def logsnr_cosine(t, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
    """Truncated cosine log-SNR schedule, lambda(t) (REFERENCE 1).

    lambda(t) = -2 log(tan(a t + b)), b = arctan(exp(-lambda_max / 2)),
    a = arctan(exp(-lambda_min / 2)) - b. Without truncation this is alpha_t = cos(pi t / 2).

    Args:
        t: time in [0, 1], any shape.
        logsnr_min: lambda at t = 1.
        logsnr_max: lambda at t = 0.

    Returns:
        lambda(t), float32, the shape of `t`.
    """
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    t = ops.convert_to_tensor(t, "float32")
    return -2.0 * ops.log(ops.tan(a * t + b))


def alpha_sigma(logsnr):
    """alpha and sigma from lambda: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda).

    Args:
        logsnr: lambda, any shape.

    Returns:
        (alpha, sigma), each the shape of `logsnr`.
    """
    logsnr = ops.convert_to_tensor(logsnr, "float32")
    return ops.sqrt(ops.sigmoid(logsnr)), ops.sqrt(ops.sigmoid(-logsnr))


def network_time(logsnr, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
    """The time-like network input s = arctan(exp(-lambda / 2)) / (pi / 2) in [0, 1] (REFERENCE 1).

    lambda is first clipped to the schedule's range [logsnr_min, logsnr_max], as the authors'
    code does (its inverse of the truncated cosine schedule), so a lambda outside the range the
    network was trained on maps to the nearest trained input. Within the range, s is the
    untruncated cosine schedule's t for this lambda, so the network sees the same value for the
    same noise level whatever schedule produced it.

    Args:
        logsnr: lambda, any shape.
        logsnr_min: the schedule's lowest lambda (at t = 1).
        logsnr_max: the schedule's highest lambda (at t = 0).

    Returns:
        s, the shape of `logsnr`.
    """
    logsnr = ops.clip(ops.convert_to_tensor(logsnr, "float32"), logsnr_min, logsnr_max)
    return ops.arctan(ops.exp(-0.5 * logsnr)) / (math.pi / 2.0)


def step_times(num_steps):
    """The N-step sampling grid t_i = i / N, i = N ... 0 (REFERENCE 4).

    Args:
        num_steps: N >= 1.

    Returns:
        A Python list of N + 1 floats from 1.0 down to 0.0.
    """
    num_steps = check_steps(num_steps)
    return [i / num_steps for i in range(num_steps, -1, -1)]


def check_steps(num_steps, name="num_steps"):
    """Validates a step count: a positive integer (`checks.check_positive_int`).

    Args:
        num_steps: the value to check: a Python or numpy integer, a 0-d integer array, or an
            integral float.
        name: the argument's name for the error message.

    Returns:
        `num_steps` as an int.

    Raises:
        ValueError: naming the argument, when it is not a positive integer.
    """
    return check_positive_int(num_steps, name)


def expand_to(a, x):
    """Reshapes a per-example vector [B] to broadcast against x [B, ...].

    Args:
        a: tensor of shape [B] (or a scalar, returned unchanged).
        x: tensor of shape [B, ...].

    Returns:
        `a` reshaped to [B, 1, ..., 1] with the rank of `x`.
    """
    a = ops.convert_to_tensor(a, "float32")
    if len(a.shape) == 0:
        return a
    return ops.reshape(a, (-1,) + (1,) * (len(x.shape) - 1))
