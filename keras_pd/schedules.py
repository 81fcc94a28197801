"""The forward process and its noise schedules (REFERENCE 1).

Variance-preserving diffusion: z_t = alpha_t * x + sigma_t * eps, alpha_t^2 + sigma_t^2 = 1,
described by the log signal-to-noise ratio lambda_t = log(alpha_t^2 / sigma_t^2).
Every function works on tensors of any shape through `keras.ops`.

A schedule is one object (`Schedule`): its lambda(t) on t in [0, 1], and its own coordinates
alpha_t, sigma_t, which need not be variance preserving. Any Gaussian path z_t = a_t x + s_t eps
is the variance-preserving path with the same lambda = log(a_t^2 / s_t^2), scaled by
c_t = sqrt(a_t^2 + s_t^2): z_t = c_t (alpha_t x + sigma_t eps) with alpha_t = a_t / c_t,
sigma_t = s_t / c_t. DDIM's step z_s = alpha_s x_hat + sigma_s eps_hat and Algorithm 2's target
commute with that scaling (both are linear in z, x_hat and eps_hat), so the library works in
the variance-preserving coordinates of the schedule's lambda, and a schedule's own coordinates
(`Schedule.coefficients`) are needed only where a network trained in them is called (the
adapters of foreign teachers). For rectified flow (a_t = 1 - t, s_t = t) DDIM in these
coordinates is exactly the Euler step of the flow's ODE.
"""

import inspect
import math

import numpy as np
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


# --------------------------------------------------------------------------------------------
# Schedules as objects: lambda(t), the lambda range, and the schedule's own coordinates.


class Schedule:
    """A noise schedule: lambda(t) on t in [0, 1], strictly decreasing (module docstring).

    Subclasses define `logsnr(t)`, `coefficients(t)` (their own a_t, s_t) and `get_config`;
    `logsnr_min` and `logsnr_max` are lambda(1) and lambda(0), the range a network is trained
    on (the sampler starts at t = 1, z_1 = eps, and ends with x_hat at t = 0).
    """

    name = None
    logsnr_min = LOGSNR_MIN
    logsnr_max = LOGSNR_MAX

    def logsnr(self, t):
        raise NotImplementedError

    def time(self, logsnr):
        """The inverse of `logsnr`: the t in [0, 1] at which the schedule reaches lambda (lambda
        outside [logsnr_min, logsnr_max] maps to the nearest end). A foreign network fed its own
        time or DDPM step needs it (`networks.foreign`)."""
        raise NotImplementedError

    def coefficients(self, t):
        """(a_t, s_t) of z_t = a_t x + s_t eps in the schedule's own coordinates."""
        return alpha_sigma(self.logsnr(t))

    def coefficients_at(self, logsnr):
        """(a, s) in the schedule's own coordinates at lambda (no round trip through t)."""
        return alpha_sigma(logsnr)

    def scale(self, t):
        """c_t = sqrt(a_t^2 + s_t^2): the schedule's z_t is c_t times the variance-preserving z_t."""
        a, s = self.coefficients(t)
        return ops.sqrt(a * a + s * s)

    @property
    def variance_preserving(self):
        return True

    def get_config(self):
        return {}

    def to_config(self):
        """{"name": ..., **get_config()}: what model configs and cards store."""
        return dict(name=self.name, **self.get_config())

    def __eq__(self, other):
        return isinstance(other, Schedule) and self.to_config() == other.to_config()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class CosineSchedule(Schedule):
    """The truncated cosine schedule (REFERENCE 1), variance preserving: `logsnr_cosine`.

    Args:
        logsnr_min: lambda at t = 1.
        logsnr_max: lambda at t = 0.
    """

    name = "cosine"

    def __init__(self, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
        logsnr_min, logsnr_max = float(logsnr_min), float(logsnr_max)
        if not logsnr_min < logsnr_max:
            raise ValueError(f"logsnr_min ({logsnr_min}) must be below logsnr_max ({logsnr_max})")
        self.logsnr_min, self.logsnr_max = logsnr_min, logsnr_max

    def logsnr(self, t):
        return logsnr_cosine(t, self.logsnr_min, self.logsnr_max)

    def time(self, logsnr):
        """t = (arctan(exp(-lambda / 2)) - b) / a, the inverse of `logsnr_cosine`."""
        b = math.atan(math.exp(-0.5 * self.logsnr_max))
        a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
        lam = ops.clip(ops.convert_to_tensor(logsnr, "float32"), self.logsnr_min, self.logsnr_max)
        return ops.clip((ops.arctan(ops.exp(-0.5 * lam)) - b) / a, 0.0, 1.0)

    def get_config(self):
        return dict(logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)


DDPM_BETA_SCHEDULES = ("linear", "scaled_linear")


def ddpm_alpha_bar(num_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"):
    """alpha_bar_i = prod_{j <= i} (1 - beta_j), i = 1..T, in float64 (Ho et al. 2020).

    "linear": beta_j evenly spaced from beta_start to beta_end; "scaled_linear": sqrt(beta_j)
    evenly spaced from sqrt(beta_start) to sqrt(beta_end) (Stable Diffusion's).
    """
    num_timesteps = check_positive_int(num_timesteps, "num_timesteps")
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
    if beta_schedule not in DDPM_BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {', '.join(DDPM_BETA_SCHEDULES)}, "
                         f"got {beta_schedule!r}")
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"betas must satisfy 0 < beta_start ({beta_start}) < beta_end "
                         f"({beta_end}) < 1")
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    else:
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps,
                            dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


class DDPMSchedule(Schedule):
    """A discrete DDPM schedule (`ddpm_alpha_bar`) on continuous time, variance preserving.

    The DDPM step i = 1..T sits at t = i / T with lambda_i = log(alpha_bar_i / (1 - alpha_bar_i));
    between grid points lambda is interpolated linearly in t; at t = 0 (no noise, never a
    network input: the sampler's last step returns x_hat) lambda is logsnr_max. A network fed
    the integer step (the DDPM convention, 0-based k = i - 1) gets k = t T - 1 at these times;
    a 2N-step grid with 2N dividing T lands on DDPM steps exactly.

    Args:
        num_timesteps: T.
        beta_start, beta_end: the first and last beta.
        beta_schedule: "linear" or "scaled_linear".
    """

    name = "ddpm"

    def __init__(self, num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                 beta_schedule="linear"):
        self.alpha_bar = ddpm_alpha_bar(num_timesteps, beta_start, beta_end, beta_schedule)
        self.num_timesteps = int(num_timesteps)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.beta_schedule = beta_schedule
        lam = np.log(self.alpha_bar) - np.log1p(-self.alpha_bar)
        self.logsnr_min = float(lam[-1])
        self.logsnr_max = max(LOGSNR_MAX, float(lam[0]) + 1.0)
        # lambda at t = i / T for i = 0..T (i = 0: logsnr_max), the interpolation table.
        self._grid = np.concatenate([[self.logsnr_max], lam]).astype("float32")

    def logsnr(self, t):
        t = ops.convert_to_tensor(t, "float32")
        pos = ops.clip(t, 0.0, 1.0) * float(self.num_timesteps)
        lo = ops.clip(ops.floor(pos), 0.0, float(self.num_timesteps - 1))
        frac = pos - lo
        grid = ops.convert_to_tensor(self._grid)
        lo_i = ops.cast(lo, "int32")
        lam_lo, lam_hi = ops.take(grid, lo_i), ops.take(grid, lo_i + 1)
        return lam_lo + frac * (lam_hi - lam_lo)

    def time(self, logsnr):
        """The inverse of the piecewise-linear lambda: t = (i + fraction) / T on the grid cell
        whose two lambdas bracket the given one."""
        ascending = ops.convert_to_tensor(-self._grid)  # -lambda at t = i / T, increasing in i
        v = -ops.clip(ops.convert_to_tensor(logsnr, "float32"), self.logsnr_min, self.logsnr_max)
        shape = ops.shape(v)
        v = ops.reshape(v, (-1,))
        hi = ops.searchsorted(ascending, v, side="right")
        lo = ops.clip(ops.cast(hi, "int32") - 1, 0, self.num_timesteps - 1)
        g_lo, g_hi = ops.take(ascending, lo), ops.take(ascending, lo + 1)
        frac = ops.clip((v - g_lo) / (g_hi - g_lo), 0.0, 1.0)
        t = (ops.cast(lo, "float32") + frac) / float(self.num_timesteps)
        return ops.reshape(t, shape)

    def get_config(self):
        return dict(num_timesteps=self.num_timesteps, beta_start=self.beta_start,
                    beta_end=self.beta_end, beta_schedule=self.beta_schedule)


class FlowSchedule(Schedule):
    """Rectified flow / flow matching: z_t = (1 - sigma_t) x + sigma_t eps, not variance preserving.

    sigma_t = shift t / (1 + (shift - 1) t) (shift = 1: sigma_t = t; Stable Diffusion 3 uses
    shifted times), a_t = 1 - sigma_t, so a_t + s_t = 1 and lambda_t = 2 log((1 - sigma_t) /
    sigma_t). lambda is +-inf at t = 0 and 1; it is clipped to [logsnr_min, logsnr_max] there
    (sigma_t within about 5e-5 of 0 and 1 for the default +-20), as the truncated cosine is.

    Args:
        shift: the time shift (> 0).
        logsnr_min, logsnr_max: the clipping range of lambda.
    """

    name = "flow"

    def __init__(self, shift=1.0, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
        if not float(shift) > 0:
            raise ValueError(f"shift must be positive, got {shift}")
        if not float(logsnr_min) < float(logsnr_max):
            raise ValueError(f"logsnr_min ({logsnr_min}) must be below logsnr_max ({logsnr_max})")
        self.shift = float(shift)
        self.logsnr_min, self.logsnr_max = float(logsnr_min), float(logsnr_max)

    def sigma(self, t):
        t = ops.convert_to_tensor(t, "float32")
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def logsnr(self, t):
        sigma = ops.clip(self.sigma(t), 1e-30, 1.0)
        lam = 2.0 * (ops.log(ops.maximum(1.0 - sigma, 1e-30)) - ops.log(sigma))
        return ops.clip(lam, self.logsnr_min, self.logsnr_max)

    def time(self, logsnr):
        """sigma = 1 / (1 + exp(lambda / 2)), then the shift undone: t = sigma / (shift -
        (shift - 1) sigma)."""
        lam = ops.clip(ops.convert_to_tensor(logsnr, "float32"), self.logsnr_min, self.logsnr_max)
        sigma = ops.sigmoid(-0.5 * lam)
        return sigma / (self.shift - (self.shift - 1.0) * sigma)

    def coefficients(self, t):
        sigma = self.sigma(t)
        return 1.0 - sigma, sigma

    def coefficients_at(self, logsnr):
        """sigma = 1 / (1 + exp(lambda / 2)), a = 1 - sigma."""
        sigma = ops.sigmoid(-0.5 * ops.convert_to_tensor(logsnr, "float32"))
        return 1.0 - sigma, sigma

    @property
    def variance_preserving(self):
        return False

    def get_config(self):
        return dict(shift=self.shift, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)


SCHEDULES = {c.name: c for c in (CosineSchedule, DDPMSchedule, FlowSchedule)}


def get_schedule(spec=None, **overrides):
    """A Schedule from an instance, a name ("cosine", "ddpm", "flow") or a config dict.

    Args:
        spec: Schedule, str, dict with "name", or None (cosine).
        **overrides: constructor arguments (e.g. logsnr_min=-12.0 for cosine).

    Raises:
        ValueError: an unknown name, or arguments the schedule does not take.
    """
    if isinstance(spec, Schedule) and not overrides:
        return spec
    config = (spec.to_config() if isinstance(spec, Schedule) else
              dict(spec) if isinstance(spec, dict) else {"name": spec or "cosine"})
    name = config.pop("name", "cosine")
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")
    config.update(overrides)
    try:
        return SCHEDULES[name](**config)
    except TypeError as e:
        raise ValueError(f"schedule {name!r}: {e}") from None


def schedule_arguments(name):
    """The constructor arguments of the schedule called `name` (a set)."""
    return set(inspect.signature(SCHEDULES[name].__init__).parameters) - {"self"}


def schedule_from_options(name, **options):
    """A Schedule from its name and the options given (None: the schedule's default), with a
    one-line error naming an option the schedule does not take."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")
    given = {k: v for k, v in options.items() if v is not None}
    takes = schedule_arguments(name)
    extra = sorted(set(given) - takes)
    if extra:
        raise ValueError(f"the {name!r} schedule does not take {', '.join(extra)} (it takes "
                         f"{', '.join(sorted(takes))})")
    return get_schedule(name, **given)
