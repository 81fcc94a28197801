"""Progressive distillation (Algorithm 2) on every backend."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_pd import checkpoint as ckpt
from keras_pd.diffusion import DiffusionModel
from keras_pd.cascade import DistillConfig, distill, plan
from keras_pd.distillation import DistillationModel, copy_model, distillation_target
from keras_pd.networks import MLPDenoiser
from keras_pd.schedules import logsnr_cosine


def _alpha_sigma(t):
    # Independent of keras_pd: the truncated cosine schedule in float64 numpy.
    b = np.arctan(np.exp(-10.0))
    a = np.arctan(np.exp(10.0)) - b
    lam = -2 * np.log(np.tan(a * t + b))
    return np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))


def _random_teacher(parameterization, seed=0):
    out = 4 if parameterization == "both" else 2
    model = DiffusionModel(MLPDenoiser(out, width=32, num_blocks=2), (2,), parameterization)
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


@pytest.mark.parametrize("parameterization", ["eps", "x", "v", "both"])
def test_one_student_step_on_target_reproduces_two_teacher_steps(parameterization):
    teacher = _random_teacher(parameterization)
    n = 4  # student steps; the teacher takes 8
    rng = np.random.default_rng(1)
    i = np.array([4, 3, 2, 1, 4, 1], "float32")  # t = 1 (start) ... t = 1/N (the last step)
    t = i / n
    z_t = rng.standard_normal((6, 2)).astype("float32")

    def denoise(z, lam):
        return teacher.denoise(z, lam)

    x_tilde, _ = distillation_target(denoise, z_t, ops.convert_to_tensor(t), n,
                                     teacher.logsnr)
    x_tilde = ops.convert_to_numpy(x_tilde).astype(np.float64)

    # The teacher's two DDIM steps, written out here from REFERENCE 4.
    def x_hat(z, tt):
        lam = ops.convert_to_numpy(logsnr_cosine(tt.astype("float32")))
        return ops.convert_to_numpy(teacher.denoise(z.astype("float32"), lam).x).astype(
            np.float64)

    def ddim(z, x, ta, tb):
        (aa, sa), (ab, sb) = _alpha_sigma(ta)[:], _alpha_sigma(tb)[:]
        aa, sa, ab, sb = (v[:, None] for v in (aa, sa, ab, sb))
        return ab * x + sb * (z - aa * x) / sa

    t1, t2 = t - 0.5 / n, t - 1.0 / n
    z1 = ddim(z_t, x_hat(z_t, t), t, t1)
    z2 = ddim(z1, x_hat(z1, t1), t1, t2)
    last = i == 1
    # The student's single step from t to t'' with x_hat = x_tilde lands on the teacher's z_t''.
    student_z2 = ddim(z_t, x_tilde, t, t2)
    np.testing.assert_allclose(student_z2[~last], z2[~last], atol=2e-4, rtol=1e-4)
    # Last step: both samplers return x_hat, so the target is the teacher's x_hat at t'.
    np.testing.assert_allclose(x_tilde[last], x_hat(z1, t1)[last], atol=1e-4)


def test_last_step_target_ignores_a_nan_in_the_unused_branch():
    """At the last step (t'' = 0) the target is the teacher's x_hat at t' (a select): a
    non-finite second DDIM step, which that branch does not use, must not reach it."""
    from keras_pd.parameterization import Prediction

    n = 4
    t = ops.convert_to_tensor(np.float32([1 / n, 1 / n]))
    z_t = np.random.default_rng(3).standard_normal((2, 2)).astype("float32")
    lam_t, lam_prime = ops.convert_to_numpy(logsnr_cosine(np.float32([1 / n, 0.5 / n])))

    def denoise(z, lam):  # x_hat = z / 2; eps = 0 at t, NaN at t' (so z_t'' is NaN)
        x = ops.convert_to_tensor(z) * 0.5
        bad = ops.reshape(ops.greater(lam, 0.5 * (lam_t + lam_prime)), (-1, 1))
        eps = ops.where(bad, ops.full_like(x, np.nan), ops.zeros_like(x))
        return Prediction(x, eps, x)

    x_tilde, z_dprime = distillation_target(denoise, z_t, t, n, logsnr_cosine)
    x_tilde, z_dprime = ops.convert_to_numpy(x_tilde), ops.convert_to_numpy(z_dprime)
    # z_t' = alpha_t' x_hat(z_t) = alpha_t' z_t / 2, and the target x_hat(z_t') = z_t' / 2.
    alpha_prime = _alpha_sigma(np.float64(0.5 / n))[0]
    np.testing.assert_allclose(x_tilde, 0.25 * alpha_prime * z_t, rtol=1e-5)
    np.testing.assert_allclose(z_dprime, x_tilde)


def test_one_recipe_for_app_pipeline_and_library():
    """apps.distill, apps.pipeline and DistillConfig run the paper's recipe: the rounds to 2
    and 1 step get twice the updates (REFERENCE 5: 100k vs 50k)."""
    from keras_pd.cascade import round_updates
    from keras_pd.pipeline import PipelineConfig

    cfg = DistillConfig(updates_per_round=50)
    assert [round_updates(cfg, s) for s in (8, 4, 2, 1)] == [50, 50, 100, 100]
    assert PipelineConfig().final_rounds_factor == cfg.final_rounds_factor
    from apps import distill as distill_app

    assert distill_app.FLAGS["final_rounds_factor"].default == cfg.final_rounds_factor


@pytest.mark.backend_free
def test_plan_and_bad_steps():
    assert plan(DistillConfig(end_steps=1), {"sampling_steps": 16}) == (16, [8, 4, 2, 1])
    assert plan(DistillConfig(), {"sampling_steps": 16}) == (16, [8])
    with pytest.raises(ValueError, match="teacher_steps must be a power of two"):
        plan(DistillConfig(), {"sampling_steps": 12})
    with pytest.raises(ValueError, match="end_steps"):
        plan(DistillConfig(end_steps=16), {"sampling_steps": 16})
    with pytest.raises(ValueError, match="end_steps must be a power of two"):
        plan(DistillConfig(end_steps=3), {"sampling_steps": 16})


@pytest.mark.slow
def test_round_lowers_loss_and_leaves_teacher_unchanged(toy_teacher_dir):
    teacher, _ = ckpt.load_model(toy_teacher_dir)
    before = [w.copy() for w in teacher.get_weights()]
    student = copy_model(teacher, dropout=0.0)
    # A 4-step teacher distilled to 2 steps: two of its steps differ clearly from one.
    model = DistillationModel(teacher, student, 2, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-4, global_clipnorm=1.0))
    from keras_pd.data import load_dataset

    x = load_dataset("toy2d").x[:4096]
    # Fixed draws for a fair before/after comparison: evaluate on the same seed state.
    state = ckpt.seed_states(model)
    loss0 = model.evaluate(x, batch_size=512, verbose=0)
    model.fit(x, batch_size=256, epochs=3, verbose=0)
    ckpt.restore_seed_states(model, state)
    loss1 = model.evaluate(x, batch_size=512, verbose=0)
    assert loss1 < 0.8 * loss0
    for w0, w1 in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    assert len(model.trainable_variables) == len(student.trainable_variables)


def test_frozen_teacher_stays_frozen_after_save_and_reload(tmp_path):
    teacher = _random_teacher("x")
    model = DistillationModel(teacher, copy_model(teacher), 4)
    path = os.path.join(tmp_path, "d.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert not loaded.teacher.trainable
    assert len(loaded.trainable_variables) == len(loaded.student.trainable_variables)
    loaded.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [w.copy() for w in loaded.teacher.get_weights()]
    loaded.fit(np.random.default_rng(0).uniform(-1, 1, (256, 2)).astype("float32"),
               batch_size=64, epochs=1, verbose=0)
    for w0, w1 in zip(before, loaded.teacher.get_weights()):
        np.testing.assert_array_equal(w0, w1)


@pytest.mark.slow
@pytest.mark.one_backend("jax")  # eager rounds on PyTorch took 283 s of the suite
def test_cascade_to_four_steps_tracks_the_teacher(toy_teacher_dir, tmp_path, no_sample_grids):
    """64 -> 4 steps on toy2d (the teacher's 64-step DDIM as the first round's teacher): the
    student's 4-step samples land near the teacher's 64-step samples from the same noise, at
    most a third as far as the teacher's own 4-step DDIM."""
    cfg = DistillConfig(teacher_steps=64, end_steps=4, updates_per_round=200,
                        checkpoint_every=200, learning_rate=1e-3, batch_size=256,
                        teacher_samples=2048)
    done = distill(toy_teacher_dir, str(tmp_path), cfg, verbose=0)
    assert [s for s, _ in done] == [32, 16, 8, 4]
    teacher, _ = ckpt.load_model(toy_teacher_dir)
    student, card = ckpt.load_model(done[-1][1])
    assert card["sampling_steps"] == 4 and card["complete"] and card["kind"] == "student"
    noise = np.random.default_rng(5).standard_normal((1000, 2)).astype("float32")
    ref = teacher.sample(noise, 64)
    d_teacher = np.linalg.norm(teacher.sample(noise, 4) - ref, axis=1).mean()
    d_student = np.linalg.norm(student.sample(noise, 4) - ref, axis=1).mean()
    assert d_student <= d_teacher / 3, (d_student, d_teacher)
    # Rerunning the finished cascade does no work and returns the same students.
    assert distill(toy_teacher_dir, str(tmp_path), cfg, verbose=0) == done


@pytest.mark.parametrize("n", [1, 4, 8])
def test_student_time_grid_is_every_i_over_n_with_t_equal_to_one(n):
    """The times a round trains its student at are exactly {i / N : i = 1..N} (REFERENCE 5:
    i ~ U{1..N}): t = 1, where sampling starts, included and t = 0 never; seen through the
    log-SNRs the student is called with over many rows, each grid time drawn about equally."""
    teacher = _random_teacher("x")
    student = copy_model(teacher)
    model = DistillationModel(teacher, student, n, seed=0)
    seen = []
    denoise = student.denoise

    def spy(z, logsnr, *args, **kwargs):
        seen.append(ops.convert_to_numpy(logsnr).astype(np.float64))
        return denoise(z, logsnr, *args, **kwargs)

    student.denoise = spy
    rows = 768  # one shape for every N: JAX compiles its eager ops once
    x = np.random.default_rng(0).uniform(-1, 1, (rows, 2)).astype("float32")
    assert np.isfinite(float(ops.convert_to_numpy(model.compute_loss(x, training=False))))
    lam = np.concatenate(seen)
    assert lam.shape == (rows,)
    b = np.arctan(np.exp(-10.0))
    grid = -2 * np.log(np.tan((np.arctan(np.exp(10.0)) - b) * np.arange(n + 1) / n + b))
    nearest = np.argmin(np.abs(lam[:, None] - grid[None, :]), axis=1)  # index i of t = i / N
    # float32 lambda at t = 1 (tan near pi / 2) is off by up to ~1e-2; for N <= 8 the grid's
    # log-SNRs are >= 0.8 apart.
    np.testing.assert_allclose(lam, grid[nearest], atol=2e-2)
    counts = np.bincount(nearest, minlength=n + 1)
    assert counts[0] == 0  # never t = 0
    assert set(np.flatnonzero(counts)) == set(range(1, n + 1))  # every i, t = 1 included
    assert counts[1:].min() > 0.5 * rows / n  # about uniform


def _native_coefficients(schedule, lam):
    """(a, s) of the schedule's own coordinates from lambda, float64: z = a x + s eps with
    a / s = exp(lambda / 2), and a^2 + s^2 = 1 (variance preserving) or a + s = 1 (flow)."""
    r = np.exp(0.5 * lam)  # a / s
    if schedule == "flow":
        s = 1.0 / (1.0 + r)
        return 1.0 - s, s
    s = 1.0 / np.sqrt(1.0 + r * r)
    return r * s, s


@pytest.mark.parametrize("schedule", ["ddpm", "flow"])
@pytest.mark.parametrize("parameterization", ["eps", "x", "v", "both", "flow"])
def test_target_is_exact_in_the_schedules_own_coordinates(schedule, parameterization):
    """Algorithm 2's target, computed in the variance-preserving coordinates of the schedule's
    lambda, is exact in the schedule's own coordinates (DDPM; rectified flow, where DDIM is the
    Euler step): one student DDIM step there with x_hat = x_tilde lands on the teacher's two
    (float64 numpy, REFERENCE 4 written in the schedule's coordinates)."""
    out = 4 if parameterization == "both" else 2
    teacher = DiffusionModel(MLPDenoiser(out, width=32, num_blocks=2), (2,), parameterization,
                             schedule=schedule)
    rng = np.random.default_rng(0)
    teacher.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype)
                         for w in teacher.get_weights()])
    n = 4
    i = np.array([4, 3, 2, 4, 3, 2], "float32")
    t = i / n
    lam = lambda tt: ops.convert_to_numpy(teacher.logsnr(tt.astype("float32"))).astype(  # noqa: E731
        np.float64)
    z_native = rng.standard_normal((6, 2))
    a_t, s_t = (v[:, None] for v in _native_coefficients(schedule, lam(t)))
    c_t = np.sqrt(a_t ** 2 + s_t ** 2)
    x_tilde, _ = distillation_target(lambda z, l: teacher.denoise(z, l),
                                     ops.convert_to_tensor((z_native / c_t).astype("float32")),
                                     ops.convert_to_tensor(t), n, teacher.logsnr)
    x_tilde = ops.convert_to_numpy(x_tilde).astype(np.float64)

    def x_hat(z, tt):  # the teacher at a native z: fed its variance-preserving version
        a, s = (v[:, None] for v in _native_coefficients(schedule, lam(tt)))
        vp = (z / np.sqrt(a ** 2 + s ** 2)).astype("float32")
        return ops.convert_to_numpy(teacher.denoise(vp, lam(tt).astype("float32")).x).astype(
            np.float64)

    def ddim(z, x, ta, tb):  # z_b = a_b x + s_b (z_a - a_a x) / s_a, the schedule's coordinates
        (aa, sa), (ab, sb) = _native_coefficients(schedule, lam(ta)), \
            _native_coefficients(schedule, lam(tb))
        aa, sa, ab, sb = (v[:, None] for v in (aa, sa, ab, sb))
        return ab * x + sb * (z - aa * x) / sa

    t1, t2 = t - 0.5 / n, t - 1.0 / n
    z1 = ddim(z_native, x_hat(z_native, t), t, t1)
    z2 = ddim(z1, x_hat(z1, t1), t1, t2)
    np.testing.assert_allclose(ddim(z_native, x_tilde, t, t2), z2, atol=3e-4, rtol=1e-4)


def _denoiser_gap(teacher, student, x, seed=3):
    """Mean squared gap between the two models' x_hat over t ~ U[0, 1] on data x."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 1.0, len(x)).astype("float32")
    eps = rng.standard_normal(x.shape).astype("float32")
    z, lam = teacher.forward_process(ops.convert_to_tensor(x), ops.convert_to_tensor(t),
                                     ops.convert_to_tensor(eps))
    a = ops.convert_to_numpy(teacher.denoise(z, lam).x)
    b = ops.convert_to_numpy(student.denoise(z, lam).x)
    return float(np.mean((a - b) ** 2))


def _gaps_before_and_after_learning(teacher, student, peak_rate, epochs):
    """The student's gap to the teacher's x_hat on 4,096 toy2d points, before and after
    `epochs` of denoiser distillation (16 updates an epoch, the rate decayed to 0)."""
    from keras_pd.data import load_dataset
    from keras_pd.denoiser_distillation import DenoiserDistillationModel

    x = load_dataset("toy2d").x[:4096]
    gap0 = _denoiser_gap(teacher, student, x)
    model = DenoiserDistillationModel(teacher, student, seed=0)
    rate = keras.optimizers.schedules.PolynomialDecay(peak_rate, 16 * epochs, 0.0)
    model.compile(optimizer=keras.optimizers.Adam(rate, global_clipnorm=1.0))
    model.fit(x, batch_size=256, epochs=epochs, verbose=0)
    return gap0, _denoiser_gap(teacher, student, x)


@pytest.mark.slow
def test_a_v_student_of_an_x_teacher_learns_its_denoiser(toy_teacher_dir):
    """The teacher's weights read as v are another function; denoiser distillation closes the
    gap to the teacher's x_hat, and leaves the teacher unchanged."""
    from keras_pd.denoiser_distillation import converted_student

    teacher, _ = ckpt.load_model(toy_teacher_dir)
    before = [w.copy() for w in teacher.get_weights()]
    student = converted_student(teacher, "v")
    assert student.parameterization == "v"
    for w0, w1 in zip(teacher.get_weights(), student.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    gap0, gap1 = _gaps_before_and_after_learning(teacher, student, 1e-3, 16)  # 256 updates
    assert gap1 < 0.2 * gap0, (gap0, gap1)
    for w0, w1 in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(w0, w1)


@pytest.mark.backend_free
def test_a_parameterization_change_that_cannot_be_made_is_refused():
    from keras_pd.denoiser_distillation import converted_student

    teacher = _random_teacher("eps")
    with pytest.raises(ValueError, match="student_parameterization 'eps' is the teacher's"):
        converted_student(teacher, "eps")
    with pytest.raises(ValueError, match="student_parameterization 'both' needs 4 output"):
        converted_student(teacher, "both")
    card = {"sampling_steps": 8, "parameterization": "eps"}
    with pytest.raises(ValueError, match="student_parameterization: unknown parameterization"):
        plan(DistillConfig(student_parameterization="velocity"), card)
    with pytest.raises(ValueError, match="student_parameterization 'both' needs another"):
        plan(DistillConfig(student_parameterization="both"), card)
    with pytest.raises(ValueError, match="initial_updates must be a positive"):
        plan(DistillConfig(student_parameterization="v", initial_updates=0), card)
    with pytest.raises(ValueError, match="initial_learning_rate must be positive"):
        plan(DistillConfig(student_parameterization="v", initial_learning_rate=0.0), card)
    assert plan(DistillConfig(student_parameterization="eps"), card) == (8, [4])


@pytest.mark.one_backend("torch")  # the initial round's step is checked per backend by the v-student test
@pytest.mark.slow
def test_a_smaller_student_learns_the_teachers_denoiser_from_its_own_initialisation(
        toy_teacher_dir):
    """student_preset: another (here narrower) network, freshly initialised, not the teacher's
    weights; denoiser distillation brings its x_hat to the teacher's."""
    from keras_pd.denoiser_distillation import converted_student
    from keras_pd.networks.presets import PRESETS, make_network

    PRESETS["toy2d_narrow"] = dict(PRESETS["toy2d"], width=48)
    try:
        teacher, _ = ckpt.load_model(toy_teacher_dir)
        student = converted_student(teacher, preset="toy2d_narrow", seed=0)
        expected = make_network("toy2d_narrow", (2,), 2).count_params()
        assert student.count_params() == expected < teacher.count_params() / 3
        assert student.parameterization == teacher.parameterization
        assert student.schedule.to_config() == teacher.schedule.to_config()
        gap0, gap1 = _gaps_before_and_after_learning(teacher, student, 3e-3, 24)  # 384
        assert gap1 < 0.2 * gap0, (gap0, gap1)
        with pytest.raises(ValueError, match="student_preset 'nope'"):
            converted_student(teacher, preset="nope")
        with pytest.raises(ValueError, match="student_preset: Unknown network preset 'nope'"):
            plan(DistillConfig(student_preset="nope"),
                 {"sampling_steps": 8, "parameterization": "x"})
    finally:
        PRESETS.pop("toy2d_narrow")


@pytest.mark.slow
@pytest.mark.one_backend("jax")
def test_cascade_with_another_parameterization_starts_from_the_initial_student(
        toy_teacher_dir, tmp_path):
    """student_parameterization=v: an initial round, then rounds whose students predict v,
    the first initialized from the initial student, every target from the original teacher."""
    cfg = DistillConfig(teacher_steps=8, end_steps=2, updates_per_round=40, initial_updates=60,
                        checkpoint_every=40, batch_size=256, teacher_samples=2048,
                        student_parameterization="v")
    done = distill(toy_teacher_dir, str(tmp_path), cfg, verbose=0)
    assert [s for s, _ in done] == [4, 2]
    initial = ckpt.read_card(os.path.join(tmp_path, "initial_student"))
    assert initial["kind"] == "initial_student" and initial["parameterization"] == "v"
    assert initial["updates"] == 60 and initial["sampling_steps"] == 8
    first, second = (ckpt.read_card(d) for _, d in done)
    assert first["teacher"] == os.path.abspath(toy_teacher_dir)
    assert first["initialized_from"] == os.path.abspath(os.path.join(tmp_path, "initial_student"))
    assert second["teacher"] == os.path.abspath(done[0][1]) and "initialized_from" not in second
    student, card = ckpt.load_model(done[-1][1])
    assert student.parameterization == card["parameterization"] == "v"
    assert card["parameters"] == student.count_params() == card["teacher_parameters"]
    assert card["preset"] == card["teacher_preset"] == ckpt.read_card(toy_teacher_dir)["preset"]
    assert distill(toy_teacher_dir, str(tmp_path), cfg, verbose=0) == done  # resumes: no work
