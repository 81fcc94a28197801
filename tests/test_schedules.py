"""Noise schedules as objects (keras_pd.schedules): identities against float64 numpy."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_pd.diffusion import DiffusionModel
from keras_pd.networks.mlp import MLPDenoiser
from keras_pd.parameterization import predict
from keras_pd.samplers import ddim_step
from keras_pd.schedules import (CosineSchedule, DDPMSchedule, FlowSchedule, alpha_sigma,
                                get_schedule)

SCHEDULES = {
    "cosine": CosineSchedule(),
    "cosine_narrow": CosineSchedule(-7.8, 2.2),
    "ddpm_linear": DDPMSchedule(),
    "ddpm_scaled": DDPMSchedule(1000, 0.00085, 0.012, "scaled_linear"),
    "flow": FlowSchedule(),
    "flow_shift3": FlowSchedule(shift=3.0),
}
T = np.linspace(0.0, 1.0, 2001).astype("float32")


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_lambda_strictly_decreases_and_spans_its_range(name):
    s = SCHEDULES[name]
    lam = np_(s.logsnr(T))
    # (float32 tan near pi / 2: the cosine's lambda at t = 1 is off by up to ~1e-2)
    assert lam[0] == pytest.approx(s.logsnr_max, abs=2e-2)
    assert lam[-1] == pytest.approx(s.logsnr_min, abs=2e-2)
    inner = lam[1:-1]  # flow clips lambda to its range at the two ends only
    assert np.all(np.diff(inner) < 0), name


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_variance_preserving_coordinates_and_the_schedules_own(name):
    """alpha^2 + sigma^2 = 1 in the coordinates the library works in, and the schedule's own
    (a_t, s_t) = c_t (alpha_t, sigma_t): a_t + s_t = 1 for flow, a_t^2 + s_t^2 = 1 otherwise."""
    s = SCHEDULES[name]
    t = T[1:-1]
    alpha, sigma = (np_(v) for v in alpha_sigma(s.logsnr(t)))
    np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, atol=1e-6)
    a, b = (np_(v) for v in s.coefficients(t))
    c = np_(s.scale(t))
    np.testing.assert_allclose(a, c * alpha, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b, c * sigma, rtol=1e-4, atol=1e-6)
    if isinstance(s, FlowSchedule):
        np.testing.assert_allclose(a + b, 1.0, atol=1e-6)
        shift = s.shift
        np.testing.assert_allclose(b, shift * t / (1 + (shift - 1) * t), rtol=1e-6)
        assert not s.variance_preserving
    else:
        np.testing.assert_allclose(a ** 2 + b ** 2, 1.0, atol=1e-6)


@pytest.mark.parametrize("name", ["ddpm_linear", "ddpm_scaled"])
def test_ddpm_alpha_bar_at_grid_points_is_the_cumulative_product(name):
    s = SCHEDULES[name]
    if s.beta_schedule == "linear":
        betas = np.linspace(1e-4, 0.02, 1000)
    else:
        betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    alpha_bar = np.cumprod(1.0 - betas)
    t = (np.arange(1, 1001) / 1000.0).astype("float32")
    alpha, _ = alpha_sigma(s.logsnr(t))
    np.testing.assert_allclose(np_(alpha) ** 2, alpha_bar, atol=1e-6)
    # between grid points lambda is linear in t
    mid = (np.arange(1, 1000) + 0.5) / 1000.0
    lam = np.log(alpha_bar) - np.log1p(-alpha_bar)
    np.testing.assert_allclose(np_(s.logsnr(mid.astype("float32"))), (lam[:-1] + lam[1:]) / 2,
                               atol=1e-4)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_ddim_step_with_the_true_x_lands_on_the_forward_process(name):
    """In the schedule's own coordinates: z_t = a_t x + s_t eps, scaled to the variance-
    preserving z_t / c_t, one DDIM step with x_hat = x to s, scaled back by c_s, is exactly
    a_s x + s_s eps (float64 numpy)."""
    s = SCHEDULES[name]
    rng = np.random.default_rng(0)
    x, eps = rng.uniform(-1, 1, (64, 3)), rng.standard_normal((64, 3))
    t = rng.uniform(0.05, 0.95, 64)
    u = t - rng.uniform(0.01, 0.04, 64)
    a_t, s_t = (np_(v)[:, None] for v in s.coefficients(t.astype("float32")))
    a_s, s_s = (np_(v)[:, None] for v in s.coefficients(u.astype("float32")))
    z_native = a_t * x + s_t * eps
    c_t, c_s = np.sqrt(a_t ** 2 + s_t ** 2), np.sqrt(a_s ** 2 + s_s ** 2)
    alpha_t, sigma_t = (np_(v)[:, None] for v in alpha_sigma(s.logsnr(t.astype("float32"))))
    alpha_s, sigma_s = (np_(v)[:, None] for v in alpha_sigma(s.logsnr(u.astype("float32"))))
    z = (z_native / c_t).astype("float32")
    pred = predict("x", x.astype("float32"), z, alpha_t.astype("float32"),
                   sigma_t.astype("float32"))
    z_s = np_(ddim_step(pred, alpha_s.astype("float32"), sigma_s.astype("float32"))) * c_s
    np.testing.assert_allclose(z_s, a_s * x + s_s * eps, atol=2e-4)


def test_flow_ddim_is_the_euler_step():
    """For rectified flow, DDIM from t to s with any prediction is the Euler step of the ODE
    dz/dt = eps_hat - x_hat in the flow's own coordinates (float64 numpy)."""
    s = FlowSchedule()
    rng = np.random.default_rng(1)
    z_native = rng.standard_normal((32, 2))
    x_hat = rng.uniform(-1, 1, (32, 2))
    t, u = np.full(32, 0.7), np.full(32, 0.45)
    a_t, s_t = 1 - t[:, None], t[:, None]
    eps_hat = (z_native - a_t * x_hat) / s_t
    euler = z_native + (u - t)[:, None] * (eps_hat - x_hat)
    c_t = np.sqrt(a_t ** 2 + s_t ** 2)
    c_s = np.sqrt((1 - u[:, None]) ** 2 + u[:, None] ** 2)
    alpha_t, sigma_t = (np_(v)[:, None] for v in alpha_sigma(s.logsnr(t.astype("float32"))))
    alpha_s, sigma_s = (np_(v)[:, None] for v in alpha_sigma(s.logsnr(u.astype("float32"))))
    pred = predict("x", x_hat.astype("float32"), (z_native / c_t).astype("float32"),
                   alpha_t.astype("float32"), sigma_t.astype("float32"))
    ddim = np_(ddim_step(pred, alpha_s.astype("float32"), sigma_s.astype("float32"))) * c_s
    np.testing.assert_allclose(ddim, euler, atol=1e-4)


def test_schedule_is_part_of_the_model_config_and_saved(tmp_path):
    model = DiffusionModel(MLPDenoiser(2, width=8, num_blocks=1), (2,), schedule="flow")
    assert model.schedule == FlowSchedule() and model.logsnr_min == -20.0
    np.testing.assert_allclose(np_(model.logsnr(T)), np_(FlowSchedule().logsnr(T)))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert loaded.schedule == FlowSchedule()
    ddpm = DiffusionModel(MLPDenoiser(2, width=8, num_blocks=1), (2,),
                          schedule={"name": "ddpm", "num_timesteps": 500})
    again = DiffusionModel.from_config(ddpm.get_config())
    assert again.schedule == DDPMSchedule(500) and again.logsnr_min == ddpm.logsnr_min
    # Configs written before schedules were objects hold only the cosine's range.
    old = dict(model.get_config(), logsnr_min=-8.0, logsnr_max=6.0)
    del old["schedule"]
    assert DiffusionModel.from_config(old).schedule == CosineSchedule(-8.0, 6.0)


def test_bad_schedules_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="unknown schedule 'sqrt'"):
        get_schedule("sqrt")
    with pytest.raises(ValueError, match="schedule 'ddpm'.*logsnr_min"):
        get_schedule("ddpm", logsnr_min=-5.0)
    with pytest.raises(ValueError, match="beta_schedule must be one of linear, scaled_linear"):
        DDPMSchedule(beta_schedule="cosine")
    with pytest.raises(ValueError, match="beta_start"):
        DDPMSchedule(beta_start=0.03, beta_end=0.02)
    with pytest.raises(ValueError, match="shift must be positive"):
        FlowSchedule(shift=0.0)
    with pytest.raises(ValueError, match="logsnr_min"):
        CosineSchedule(3.0, 1.0)


@pytest.mark.parametrize("schedule", ["ddpm", "flow"])
def test_teacher_trains_on_a_schedule_kept_in_its_card(schedule, tmp_path):
    from keras_pd import checkpoint as ckpt
    from keras_pd.training import TrainConfig, train

    cfg = TrainConfig(dataset="toy2d", train_steps=10, batch_size=32, warmup_steps=2,
                      checkpoint_every=10, sample_every=0, sampling_steps=4, schedule=schedule)
    train(cfg, str(tmp_path / "t"), verbose=0)
    model, card = ckpt.load_model(str(tmp_path / "t"))
    assert card["schedule"] == get_schedule(schedule).to_config() == model.schedule.to_config()
    assert np.isfinite(model.sample(np.zeros((4, 2), "float32"), 4)).all()
    other = "flow" if schedule == "ddpm" else "ddpm"
    with pytest.raises(ckpt.CheckpointError, match=f"schedule='{schedule}'"):
        train(TrainConfig(**dict(cfg.__dict__, schedule=other, train_steps=20)),
              str(tmp_path / "t"), verbose=0)
    # A card that disagrees with its model is refused on load.
    ckpt.write_card(str(tmp_path / "t"), dict(card, schedule=CosineSchedule().to_config()))
    with pytest.raises(ckpt.CheckpointError, match="card says schedule="):
        ckpt.load_model(str(tmp_path / "t"))


def test_flow_parameterization_recovers_x_and_eps_and_is_the_flows_velocity():
    """u = eps - x gives back x and eps exactly at any noise level (float64 numpy), and in the
    flow's own coordinates u is dz/dt: a finite difference of z_t = (1 - t) x + t eps."""
    rng = np.random.default_rng(3)
    x, eps = rng.uniform(-1, 1, (50, 4)), rng.standard_normal((50, 4))
    lam = rng.uniform(-15, 15, (50, 1))
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    z = alpha * x + sigma * eps
    pred = predict("flow", (eps - x).astype("float32"), z.astype("float32"),
                   alpha.astype("float32"), sigma.astype("float32"))
    np.testing.assert_allclose(np_(pred.x), x, atol=1e-4)
    np.testing.assert_allclose(np_(pred.eps), eps, atol=1e-4)
    t, h = 0.4, 1e-6
    dz = (((1 - t - h) * x + (t + h) * eps) - ((1 - t) * x + t * eps)) / h
    np.testing.assert_allclose(dz, eps - x, atol=1e-6)


def test_flow_teacher_with_flow_parameterization_trains_and_samples(tmp_path):
    from keras_pd import checkpoint as ckpt
    from keras_pd.training import TrainConfig, train

    cfg = TrainConfig(dataset="toy2d", train_steps=10, batch_size=32, warmup_steps=2,
                      checkpoint_every=10, sample_every=0, sampling_steps=4, schedule="flow",
                      parameterization="flow")
    train(cfg, str(tmp_path / "t"), verbose=0)
    model, card = ckpt.load_model(str(tmp_path / "t"))
    assert card["parameterization"] == "flow" and model.schedule == FlowSchedule()
    out = model.sample(np.random.default_rng(0).standard_normal((8, 2)).astype("float32"), 4)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0


@pytest.mark.one_backend("torch")  # card and resume logic; the schedules' math runs per backend above
def test_teacher_on_a_configured_schedule_resumes_and_a_name_equals_its_default(tmp_path):
    """A schedule given as a config (what apps.train passes) is the card's; a run started as
    "cosine" resumes under the default cosine's config, and one with another shift is refused."""
    from keras_pd import checkpoint as ckpt
    from keras_pd.training import TrainConfig, train

    base = dict(dataset="toy2d", batch_size=32, warmup_steps=2, checkpoint_every=10,
                sample_every=0, sampling_steps=4)
    flow = FlowSchedule(shift=3.0).to_config()
    train(TrainConfig(**base, train_steps=10, schedule=flow), str(tmp_path / "f"), verbose=0)
    model, card = ckpt.load_model(str(tmp_path / "f"))
    assert card["schedule"] == flow and model.schedule.shift == 3.0
    with pytest.raises(ckpt.CheckpointError, match="schedule="):
        train(TrainConfig(**base, train_steps=20, schedule=FlowSchedule().to_config()),
              str(tmp_path / "f"), verbose=0)
    train(TrainConfig(**base, train_steps=10), str(tmp_path / "c"), verbose=0)
    train(TrainConfig(**base, train_steps=20, schedule=get_schedule("cosine").to_config()),
          str(tmp_path / "c"), verbose=0)
    assert ckpt.read_card(str(tmp_path / "c"))["steps_trained"] == 20
