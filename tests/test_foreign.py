"""Teachers trained elsewhere (keras_pd.networks.foreign, keras_pd.imported): each convention
against float64 numpy, bad conventions refused, and a foreign flow teacher distilled end to end."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_pd import checkpoint as ckpt
from keras_pd.imported import foreign_teacher, import_teacher
from keras_pd.schedules import schedule_from_options
from keras_pd.networks.foreign import ForeignNetwork
from keras_pd.schedules import CosineSchedule, DDPMSchedule, FlowSchedule, ddpm_alpha_bar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def probe_model(level_rank=2, labels=False, integer_level=False):
    """out = z + level (+ label): a functional model whose output shows what it was fed."""
    z = keras.Input((2,))
    level = keras.Input((1,) * (level_rank - 1), dtype="int32" if integer_level else "float32")
    inputs = [z, level]
    flat = layers.Reshape((1,))(layers.Activation("linear", dtype="float32")(level))
    parts = [z, flat]
    if labels:
        lab = keras.Input((), dtype="int32")
        inputs.append(lab)
        parts.append(layers.Reshape((1,))(layers.Activation("linear", dtype="float32")(lab)))
    dense = layers.Dense(2, use_bias=False)
    out = dense(layers.Concatenate()([ops.cast(p, "float32") for p in parts]))
    kernel = np.concatenate([np.eye(2), np.ones((len(parts) - 1, 2))], 0).astype("float32")
    dense.set_weights([kernel])
    return keras.Model(inputs, out)


class Zero(keras.Model):
    """Predicts zeros, called as model(z, level)."""

    def call(self, z, level, training=None):
        return z * 0.0


LAM = np.array([-6.0, -1.5, 0.0, 2.0, 7.0])


def expected_input(schedule, noise_input, lam, reverse=False):
    """(c_t, level) from the schedules' equations in float64, independently of the library."""
    vp_sigma = np.sqrt(1.0 / (1.0 + np.exp(lam)))
    if isinstance(schedule, FlowSchedule):
        s = 1.0 / (1.0 + np.exp(lam / 2.0))  # lambda = 2 log((1 - s) / s)
        a = 1.0 - s
        t = s / (schedule.shift - (schedule.shift - 1.0) * s)
    else:
        a, s = np.sqrt(1.0 / (1.0 + np.exp(-lam))), vp_sigma
        if isinstance(schedule, DDPMSchedule):
            grid = np.log(ddpm_alpha_bar()) - np.log1p(-ddpm_alpha_bar())
            t = (np.interp(-lam, -grid, np.arange(1, 1001))) / 1000.0
        else:
            b = math.atan(math.exp(-schedule.logsnr_max / 2))
            span = math.atan(math.exp(-schedule.logsnr_min / 2)) - b
            t = (np.arctan(np.exp(-lam / 2)) - b) / span
    level = {"logsnr": lam, "noise_variance": s ** 2, "noise_rate": s,
             "network_time": np.arctan(np.exp(-lam / 2)) / (math.pi / 2),
             "ddpm_step": t * 1000 - 1, "flow_time": 1 - t if reverse else t}[noise_input]
    return np.sqrt(a ** 2 + s ** 2), level


CASES = [
    (CosineSchedule(-7.8, 2.2), "noise_variance"),
    (CosineSchedule(), "logsnr"),
    (CosineSchedule(), "network_time"),
    (CosineSchedule(-10.0, 10.0), "noise_rate"),
    (DDPMSchedule(), "ddpm_step"),
    (FlowSchedule(), "flow_time"),
    (FlowSchedule(shift=3.0), "flow_time"),
    (FlowSchedule(shift=3.0), "noise_rate"),
]


@pytest.mark.parametrize("schedule,noise_input", CASES)
def test_adapter_feeds_the_model_its_own_coordinates_and_level(schedule, noise_input):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((len(LAM), 2))
    lam = np.clip(LAM, schedule.logsnr_min, schedule.logsnr_max)
    net = ForeignNetwork(probe_model(), schedule, noise_input)
    out = np_(net(z.astype("float32"), lam.astype("float32")))
    c, level = expected_input(schedule, noise_input, lam)
    np.testing.assert_allclose(out, c[:, None] * z + level[:, None], rtol=2e-5, atol=2e-4)


def test_adapter_reverse_time_positional_labels_and_integer_steps():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((len(LAM), 2)).astype("float32")
    # Reversed flow time: fed 1 - t, the output (x - eps) negated.
    net = ForeignNetwork(probe_model(), FlowSchedule(), "flow_time", reverse_time=True)
    c, level = expected_input(FlowSchedule(), "flow_time", LAM, reverse=True)
    np.testing.assert_allclose(np_(net(z, LAM.astype("float32"))),
                               -(c[:, None] * z + level[:, None]), rtol=2e-5, atol=2e-4)
    # An integer DDPM step input gets the nearest step; labels go through as the third input.
    model = probe_model(labels=True, integer_level=True)
    net = ForeignNetwork(model, DDPMSchedule(), "ddpm_step", conditioning="labels")
    labels = np.arange(len(LAM)).astype("int32")
    _, level = expected_input(DDPMSchedule(), "ddpm_step", LAM)
    np.testing.assert_allclose(np_(net(z, LAM.astype("float32"), labels)),
                               z + (np.round(level) + labels)[:, None], atol=1e-4)

    class Positional(keras.Model):  # called as model(z, level), the level shaped [B]
        def call(self, z, level, training=None):
            return z * 2.0 + level[:, None]

    net = ForeignNetwork(Positional(), CosineSchedule(), "logsnr", call_style="positional")
    assert net.noise_rank == 1
    np.testing.assert_allclose(np_(net(z, LAM.astype("float32"))), 2 * z + LAM[:, None],
                               atol=1e-5)


def test_bad_conventions_are_refused_naming_the_argument():
    model = probe_model()
    with pytest.raises(ValueError, match="noise_input"):
        ForeignNetwork(model, CosineSchedule(), "sigma")
    with pytest.raises(ValueError, match="'ddpm_step' needs the ddpm schedule"):
        ForeignNetwork(model, FlowSchedule(), "ddpm_step")
    with pytest.raises(ValueError, match="call_style"):
        ForeignNetwork(model, CosineSchedule(), "logsnr", call_style="dict")
    with pytest.raises(ValueError, match="reverse_time needs noise_input 'flow_time'"):
        ForeignNetwork(model, CosineSchedule(), "logsnr", reverse_time=True)
    with pytest.raises(ValueError, match="takes 2 inputs; conditioning='labels' needs 3"):
        ForeignNetwork(model, CosineSchedule(), "logsnr", conditioning="labels")
    with pytest.raises(ValueError, match="parameterization 'v' is defined here for "
                                         "variance-preserving"):
        foreign_teacher(model, FlowSchedule(), "v", "flow_time")
    with pytest.raises(ValueError, match=r"outputs shape \(2,\).*'both' needs \(4,\)"):
        foreign_teacher(model, CosineSchedule(), "both", "logsnr")
    with pytest.raises(ValueError, match="num_classes"):
        foreign_teacher(model, CosineSchedule(), "eps", "logsnr", num_classes=3)
    with pytest.raises(ValueError, match="data_variance has 2 values; the data have 1"):
        foreign_teacher(Zero(), CosineSchedule(), "eps", "logsnr", call_style="positional",
                        data_shape=(3, 3, 1), data_mean=[0.5], data_variance=[0.1, 0.1])
    with pytest.raises(ValueError, match="does not take beta_start"):
        schedule_from_options("flow", beta_start=0.1)


def test_standardized_data_round_trip_and_clip_range():
    """A model trained on (p - mean) / std, p = (x + 1) / 2: batches in, samples out in [-1, 1]."""
    teacher = foreign_teacher(Zero(), CosineSchedule(), "x", "logsnr", call_style="positional",
                              data_shape=(2,), data_mean=[0.2, 0.6], data_variance=[0.04, 0.25])
    x = np.array([[-1.0, 1.0], [0.0, 0.5]], "float32")
    m = np_(teacher.to_model_space(x))
    np.testing.assert_allclose(m, ((x + 1) / 2 - [0.2, 0.6]) / [0.2, 0.5], atol=1e-6)
    np.testing.assert_allclose(np_(teacher.to_images(m)), x, atol=1e-6)
    low, high = (np_(v) for v in teacher.clip_range())
    np.testing.assert_allclose(low, [-1.0, -1.2], atol=1e-6)
    np.testing.assert_allclose(high, [4.0, 0.8], atol=1e-6)
    # x_hat = 0 in model space is the mean image: every sample is 2 mean - 1.
    out = teacher.sample(np.random.default_rng(0).standard_normal((3, 2)).astype("float32"), 2)
    np.testing.assert_allclose(out, np.tile([-0.6, 0.2], (3, 1)), atol=1e-5)


def lambda_model(path):
    """A keras.io-style two-input model with a Lambda embedding (needs unsafe loading)."""
    z = keras.Input((2,))
    v = keras.Input((1,))
    e = layers.Lambda(lambda x: __import__("keras").ops.sin(x * 3.0), output_shape=(1,))(v)
    out = layers.Dense(2)(layers.Concatenate()([z, e]))
    keras.Model([z, v], out).save(path)


@pytest.mark.slow
@pytest.mark.one_backend("torch")  # app subprocesses: one pass of tools/run_tests.sh is enough
def test_distill_app_refuses_a_lambda_model_without_the_flag_then_distills_it(tmp_path):
    path, workdir = str(tmp_path / "m.keras"), str(tmp_path / "w")
    lambda_model(path)
    flags = [f"--teacher_model={path}", "--teacher_input=noise_variance", "--teacher_steps=4",
             "--end_steps=2", f"--workdir={workdir}", "--updates_per_round=4",
             "--teacher_samples=32", "--batch_size=16", "--checkpoint_every=4"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "apps.distill", *flags, *extra], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)

    proc = run()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--unsafe_deserialization" in proc.stderr and not os.path.exists(workdir)
    proc = run("--teacher_input=ddpm_step", "--unsafe_deserialization")  # not on this schedule
    assert proc.returncode == 2 and "needs the ddpm schedule" in proc.stderr
    assert not os.path.exists(workdir)
    proc = run("--unsafe_deserialization")
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = ckpt.read_card(os.path.join(workdir, "student_0002"))
    assert card["kind"] == "student" and card["schedule"]["name"] == "cosine"
    teacher = ckpt.read_card(os.path.join(workdir, "teacher"))
    assert teacher["imported_sha256"] == ckpt.file_sha256(path)


@pytest.mark.slow
@pytest.mark.one_backend("jax")  # 30 s on JAX, about 10x that on PyTorch here
def test_a_reversed_time_flow_teacher_trained_elsewhere_distills_end_to_end(tmp_path):
    """A rectified-flow model in another codebase's convention (time 1 at the data, predicting
    x - eps, a [B, 1] time input), trained by its own plain Keras loop, saved as .keras and
    distilled 16 -> 2 steps on its own samples: the 2-step student lands nearer the teacher's
    16-step samples (same noise) than the teacher's own 2 Euler steps do."""
    from keras_pd.data import load_dataset
    from keras_pd.cascade import DistillConfig, distill

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    data = load_dataset("toy2d").x
    z_in, t_in = keras.Input((2,)), keras.Input((1,))
    # Random Fourier features of the time (a frozen Dense), then plain dense layers.
    emb = layers.Dense(32, activation="tanh", trainable=False,
                       kernel_initializer=keras.initializers.RandomNormal(stddev=8.0),
                       bias_initializer=keras.initializers.RandomUniform(-3.0, 3.0))(t_in)
    h = layers.Concatenate()([z_in, emb])
    for _ in range(3):
        h = layers.Dense(128, activation="swish")(h)
    model = keras.Model([z_in, t_in], layers.Dense(2)(h))
    n = 300_000
    x = data[rng.integers(0, len(data), n)]
    eps = rng.standard_normal((n, 2)).astype("float32")
    t = rng.uniform(0, 1, (n, 1)).astype("float32")  # t = 1: data, t = 0: noise
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit([t * x + (1 - t) * eps, t], x - eps, batch_size=256, epochs=1, verbose=0)
    path = str(tmp_path / "flow.keras")
    model.save(path)

    teacher_dir = str(tmp_path / "w" / "teacher")
    import_teacher(path, teacher_dir, 16, schedule=FlowSchedule(), parameterization="flow",
                   noise_input="flow_time", reverse_time=True)
    distill(teacher_dir, str(tmp_path / "w"), DistillConfig(
        end_steps=2, updates_per_round=300, learning_rate=1e-3, batch_size=256,
        teacher_samples=4096, checkpoint_every=300), verbose=0)
    teacher, _ = ckpt.load_model(teacher_dir)
    student, _ = ckpt.load_model(str(tmp_path / "w" / "student_0002"))
    noise = rng.standard_normal((2000, 2)).astype("float32")
    reference = teacher.sample(noise, 16)
    err_student = np.mean((student.sample(noise, 2) - reference) ** 2)
    err_euler = np.mean((teacher.sample(noise, 2) - reference) ** 2)
    assert err_student < 0.1 * err_euler, (err_student, err_euler)
    # The conventions were read right: the teacher's samples lie on the data (each within a
    # small distance of a training point; noise read with the wrong time direction does not).
    nearest = np.sqrt(((reference[:, None, :] - data[None, :2000]) ** 2).sum(-1)).min(1)
    wrong = foreign_teacher(model, FlowSchedule(), "flow", "flow_time").sample(noise, 16)
    nearest_wrong = np.sqrt(((wrong[:, None, :] - data[None, :2000]) ** 2).sum(-1)).min(1)
    assert np.median(nearest) < 0.08 < np.median(nearest_wrong)  # here: 0.029 and 0.33
