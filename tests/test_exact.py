"""The N-step DDIM sampler against exact solutions (REFERENCE 1, 2, 4), on every backend.

Gaussian data x ~ N(0, s^2) (every coordinate) has the exact denoiser
    x_hat(z_t) = E[x | z_t] = alpha_t s^2 z_t / v_t,  v_t = alpha_t^2 s^2 + sigma_t^2,
so eps_hat = sigma_t z_t / v_t and each DDIM step t -> u is the linear map
    z_u = (alpha_u alpha_t s^2 + sigma_u sigma_t) / v_t * z_t.
For fixed noise z_1 the N-step sampler's output is therefore the product of those factors for
t = i / N, i = N ... 2, times the last step's x_hat factor alpha s^2 / v at t = 1 / N: computed
here in float64 numpy from the schedule's formula, independently of keras_pd. As N grows the
sampler approaches the probability-flow ODE, whose exact solution maps z_1 ~ N(0, v_1) to
z_0 = sqrt(v_0 / v_1) z_1 ~ N(0, v_0); DDIM is a first-order method, so its error falls as 1/N.
"""

import numpy as np
import pytest
from keras import ops

from keras_pd import parameterization as P
from keras_pd import samplers, schedules


def _np_logsnr(t, logsnr_min=-20.0, logsnr_max=20.0):
    # The truncated cosine schedule (REFERENCE 1) in float64.
    b = np.arctan(np.exp(-0.5 * logsnr_max))
    a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
    return -2.0 * np.log(np.tan(a * np.asarray(t, np.float64) + b))


def _np_alpha_sigma(t):
    lam = _np_logsnr(t)
    return np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))


def _np_ddim_factor(num_steps, s):
    """The N-step DDIM output / z_1 for N(0, s^2) data, in float64."""
    alpha, sigma = _np_alpha_sigma(np.arange(num_steps + 1) / num_steps)  # index i: t = i / N
    v = alpha**2 * s**2 + sigma**2
    factor = 1.0
    for i in range(num_steps, 1, -1):  # DDIM t = i / N -> u = (i - 1) / N
        factor *= (alpha[i - 1] * alpha[i] * s**2 + sigma[i - 1] * sigma[i]) / v[i]
    return factor * alpha[1] * s**2 / v[1]  # the last step returns x_hat at t = 1 / N


def _np_ode_factor(s):
    (a0, a1), (s0, s1) = _np_alpha_sigma(np.array([0.0, 1.0]))
    return np.sqrt((a0**2 * s**2 + s0**2) / (a1**2 * s**2 + s1**2))


def _gaussian_denoiser(s):
    """The exact denoiser of N(0, s^2) data as a Prediction (unclipped)."""

    def denoise(z, logsnr):
        alpha, sigma = (schedules.expand_to(v, z) for v in schedules.alpha_sigma(logsnr))
        v = ops.square(alpha) * s**2 + ops.square(sigma)
        return P.prediction_from_x(z, alpha * s**2 * z / v, alpha, sigma)

    return denoise


def _noise():
    return np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)


def _sample(num_steps, s):
    out = samplers.sample_loop(_gaussian_denoiser(s), _noise(), num_steps, sampler="ddim",
                               logsnr_fn=schedules.logsnr_cosine)
    return np.asarray(ops.convert_to_numpy(out), np.float64)


# N = 1 is left out: its output is alpha_1 s^2 / v_1 z_1 with alpha_1 ~ 4.5e-5 at the truncated
# end (lambda = -20), which the float32 schedule computes to only ~0.3% (tan near pi / 2).
@pytest.mark.parametrize("s", [0.5, 2.0])
@pytest.mark.parametrize("num_steps", [2, 3, 8, 64])
def test_ddim_on_gaussian_data_is_the_product_of_exact_step_maps(num_steps, s):
    want = _np_ddim_factor(num_steps, s) * _noise().astype(np.float64)
    np.testing.assert_allclose(_sample(num_steps, s), want, rtol=1e-4, atol=0)


def test_ddim_converges_to_the_probability_flow_ode_as_one_over_n():
    s = 0.5
    exact = _np_ode_factor(s) * _noise().astype(np.float64)
    errors = {}
    for n in (8, 64, 512):
        got = _sample(n, s)
        # Still the exact product of step maps at every N (float32 over 512 steps).
        np.testing.assert_allclose(got, _np_ddim_factor(n, s) * _noise(), rtol=1e-4, atol=0)
        errors[n] = float(np.max(np.abs(got - exact) / np.abs(exact)))
    assert errors[8] > errors[64] > errors[512] > 0
    # First order: eight times the steps, an eighth of the error.
    ratio = errors[64] / errors[512]
    assert 6.5 < ratio < 9.5, (errors, ratio)
