"""The paper's equations against independent numbers: identities and exact solutions."""

import math

import numpy as np
import pytest
from keras import ops

from keras_pd import parameterization as P
from keras_pd import samplers, schedules, weighting


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
    # g = 1 adds more noise than g = 0 (sigma_t > sigma_s).
    z_big = np_(samplers.ancestral_step(pred, z_t, lt, ls, np.ones((n, 1), np.float32), 1.0))
    z_small = np_(samplers.ancestral_step(pred, z_t, lt, ls, np.ones((n, 1), np.float32), 0.0))
    assert np.all(z_big > z_small)


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
