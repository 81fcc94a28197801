"""The diffusion model on every backend: a teacher that learns, samplers, saving, bad input."""

import os

import keras
import numpy as np
import pytest

from conftest import TOY_TEACHER_STEPS
from keras_pd import checkpoint as ckpt
from keras_pd.data import toy2d_log_likelihood, toy2d_mode_coverage
from keras_pd.diffusion import DiffusionModel
from keras_pd.networks import MLPDenoiser, make_network

HERE = os.path.dirname(__file__)


@pytest.mark.slow
def test_toy2d_teacher_samples_the_mixture(toy_teacher_dir):
    teacher, card = ckpt.load_model(toy_teacher_dir)
    assert card["steps_trained"] == TOY_TEACHER_STEPS and card["parameterization"] == "x"
    noise = np.random.default_rng(0).standard_normal((2000, 2)).astype("float32")
    samples = teacher.sample(noise, 64)
    ll_samples = toy2d_log_likelihood(samples).mean()
    ll_noise = toy2d_log_likelihood(noise).mean()
    # The true mixture's own mean log-density is about -1.1; N(0, I) noise scores about -52.
    assert ll_samples > -4.0 and ll_noise < -40.0
    coverage, counts = toy2d_mode_coverage(samples)
    assert coverage == 1.0
    # Equal weights: every mode gets a fair share (1/8 = 250 of 2000).
    assert counts.min() > 120


@pytest.mark.slow
def test_ancestral_sampler_also_samples_the_mixture(toy_teacher_dir):
    teacher, _ = ckpt.load_model(toy_teacher_dir)
    noise = np.random.default_rng(1).standard_normal((1000, 2)).astype("float32")
    a = teacher.sample(noise, 128, sampler="ancestral", gamma=0.3, seed=1)
    b = teacher.sample(noise, 128, sampler="ancestral", gamma=0.3, seed=2)
    assert toy2d_log_likelihood(a).mean() > -4.0
    assert toy2d_mode_coverage(a)[0] == 1.0
    assert np.abs(a - b).max() > 0.1  # the seed drives the step noise


def test_fit_draws_fresh_noise_each_step():
    # If the SeedGenerator did not advance inside compute_loss, every step would see the same
    # t and eps and the loss would repeat exactly with a zero learning rate.
    net = MLPDenoiser(2, width=16, num_blocks=1)
    model = DiffusionModel(net, (2,), seed=3)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x = np.ones((64, 2), "float32") * 0.5
    hist = [model.evaluate(x, batch_size=64, verbose=0) for _ in range(3)]
    assert len(set(np.round(hist, 7))) == 3


def test_saved_model_keeps_parameterization_and_outputs(tmp_path):
    net = make_network("toy2d", (2,), 2)
    model = DiffusionModel(net, (2,), parameterization="v", weighting="snr_plus_one", seed=0)
    weights = [w + np.random.default_rng(i).normal(0, 0.1, w.shape).astype(w.dtype)
               for i, w in enumerate(model.get_weights())]
    model.set_weights(weights)
    ckpt.save_model(str(tmp_path), model, dict(parameterization="v", data_shape=[2],
                                               num_classes=None, sampling_steps=8))
    loaded, card = ckpt.load_model(str(tmp_path))
    assert loaded.parameterization == "v" and loaded.weighting == "snr_plus_one"
    noise = np.random.default_rng(0).standard_normal((16, 2)).astype("float32")
    np.testing.assert_allclose(loaded.sample(noise, 8), model.sample(noise, 8), atol=1e-6)
    # A card that disagrees with the model is refused (REFERENCE 8).
    ckpt.write_card(str(tmp_path), dict(card, parameterization="x"))
    with pytest.raises(ckpt.CheckpointError, match="parameterization"):
        ckpt.load_model(str(tmp_path))


def test_network_time_stays_in_the_schedules_range():
    """A model with lambda in [-8, 6] feeds its network the time of the clipped lambda (as the
    authors' code clips to its schedule's range), so a lambda beyond the range (as another
    schedule's grid can ask for) gives the prediction at the range's end, not an input the
    network never saw. The x parameterization returns the network's output unchanged."""
    model = DiffusionModel(MLPDenoiser(2, width=16, num_blocks=1), (2,), "x",
                           logsnr_min=-8.0, logsnr_max=6.0)
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    z = rng.standard_normal((4, 2)).astype("float32")

    def x_hat(lam):
        return keras.ops.convert_to_numpy(model.denoise(z, np.full(4, lam, "float32")).x)

    np.testing.assert_allclose(x_hat(-15.0), x_hat(-8.0), rtol=1e-6)
    np.testing.assert_allclose(x_hat(12.0), x_hat(6.0), rtol=1e-6)
    assert np.abs(x_hat(-7.0) - x_hat(-8.0)).max() > 1e-4  # inside the range it still moves


def test_bad_arguments_name_the_argument():
    net = MLPDenoiser(2, width=8, num_blocks=1)
    with pytest.raises(ValueError, match="parameterization"):
        DiffusionModel(net, (2,), parameterization="score")
    with pytest.raises(ValueError, match="weighting"):
        DiffusionModel(MLPDenoiser(2, width=8, num_blocks=1), (2,), weighting="lpips")
    model = DiffusionModel(MLPDenoiser(2, width=8, num_blocks=1), (2,))
    with pytest.raises(ValueError, match="num_steps"):
        model.sample(np.zeros((4, 2), "float32"), 0)
    with pytest.raises(ValueError, match="noise has shape"):
        model.sample(np.zeros((4, 3), "float32"), 4)
    with pytest.raises(ValueError, match="sampler"):
        model.sample(np.zeros((4, 2), "float32"), 4, sampler="heun")


def test_one_compiled_sampler_serves_every_step_count_and_gamma():
    """`sample` (N and g as inputs) equals a fixed-N `Sampler`, per step count and g, and keeps
    each (N, g, seed)'s ancestral noise stream its own whatever runs in between."""
    from keras_pd.samplers import Sampler

    keras.utils.set_random_seed(0)
    model = DiffusionModel(MLPDenoiser(2, width=16, num_blocks=1), (2,))
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((8, 2)).astype("float32")
    model.sample(noise, 1)  # builds the network; then weights that make x_hat depend on z
    for w in model.network.weights:
        w.assign(0.3 * rng.standard_normal(w.shape).astype("float32"))
    for n in (1, 2, 5):
        fixed = Sampler(model, n, "ddim").predict_on_batch(noise)
        np.testing.assert_allclose(model.sample(noise, n), fixed, atol=1e-5)
    fixed = Sampler(model, 4, "ancestral", gamma=0.5, seed=3)
    first, second = fixed.predict_on_batch(noise), fixed.predict_on_batch(noise)
    a = model.sample(noise, 4, sampler="ancestral", gamma=0.5, seed=3)
    model.sample(noise, 3, sampler="ancestral", gamma=1.0, seed=3)  # another stream between
    b = model.sample(noise, 4, sampler="ancestral", gamma=0.5, seed=3)
    np.testing.assert_allclose(a, first, atol=1e-5)
    np.testing.assert_allclose(b, second, atol=1e-5)
    assert np.abs(a - b).max() > 1e-3  # the stream moved on
    assert len(model._samplers) == 2  # one DDIM and one ancestral sampler for all of the above


@pytest.mark.slow
def test_jit_compiled_sampler_equals_the_uncompiled_one():
    """`sample(jit_compile=True)` (XLA on TensorFlow, jax.jit, torch.compile) gives the samples
    of `jit_compile=False`, and the same ancestral noise
    streams except on TensorFlow, whose XLA draws other normal numbers from the same seed."""
    keras.utils.set_random_seed(0)
    model = DiffusionModel(MLPDenoiser(2, width=16, num_blocks=1), (2,))
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((8, 2)).astype("float32")
    model.sample(noise, 1, jit_compile=False)
    for w in model.network.weights:
        w.assign(0.3 * rng.standard_normal(w.shape).astype("float32"))
    # (one compiled sampler for every step count: the test above, uncompiled; torch.compile
    # takes most of a minute per graph here, so one deterministic step count)
    plain = model.sample(noise, 4, jit_compile=False)
    np.testing.assert_allclose(model.sample(noise, 4, jit_compile=True), plain, atol=1e-5)
    plain = [model.sample(noise, 4, "ancestral", gamma=0.5, seed=5, jit_compile=False)
             for _ in range(2)]
    jitted = []
    for _ in range(2):  # from the stream's start again, twice: it reproduces
        model._seed_states.clear()
        jitted.append([model.sample(noise, 4, "ancestral", gamma=0.5, seed=5, jit_compile=True)
                       for _ in range(2)])
    np.testing.assert_array_equal(jitted[0], jitted[1])
    assert np.abs(plain[0] - plain[1]).max() > 1e-3
    if keras.backend.backend() == "tensorflow":
        assert np.abs(jitted[0][0] - plain[0]).max() > 1e-3
    else:
        np.testing.assert_allclose(jitted[0], plain, atol=1e-5)
    with pytest.raises(ValueError, match="jit_compile"):
        model.sample(noise, 2, jit_compile="yes")


def test_tensorflow_ddim_defaults_to_xla_only_for_jobs_worth_its_compilation():
    """The default sampler compilation depends on the job's size on TensorFlow only: XLA for
    DDIM jobs of at least XLA_MIN_SAMPLE_STEPS samples x steps (or of unknown size), the graph
    below and for the ancestral sampler; Keras' "auto" on the other backends; a choice given
    is kept."""
    from keras_pd.samplers import XLA_MIN_SAMPLE_STEPS, sampler_jit_compile

    xla = True if keras.backend.backend() == "tensorflow" else "auto"
    assert sampler_jit_compile(None, "ddim", XLA_MIN_SAMPLE_STEPS) == xla
    assert sampler_jit_compile(None, "ddim") == xla
    assert sampler_jit_compile(None, "ddim", XLA_MIN_SAMPLE_STEPS - 1) == "auto"
    assert sampler_jit_compile(None, "ancestral", 10 * XLA_MIN_SAMPLE_STEPS) == "auto"
    assert sampler_jit_compile(False, "ddim", 10 * XLA_MIN_SAMPLE_STEPS) is False
    assert sampler_jit_compile(True, "ddim", 1) is True


@pytest.fixture(scope="module")
def parity():
    """tests/data/parity.keras and parity.npz, written once by tools/make_parity_reference.py;
    each backend's run of the suite compares itself against them."""
    ref = np.load(os.path.join(HERE, "data", "parity.npz"))
    model = keras.saving.load_model(os.path.join(HERE, "data", "parity.keras"), compile=False)
    return model, ref


def test_cross_backend_parity_with_stored_reference(parity):
    """The same weights give the same denoiser output on every backend (the 8-step DDIM
    samples: the next test, slow: compiling the UNet sampler takes most of a minute on
    TensorFlow and JAX)."""
    model, ref = parity
    pred = model.denoise(ref["z"], ref["logsnr"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pred.x), ref["x_hat"], atol=1e-4)


@pytest.mark.slow
def test_cross_backend_parity_of_samples_with_stored_reference(parity):
    """The same weights give the same 8-step DDIM samples on every backend."""
    model, ref = parity
    samples = model.sample(ref["noise"], 8)
    np.testing.assert_allclose(samples, ref["samples"], atol=1e-4)


def test_flip_augmentation_mirrors_horizontally():
    model = DiffusionModel(make_network("digits", (8, 8, 1), 1), (8, 8, 1), flip=True, seed=0)
    img = np.arange(64, dtype="float32").reshape(1, 8, 8, 1)
    outs = [keras.ops.convert_to_numpy(model.augment(img, training=True))[0] for _ in range(12)]
    for o in outs:  # every output is the image or its mirror, and both occur
        assert np.array_equal(o, img[0]) or np.array_equal(o, img[0, :, ::-1])
    assert any(np.array_equal(o, img[0, :, ::-1]) for o in outs)
    assert any(np.array_equal(o, img[0]) for o in outs)


def _np_truncated_cosine_logsnr(t, logsnr_min, logsnr_max):
    b = np.arctan(np.exp(-0.5 * logsnr_max))
    a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
    return -2.0 * np.log(np.tan(a * t + b))


@pytest.mark.parametrize("weighting", ["snr", "truncated_snr", "snr_plus_one", "constant"])
@pytest.mark.parametrize("parameterization,logsnr_range", [
    ("eps", (-20.0, 20.0)), ("x", (-20.0, 20.0)), ("v", (-12.0, 9.0)), ("both", (-20.0, 20.0))])
def test_compute_loss_matches_numpy(weighting, parameterization, logsnr_range):
    """`compute_loss` of a teacher equals the loss written out in float64 numpy from the same
    draws (t ~ U[0, 1] then eps ~ N(0, I) from the model's SeedGenerator, REFERENCE 6) in the
    x-space form of REFERENCE 3: mean over examples of w(lambda_t) ||x - x_hat||^2 / D with
    w = SNR, max(SNR, 1), SNR + 1 or 1, and x_hat from the network's raw output (REFERENCE 2)."""
    rows, dim = 64, 3
    out = 2 * dim if parameterization == "both" else dim
    model = DiffusionModel(MLPDenoiser(out, width=16, num_blocks=1), (dim,), parameterization,
                           weighting, logsnr_min=logsnr_range[0], logsnr_max=logsnr_range[1],
                           seed=11)
    rng = np.random.default_rng(2)
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    x = rng.uniform(-1, 1, (rows, dim)).astype("float32")
    state = keras.ops.convert_to_numpy(model.seed_generator.state.value)
    loss = float(keras.ops.convert_to_numpy(model.compute_loss(x)))
    # The same draws from a generator at the same state, in the model's order.
    draws = keras.random.SeedGenerator(0)
    draws.state.assign(state)
    t = keras.ops.convert_to_numpy(keras.random.uniform((rows,), seed=draws)).astype(np.float64)
    eps = keras.ops.convert_to_numpy(keras.random.normal((rows, dim), seed=draws))
    eps = eps.astype(np.float64)
    lam = _np_truncated_cosine_logsnr(t, *logsnr_range)[:, None]
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    z = alpha * x + sigma * eps
    s = np.arctan(np.exp(-0.5 * lam[:, 0])) / (np.pi / 2)
    raw = keras.ops.convert_to_numpy(model.network(z.astype("float32"), s.astype("float32"),
                                                   training=False)).astype(np.float64)
    x_hat = {"x": lambda: raw,
             "eps": lambda: (z - sigma * raw) / alpha,
             "v": lambda: alpha * z - sigma * raw,
             "both": lambda: sigma**2 * raw[:, :dim] + alpha * (z - sigma * raw[:, dim:])
             }[parameterization]()
    snr = np.exp(lam[:, 0])
    w = {"snr": snr, "truncated_snr": np.maximum(snr, 1.0), "snr_plus_one": snr + 1.0,
         "constant": np.ones_like(snr)}[weighting]
    want = float(np.mean(w * np.mean((x - x_hat) ** 2, axis=1)))
    assert np.isfinite(want) and want > 0
    np.testing.assert_allclose(loss, want, rtol=2e-4)
