"""The paper's equations against independent numbers: identities and exact solutions."""

import math

import numpy as np
import pytest
from keras import ops

from keras_pd import parameterization as P
from keras_pd import checks, samplers, schedules, weighting


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def test_schedule_endpoints_and_cosine_shape():
    t = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    lam = np_(schedules.logsnr_cosine(t))
    assert lam[0] == pytest.approx(20.0, abs=1e-3)
    assert lam[-1] == pytest.approx(-20.0, abs=1e-2)
    assert np.all(np.diff(lam) < 0)
    alpha, sigma = map(np_, schedules.alpha_sigma(lam.astype(np.float32)))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    # Away from the truncated ends the schedule is alpha = cos(pi t / 2).
    mid = slice(5, 96)
    np.testing.assert_allclose(alpha[mid], np.cos(np.pi * t[mid] / 2), atol=1e-4)
    # The network time maps lambda back to (nearly) t.
    s = np_(schedules.network_time(lam.astype(np.float32)))
    np.testing.assert_allclose(s, t, atol=1e-4)


def test_step_times_and_bad_steps():
    assert schedules.step_times(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_steps"):
            schedules.step_times(bad)


def _draw(rng, n=64, d=12):
    # Log-SNRs across the whole range, ends included (t = 0 and t = 1).
    lam = np.concatenate([[20.0, -20.0, 19.9, -19.9], rng.uniform(-20, 20, n - 4)])
    alpha, sigma = (np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam))))
    x = rng.uniform(-1, 1, (n, d))
    eps = rng.standard_normal((n, d))
    a, s = alpha[:, None], sigma[:, None]
    return [v.astype(np.float32) for v in (lam, a, s, x, eps, a * x + s * eps)]


def test_parameterization_round_trips(rng):
    lam, a, s, x, eps, z = _draw(rng)
    v = a * eps - s * x
    # v -> x and v -> eps are well conditioned at every noise level.
    pred = P.predict("v", v, z, a, s)
    np.testing.assert_allclose(np_(pred.x), x, atol=2e-5)
    np.testing.assert_allclose(np_(pred.eps), eps, atol=2e-5)
    np.testing.assert_allclose(np_(pred.v), v, atol=2e-5)
    # x -> eps -> v -> x, where dividing by sigma is well conditioned (sigma > 1e-2).
    ok = s[:, 0] > 1e-2
    pred = P.predict("x", x, z, a, s)
    np.testing.assert_allclose(np_(pred.eps)[ok], eps[ok], atol=1e-3)
    back = P.predict("v", np_(pred.v).astype(np.float32), z, a, s)
    np.testing.assert_allclose(np_(back.x), x, atol=1e-4)
    # eps -> x where dividing by alpha is well conditioned.
    ok = a[:, 0] > 1e-2
    pred = P.predict("eps", eps, z, a, s)
    np.testing.assert_allclose(np_(pred.x)[ok], x[ok], atol=1e-3)
    # (x, eps) with both halves exact gives x exactly: sigma^2 x + alpha^2 x = x.
    pred = P.predict("both", np.concatenate([x, eps], -1), z, a, s)
    np.testing.assert_allclose(np_(pred.x), x, atol=2e-5)
    # Any weights summing to 1 pass that; perturbed halves pin the formula down (REFERENCE 2):
    # x_hat = sigma^2 x_tilde + alpha (z - sigma eps_tilde), then eps_hat = (z - alpha x_hat)
    # / sigma recomputed from x_hat (not eps_tilde), and v_hat = alpha eps_hat - sigma x_hat.
    x_tilde = (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    eps_tilde = (eps + 0.3 * rng.standard_normal(eps.shape)).astype(np.float32)
    a64, s64, z64 = (v.astype(np.float64) for v in (a, s, z))
    want_x = s64**2 * x_tilde + a64 * (z64 - s64 * eps_tilde)
    want_eps = (z64 - a64 * want_x) / s64
    pred = P.predict("both", np.concatenate([x_tilde, eps_tilde], -1), z, a, s)
    np.testing.assert_allclose(np_(pred.x), want_x, atol=2e-5)
    ok = s[:, 0] > 1e-2  # eps_hat divides by sigma
    np.testing.assert_allclose(np_(pred.eps)[ok], want_eps[ok], atol=1e-4)
    np.testing.assert_allclose(np_(pred.v)[ok], (a64 * want_eps - s64 * want_x)[ok], atol=1e-4)
    # The perturbation shows in both: x_hat is not x, eps_hat is not eps_tilde.
    assert np.abs(want_x - x).max() > 0.1 and np.abs(want_eps - eps_tilde)[ok].max() > 0.1


def test_clipping_recomputes_eps_from_clipped_x(rng):
    lam, a, s, x, eps, z = _draw(rng)
    wild = (3.0 * x).astype(np.float32)
    pred = P.predict("x", wild, z, a, s, clip=True)
    xc = np.clip(3.0 * x, -1, 1)
    np.testing.assert_allclose(np_(pred.x), xc, atol=1e-6)
    # z = alpha x_hat + sigma eps_hat must still hold after clipping.
    np.testing.assert_allclose(a * np_(pred.x) + s * np_(pred.eps), z, atol=1e-4)


def test_output_channels_and_bad_names():
    assert P.output_channels("both", 3) == 6 and P.output_channels("v", 3) == 3
    with pytest.raises(ValueError, match="parameterization"):
        P.predict("score", None, None, 1.0, 1.0)
    with pytest.raises(ValueError, match="weighting"):
        weighting.loss_weight("snr2", 0.0)
    with pytest.raises(ValueError, match="sampler"):
        samplers.check_sampler("euler")


def test_ddim_step_with_true_x_lands_on_forward_process(rng):
    lam_t, a_t, s_t, x, eps, z_t = _draw(rng)
    lam_s = np.minimum(lam_t + rng.uniform(0.1, 5.0, lam_t.shape), 20.0).astype(np.float32)
    a_s, s_s = (np_(v)[:, None] for v in schedules.alpha_sigma(lam_s))
    pred = P.prediction_from_x(z_t, x, a_t, s_t)
    z_s = np_(samplers.ddim_step(pred, a_s.astype(np.float32), s_s.astype(np.float32)))
    ok = s_t[:, 0] > 1e-3  # eps recomputed from x divides by sigma_t
    np.testing.assert_allclose(z_s[ok], (a_s * x + s_s * eps)[ok], atol=1e-4)


def test_ancestral_step_with_true_x_keeps_forward_marginal(rng):
    # With the true x and g = 0 the step samples the forward posterior q(z_s | z_t, x), so
    # z_s ~ N(alpha_s x, sigma_s^2) when z_t ~ q(z_t | x): a known distribution.
    n = 200000
    x = np.full((n, 1), 0.6, np.float32)
    lt, ls = np.float32(-1.0), np.float32(1.5)
    a_t, s_t = map(np_, schedules.alpha_sigma(lt))
    a_s, s_s = map(np_, schedules.alpha_sigma(ls))
    z_t = (a_t * x + s_t * rng.standard_normal((n, 1))).astype(np.float32)
    pred = P.prediction_from_x(z_t, x, np.float32(a_t), np.float32(s_t))
    z_s = np_(samplers.ancestral_step(pred, z_t, lt, ls,
                                      rng.standard_normal((n, 1)).astype(np.float32), 0.0))
    se = s_s / math.sqrt(n)
    assert abs(z_s.mean() - a_s * 0.6) < 5 * se
    assert abs(z_s.std() - s_s) < 5 * s_s / math.sqrt(2 * n)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_ancestral_step_mean_and_variance_are_reference_4(rng, gamma):
    # Per example: r = exp(lambda_t - lambda_s); mean = r (alpha_s / alpha_t) z_t
    # + (1 - r) alpha_s x_hat; std = sqrt(var_small^(1 - g) var_large^g) with
    # var_small = (1 - r) sigma_s^2, var_large = (1 - r) sigma_t^2, in float64 numpy.
    n, d = 32, 3
    lt = rng.uniform(-8.0, 6.0, (n, 1))
    ls = lt + rng.uniform(0.2, 4.0, (n, 1))
    a_t, s_t = np.sqrt(1 / (1 + np.exp(-lt))), np.sqrt(1 / (1 + np.exp(lt)))
    a_s, s_s = np.sqrt(1 / (1 + np.exp(-ls))), np.sqrt(1 / (1 + np.exp(ls)))
    z_t = rng.standard_normal((n, d)).astype(np.float32)
    x_hat = rng.uniform(-1, 1, (n, d)).astype(np.float32)
    noise = rng.standard_normal((n, d)).astype(np.float32)
    f32 = [v.astype(np.float32) for v in (a_t, s_t, lt, ls)]
    pred = P.prediction_from_x(z_t, x_hat, f32[0], f32[1])
    r = np.exp(lt - ls)
    mean = r * (a_s / a_t) * z_t + (1 - r) * a_s * x_hat
    std = np.sqrt(((1 - r) * s_s**2) ** (1 - gamma) * ((1 - r) * s_t**2) ** gamma)
    got = np_(samplers.ancestral_step(pred, z_t, f32[2], f32[3], noise, gamma))
    np.testing.assert_allclose(got, mean + std * noise, rtol=1e-5, atol=1e-5)
    at_mean = np_(samplers.ancestral_step(pred, z_t, f32[2], f32[3], 0 * noise, gamma))
    np.testing.assert_allclose(at_mean, mean, rtol=1e-5, atol=1e-6)
    # var_small and var_large differ by far more than the tolerance for many examples, so a
    # wrong g (or swapped sigma_s / sigma_t) shows.
    assert np.sum(s_t / s_s > 1.5) > n // 4


@pytest.mark.parametrize("name", weighting.WEIGHTINGS)
def test_weighted_loss_equals_x_space_weight(rng, name):
    lam, a, s, x, eps, z = _draw(rng)
    ok = s[:, 0] > 1e-2
    lam, a, s, x, eps, z = lam[ok], a[ok], s[ok], x[ok], eps[ok], z[ok]
    x_hat = (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
    pred = P.prediction_from_x(z, x_hat, a, s)
    target = P.Prediction(x, eps, a * eps - s * x)
    loss = np_(weighting.weighted_loss(name, pred, target))
    expected = np_(weighting.loss_weight(name, lam)) * ((x_hat - x) ** 2).mean(1)
    np.testing.assert_allclose(loss, expected, rtol=1e-2)
    snr = np.exp(lam.astype(np.float64))
    w = {"snr": snr, "truncated_snr": np.maximum(snr, 1), "snr_plus_one": snr + 1,
         "constant": np.ones_like(snr)}[name]
    np.testing.assert_allclose(np_(weighting.loss_weight(name, lam)), w, rtol=1e-5)


# -- step counts of every integral type (issue 17) ---------------------------------------------

@pytest.mark.parametrize("value,want", [
    (4, 4), (np.int64(4), 4), (np.int32(1), 1), (np.uint8(7), 7), (np.array(4), 4),
    (np.array(3, np.int16), 3), (4.0, 4), (np.float32(8.0), 8), (np.array(2.0), 2),
])
def test_check_positive_int_accepts_every_integral_type(value, want):
    got = checks.check_positive_int(value, "count")
    assert got == want and type(got) is int
    assert schedules.check_steps(value) == want


@pytest.mark.parametrize("value", [
    0, -3, np.int64(0), np.int32(-1), np.array(0), 2.5, np.float32(0.5), float("nan"),
    float("inf"), True, False, np.bool_(True), np.array(True), "4", b"4", None, [4],
    np.array([4]), np.zeros((2, 3), np.int64),
])
def test_check_positive_int_rejects_with_one_line_naming_the_argument(value):
    with pytest.raises(ValueError, match="^my_count must be a positive integer") as info:
        checks.check_positive_int(value, "my_count")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="^num_steps must be a positive integer"):
        schedules.check_steps(value)


def _tanh_denoise(z, logsnr):
    # A fixed nonlinear denoiser: the samples depend on every step taken.
    alpha, sigma = (ops.reshape(v, (-1, 1)) for v in schedules.alpha_sigma(logsnr))
    return P.prediction_from_x(z, 0.9 * ops.tanh(2.0 * z), alpha, sigma)


def test_sample_loop_checks_numpy_step_counts():
    # A step count read from a card or a numpy computation (numpy.int64) is a fixed N like a
    # Python int: checked (numpy.int64(0) used to run as a traced count and return NaN
    # silently) and run as N steps.
    noise = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    for bad in (np.int64(0), np.int32(-2), np.array(0), np.float64(2.5), np.bool_(True)):
        with pytest.raises(ValueError, match="num_steps must be a positive integer"):
            samplers.sample_loop(_tanh_denoise, noise, bad)
    want = np_(samplers.sample_loop(_tanh_denoise, noise, 4))
    assert np.all(np.isfinite(want))
    assert np.abs(np_(samplers.sample_loop(_tanh_denoise, noise, 3)) - want).max() > 1e-3
    for steps in (np.int64(4), np.int32(4), np.array(4), 4.0):
        np.testing.assert_allclose(np_(samplers.sample_loop(_tanh_denoise, noise, steps)),
                                   want, rtol=1e-6, atol=1e-6)
    unrolled = samplers.sample_loop(_tanh_denoise, noise, np.int64(4), unroll=True)
    np.testing.assert_allclose(np_(unrolled), want, rtol=1e-5, atol=1e-6)
    # A backend tensor stays a dynamic trip count (one compiled loop for every N).
    dynamic = samplers.sample_loop(_tanh_denoise, noise, ops.convert_to_tensor(4, "int32"))
    np.testing.assert_allclose(np_(dynamic), want, rtol=1e-5, atol=1e-6)


# -- the network time, clipped to the schedule's range (issue 17) ------------------------------

def _np_network_time(lam, lo, hi):
    return np.arctan(np.exp(-0.5 * np.clip(lam, lo, hi))) / (np.pi / 2)


def test_network_time_clips_lambda_to_the_schedule_range():
    lam = np.array([-40.0, -25.0, -20.0, -7.5, -5.0, -1.0, 0.0, 2.0, 3.0, 3.5, 20.0, 33.0])
    got = np_(schedules.network_time(lam.astype(np.float32), -5.0, 3.0))
    want = _np_network_time(lam, -5.0, 3.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Outside [-5, 3] the value is the end's: the network never sees an untrained time.
    assert np.all(got[:5] == got[4]) and np.all(got[-3:] == got[-3])
    assert got[4] < 0.99 and got[-3] > 0.1
    # The defaults are the truncated cosine schedule's range, [-20, 20].
    np.testing.assert_allclose(np_(schedules.network_time(lam.astype(np.float32))),
                               _np_network_time(lam, -20.0, 20.0), rtol=1e-6, atol=1e-7)
    assert schedules.LOGSNR_MIN == -20.0 and schedules.LOGSNR_MAX == 20.0
