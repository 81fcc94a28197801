"""Classifier-free guidance and guided distillation (keras_pd.guidance, distillation stage one
and two), on every backend."""

import keras
import numpy as np
import pytest

from keras_pd import guidance
from keras_pd.diffusion import DiffusionModel
from keras_pd.distillation import DistillationModel
from keras_pd.guided_distillation import GuidanceDistillationModel, guided_student
from keras_pd.networks import MLPDenoiser
from keras_pd.networks.layers import class_one_hot
from keras_pd.parameterization import Prediction

SHAPE = (4,)
K = 3


def _model(label_dropout=0.2, seed=0, perturb=0.3):
    net = MLPDenoiser(out_dim=4, width=32, num_blocks=1, emb_dim=16, num_classes=K)
    model = DiffusionModel(net, SHAPE, parameterization="x", num_classes=K, seed=seed,
                           label_dropout=label_dropout)
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:  # the output layer starts at zero: make it non-trivial
        value = keras.ops.convert_to_numpy(v)
        v.assign(value + perturb * rng.standard_normal(value.shape).astype("float32"))
    return model


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_null_label_one_hot_is_zero():
    got = _np(class_one_hot(np.array([0, 2, 3, 1], "int32"), K))
    np.testing.assert_array_equal(got, [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]])


def test_guided_prediction_matches_hand_computation():
    rng = np.random.default_rng(0)
    xc, xu, ec, eu = (rng.standard_normal((2, 4)).astype("float32") for _ in range(4))
    z = rng.standard_normal((2, 4)).astype("float32")
    alpha, sigma = np.float32([[0.6], [0.8]]), np.float32([[0.8], [0.6]])
    w = np.float32([0.5, 2.0])
    cond, uncond = Prediction(xc, ec, None), Prediction(xu, eu, None)
    got = guidance.guided_prediction(cond, uncond, w, z, alpha, sigma)
    want_x = np.stack([1.5 * xc[0] - 0.5 * xu[0], 3.0 * xc[1] - 2.0 * xu[1]])
    want_eps = np.stack([1.5 * ec[0] - 0.5 * eu[0], 3.0 * ec[1] - 2.0 * eu[1]])
    np.testing.assert_allclose(_np(got.x), want_x, rtol=1e-6)
    np.testing.assert_allclose(_np(got.eps), want_eps, rtol=1e-6)
    np.testing.assert_allclose(_np(got.v), alpha * want_eps - sigma * want_x, rtol=1e-5,
                               atol=1e-6)
    clipped = guidance.guided_prediction(cond, uncond, w, z, alpha, sigma, clip=True)
    x_clip = np.clip(want_x, -1, 1)
    np.testing.assert_allclose(_np(clipped.x), x_clip, rtol=1e-6)
    np.testing.assert_allclose(_np(clipped.eps), (z - alpha * x_clip) / sigma, rtol=1e-5)


def test_model_guidance_combines_conditional_and_null_predictions():
    model = _model()
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3,) + SHAPE).astype("float32")
    lam = np.float32([-2.0, 0.0, 3.0])
    labels = np.int32([0, 1, 2])
    cond = model.denoise(z, lam, labels)
    uncond = model.denoise(z, lam, np.full(3, K, "int32"))
    assert np.abs(_np(cond.x) - _np(uncond.x)).max() > 1e-3  # the label matters
    w = np.float32([0.0, 1.0, 3.0])
    got = model.denoise(z, lam, labels, guidance=w)
    want = (1 + w[:, None]) * _np(cond.x) - w[:, None] * _np(uncond.x)
    np.testing.assert_allclose(_np(got.x), want, rtol=1e-4, atol=1e-5)
    # w = 0 is exactly the conditional model, in sampling too.
    np.testing.assert_allclose(_np(got.x)[0], _np(cond.x)[0], rtol=1e-6, atol=1e-6)
    noise = rng.standard_normal((3,) + SHAPE).astype("float32")
    np.testing.assert_allclose(model.sample(noise, 4, labels=labels, guidance=0.0),
                               model.sample(noise, 4, labels=labels), rtol=1e-5, atol=1e-6)
    assert np.abs(model.sample(noise, 4, labels=labels, guidance=2.0)
                  - model.sample(noise, 4, labels=labels)).max() > 1e-3


def test_guidance_needs_a_guidable_model():
    model = _model(label_dropout=0.0)
    with pytest.raises(ValueError, match="label_dropout"):
        model.sample(np.zeros((1,) + SHAPE, "float32"), 2, labels=[0], guidance=1.0)
    with pytest.raises(ValueError, match="class-conditional"):
        DiffusionModel(MLPDenoiser(out_dim=4, width=8, num_blocks=1, emb_dim=8), SHAPE,
                       label_dropout=0.1)


def test_label_dropout_trains_the_null_label():
    model = _model(label_dropout=0.5, perturb=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = np.random.default_rng(0).uniform(-1, 1, (64,) + SHAPE).astype("float32")
    y = np.zeros(64, "int32")
    null_before = _np(model.network.class_emb.bias).copy()
    model.fit(x, y, batch_size=64, epochs=3, verbose=0, shuffle=False)
    # Only null-label examples train the class embedding's bias alone; class 0's row moves too.
    assert np.abs(_np(model.network.class_emb.bias) - null_before).max() > 1e-4
    assert model.get_config()["label_dropout"] == 0.5
    again = DiffusionModel.from_config(model.get_config())
    assert again.label_dropout == 0.5 and again.guidable


def test_guided_student_starts_as_the_conditional_teacher():
    teacher = _model()
    student = guided_student(teacher)
    assert student.takes_guidance and not teacher.takes_guidance
    assert len(student.network.weights) == len(teacher.network.weights) + 4
    rng = np.random.default_rng(2)
    z = rng.standard_normal((3,) + SHAPE).astype("float32")
    lam = np.float32([-1.0, 0.5, 2.0])
    labels = np.int32([2, 0, 1])
    cond = _np(teacher.denoise(z, lam, labels).x)
    for w in (0.0, 3.0):
        got = _np(student.denoise(z, lam, labels, guidance=np.full(3, w, "float32")).x)
        np.testing.assert_allclose(got, cond, rtol=1e-5, atol=1e-6)
    restored = DiffusionModel.from_config(student.get_config())
    assert restored.takes_guidance


def _stage_one_loss(model, x, y):
    return float(_np(model.compute_loss(x, y, training=False)))


@pytest.mark.slow
def test_stage_one_lowers_its_loss_and_learns_the_guided_teacher():
    keras.utils.set_random_seed(3)  # weight init independent of the tests run before
    teacher = _model(seed=3)
    student = guided_student(teacher)
    # x-space MSE: an untrained teacher's targets make SNR weights too noisy for a short test.
    model = GuidanceDistillationModel(teacher, student, (0.0, 4.0), "constant", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (512,) + SHAPE).astype("float32")
    y = rng.integers(0, K, 512).astype("int32")
    fresh = GuidanceDistillationModel(teacher, student, (0.0, 4.0), "constant", seed=7)
    before = np.mean([_stage_one_loss(fresh, x[i:i + 128], y[i:i + 128]) for i in (0, 128)])
    model.fit(x, y, batch_size=128, epochs=60, verbose=0)
    fresh = GuidanceDistillationModel(teacher, student, (0.0, 4.0), "constant", seed=7)
    after = np.mean([_stage_one_loss(fresh, x[i:i + 128], y[i:i + 128]) for i in (0, 128)])
    print(f"\nstage one loss {before:.4f} -> {after:.4f}")
    assert after < 0.6 * before
    # One call of the student now tracks the two-call guided teacher at w = 2.
    z = rng.standard_normal((64,) + SHAPE).astype("float32")
    lam = np.full(64, 1.0, "float32")
    w = np.full(64, 2.0, "float32")
    want = _np(teacher.denoise(z, lam, y[:64], guidance=w).x)
    cond = _np(teacher.denoise(z, lam, y[:64]).x)
    got = _np(student.denoise(z, lam, y[:64], guidance=w).x)
    assert np.mean((got - want) ** 2) < 0.5 * np.mean((cond - want) ** 2)


def test_stage_two_passes_w_to_teacher_and_student():
    teacher = guided_student(_model(seed=4))
    student = guided_student(_model(seed=4))
    with pytest.raises(ValueError, match="guidance_range"):
        DistillationModel(teacher, student, 2)
    with pytest.raises(ValueError, match="both take guidance"):
        DistillationModel(_model(seed=4), student, 2, guidance_range=(0, 1))
    # Zero-initialised w embeddings would make w invisible: give teacher and student their own.
    for net, seed in ((teacher.network, 10), (student.network, 11)):
        r = np.random.default_rng(seed)
        for v in net.guidance_emb.weights:
            value = _np(v)
            v.assign(value + 0.5 * r.standard_normal(value.shape).astype("float32"))
    n, rows = 2, 64
    model = DistillationModel(teacher, student, n, guidance_range=(1.0, 3.0), seed=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (rows,) + SHAPE).astype("float32")
    y = rng.integers(0, K, rows).astype("int32")
    calls = {"teacher": [], "student": []}
    denoise = {"teacher": teacher.denoise, "student": student.denoise}

    def spy(name):
        def record(z, logsnr, *args, **kwargs):
            w = kwargs.get("guidance")
            calls[name].append((_np(z), _np(logsnr), None if w is None else _np(w)))
            return denoise[name](z, logsnr, *args, **kwargs)
        return record

    teacher.denoise, student.denoise = spy("teacher"), spy("student")
    loss = float(_np(model.compute_loss(x, y, training=False)))
    # One student call at (z_t, t) and two teacher calls (at t and t'), all with the same
    # per-example w ~ U[1, 3].
    assert len(calls["student"]) == 1 and len(calls["teacher"]) == 2
    z_t, lam_t, w = calls["student"][0]
    assert w is not None and w.shape == (rows,)
    assert np.all((w >= 1.0) & (w <= 3.0)) and w.std() > 0.3
    for _, _, w_teacher in calls["teacher"]:
        np.testing.assert_array_equal(w_teacher, w)

    # The loss by hand (REFERENCE 5): the teacher's two DDIM steps t -> t' -> t'' in float64,
    # Algorithm 2's target (the teacher's x_hat at t' at the last step), truncated-SNR weight.
    b = np.arctan(np.exp(-10.0))
    a = np.arctan(np.exp(10.0)) - b

    def lam_of(t):
        return -2 * np.log(np.tan(a * t + b))

    def alpha_sigma(t):
        lam = lam_of(t)[:, None]
        return np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))

    grid = np.arange(1, n + 1) / n
    t = grid[np.argmin(np.abs(lam_t[:, None] - lam_of(grid)[None]), axis=1)]
    t1, t2 = t - 0.5 / n, t - 1.0 / n
    (a_t, s_t), (a_1, s_1), (a_2, s_2) = alpha_sigma(t), alpha_sigma(t1), alpha_sigma(t2)
    z = z_t.astype(np.float64)

    def x_hat(name, z_in, lam, guidance):
        pred = denoise[name](z_in.astype("float32"), lam.astype("float32"), y,
                             guidance=guidance.astype("float32"))
        return _np(pred.x).astype(np.float64)

    def hand_loss(w_teacher, w_student):
        x_0 = x_hat("teacher", z, lam_t, w_teacher)
        z_1 = a_1 * x_0 + s_1 * (z - a_t * x_0) / s_t
        x_1 = x_hat("teacher", z_1, lam_of(t1), w_teacher)
        z_2 = a_2 * x_1 + s_2 * (z_1 - a_1 * x_1) / s_1
        ratio = s_2 / s_t
        target = np.where(t2[:, None] <= 0, x_1, (z_2 - ratio * z) / (a_2 - ratio * a_t))
        weight = np.maximum(np.exp(lam_t.astype(np.float64)), 1.0)
        return float(np.mean(weight * np.mean((target - x_hat("student", z, lam_t, w_student))
                                              ** 2, axis=1)))

    assert set(t) == {0.5, 1.0}  # both branches of the target are on the path
    want = hand_loss(w, w)
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    # w matters through each: the same loss with w = 0 in the teacher or in the student differs
    # by far more than the 1e-4 to which the loss matches the hand computation.
    for other in (hand_loss(0 * w, w), hand_loss(w, 0 * w)):
        assert abs(other - want) > 1e-3 * want
    again = DistillationModel.from_config(model.get_config())
    assert again.guidance_range == (1.0, 3.0)


def test_saved_stage_one_model_loads_by_name(tmp_path):
    """GuidanceDistillationModel is registered: keras.saving.load_model restores it whole."""
    teacher = _model(seed=5)
    model = GuidanceDistillationModel(teacher, guided_student(teacher), (0.5, 2.0), seed=3)
    path = str(tmp_path / "stage_one.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert type(loaded) is GuidanceDistillationModel
    assert loaded.guidance_range == (0.5, 2.0) and loaded.student.takes_guidance
    assert not loaded.teacher.trainable
    rng = np.random.default_rng(6)
    z = rng.standard_normal((4,) + SHAPE).astype("float32")
    lam, labels, w = np.float32([-2, 0, 1, 3]), np.int32([0, 1, 2, 3]), np.float32([0, 1, 2, 3])
    for a, b in ((model.student, loaded.student), (model.teacher, loaded.teacher)):
        np.testing.assert_allclose(_np(b.denoise(z, lam, labels, guidance=w).x),
                                   _np(a.denoise(z, lam, labels, guidance=w).x), rtol=1e-6)


def test_plain_student_of_a_label_dropout_teacher_refuses_guidance():
    """A plain round distils the conditional prediction only: guidance on its student would
    mix it with an undistilled null-label prediction, so the student refuses it."""
    from keras_pd.distillation import distilled_student

    teacher = _model(label_dropout=0.2, seed=6)
    assert teacher.guidable
    student = distilled_student(teacher)
    assert not student.guidable and student.label_dropout == 0.0
    noise = np.random.default_rng(7).standard_normal((3,) + SHAPE).astype("float32")
    labels = np.int32([0, 1, 2])
    with pytest.raises(ValueError, match="--guided"):
        student.sample(noise, 2, labels=labels, guidance=1.0)
    with pytest.raises(ValueError, match="--guided"):
        student.denoise(noise, np.zeros(3, "float32"), labels, guidance=np.ones(3, "float32"))
    # Unguided, it is the teacher's copy (same weights, same conditional predictions).
    np.testing.assert_allclose(student.sample(noise, 2, labels=labels),
                               teacher.sample(noise, 2, labels=labels), rtol=1e-5, atol=1e-6)


@pytest.mark.backend_free
def test_guidance_range_is_checked():
    with pytest.raises(ValueError, match="guidance range"):
        guidance.check_guidance_range(2.0, 1.0)
    with pytest.raises(ValueError, match="guidance range"):
        guidance.check_guidance_range(-1.0, 1.0)


@pytest.mark.slow
@pytest.mark.one_backend("jax")
def test_guided_students_follow_the_requested_label_on_toy2d(tmp_path):
    """A small run end to end: a class-conditional toy2d teacher with label dropout, guided
    distillation 8 -> w-input student -> 4 steps; the 4-step student's samples land on the
    requested mode (8 modes: chance is 1/8), and w = 0 reproduces the conditional model."""
    from keras_pd import checkpoint as ckpt
    from keras_pd.data import toy2d_centres
    from keras_pd.cascade import DistillConfig, distill
    from keras_pd.training import TrainConfig, train

    teacher_dir = str(tmp_path / "teacher")
    train(TrainConfig(dataset="toy2d", class_conditional=True, label_dropout=0.1,
                      train_steps=800, warmup_steps=50, batch_size=256, sampling_steps=8,
                      checkpoint_every=400, sample_every=10**6), teacher_dir, verbose=0)
    cfg = DistillConfig(end_steps=4, updates_per_round=150, guided=True, guided_updates=150,
                        guidance_max=4.0, batch_size=256, learning_rate=1e-3,
                        checkpoint_every=150)
    done = distill(teacher_dir, str(tmp_path), cfg, verbose=0)
    assert [steps for steps, _ in done] == [4]
    assert ckpt.read_card(str(tmp_path / "guided_0008"))["kind"] == "guided_student"
    student, card = ckpt.load_model(done[0][1])
    assert student.takes_guidance and card["guidance_range"] == [0.0, 4.0]
    labels = np.arange(400) % 8
    noise = np.random.default_rng(0).standard_normal((400, 2)).astype("float32")
    samples = student.sample(noise, 4, labels=labels, guidance=2.0)
    nearest = np.argmin(((samples[:, None] - toy2d_centres()[None]) ** 2).sum(-1), axis=1)
    accuracy = float(np.mean(nearest == labels))
    print(f"\n4-step guided student (w = 2): {accuracy:.3f} of samples on the requested mode")
    assert accuracy > 0.6
