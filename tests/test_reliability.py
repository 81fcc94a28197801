"""Reliability (docs/reliability.md): numerical faults, storage faults, bad input, determinism.

Suite time: the app rows of the bad-input table start a subprocess each (~6 s of imports). Tests
whose outcome cannot depend on the Keras backend (flag parsing, validation before any model is
built, checkpoint and model files on disk) carry `backend_free` and run on one pass of
`tools/run_tests.sh` only (tests/conftest.py); rows about the library run in-process on every
backend. Trainings and subprocesses are `slow` (not in the `-m "not slow"` tier).
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_pd import checkpoint as ckpt
from keras_pd.data import BatchStream, load_dataset
from keras_pd.cascade import DistillConfig, distill, plan
from keras_pd.distillation import DistillationModel, copy_model
from keras_pd.generate import generate
from keras_pd.runs import make_optimizer
from keras_pd.training import TrainConfig, build_teacher, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
backend_free = pytest.mark.backend_free

TINY = dict(dataset="toy2d", train_steps=20, batch_size=32, warmup_steps=5, checkpoint_every=10,
            sample_every=1000, sampling_steps=4, seed=3)


def tree(path):
    """{relative path: bytes} of every file under path (the 'no partial files' check)."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            if f == "lock":  # the lock file's content is the pid of its last holder
                continue
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 20-step toy2d teacher (4 sampling steps), trained in-process on this backend."""
    workdir = str(tmp_path_factory.mktemp("rel") / "teacher")
    train(TrainConfig(**TINY), workdir, verbose=0)
    return workdir


@pytest.fixture
def teacher_copy(teacher, tmp_path):
    path = str(tmp_path / "teacher_copy")
    shutil.copytree(teacher, path)
    return path


def weights_of(directory):
    model, _ = ckpt.load_model(directory)
    return [np.asarray(w) for w in model.get_weights()]


# --------------------------------------------------------------------------------------------
# Numerical faults.


def _toy2d_with_nan(step, batch_size, seed):
    """toy2d with one NaN example, first drawn by update `step` (1-based) of BatchStream."""
    data = load_dataset("toy2d", seed=seed)
    stream = BatchStream(data.x, None, batch_size, seed=seed)
    j = int(stream.indices(step - 1)[0])
    earlier = np.concatenate([stream.indices(k) for k in range(step - 1)])
    assert j not in earlier  # first epoch: every index once
    x = data.x.copy()
    x[j] = np.nan
    data.x = x
    return data


@pytest.mark.slow
def test_nan_loss_stops_run_naming_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    data = _toy2d_with_nan(15, TINY["batch_size"], TINY["seed"])
    monkeypatch.setattr("keras_pd.training.load_dataset", lambda *a, **k: data)
    # JAX and TensorFlow run 10 updates per compiled call here (runs.steps_per_execution):
    # the message names the group holding step 15; PyTorch runs one and names the step.
    where = r"at step 15\b" if BACKEND == "torch" else r"at one of steps 11-20\b"
    with pytest.raises(FloatingPointError, match=where):
        train(TrainConfig(**TINY), workdir, verbose=0)
    manager = ckpt.CheckpointManager(os.path.join(workdir, "checkpoints"))
    assert manager.steps() == [10]
    card = ckpt.read_card(workdir)
    assert card["steps_trained"] == 10
    assert all(np.all(np.isfinite(w)) for w in weights_of(workdir))

    # The same run with --skip_nonfinite resumes from step 10 and skips exactly that update.
    train(TrainConfig(**TINY, skip_nonfinite=True), workdir, verbose=0)
    card = ckpt.read_card(workdir)
    assert card["steps_trained"] == 20 and card["skipped_updates"] == 1
    assert all(np.all(np.isfinite(w)) for w in weights_of(workdir))


def _run_optimizer(optimizer, grads_seq):
    var = keras.Variable(np.array([1.0, -2.0, 0.5], "float32"))
    optimizer.build([var])
    if BACKEND == "jax":  # what the JAX trainer calls
        opt_vals = [v.value for v in optimizer.variables]
        var_vals = [var.value]
        for g in grads_seq:
            var_vals, opt_vals = optimizer.stateless_apply(opt_vals, [g], var_vals)
        values = list(var_vals) + list(opt_vals)
    else:
        for g in grads_seq:
            optimizer.apply([keras.ops.convert_to_tensor(g)], [var])
        values = [var.value] + [v.value for v in optimizer.variables]
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in values]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_skip_nonfinite_update_changes_nothing(bad):
    """A skipped update leaves weights, Adam moments, EMA and iteration count as they were."""
    g1 = np.array([0.5, -1.0, 0.1], "float32")
    g3 = np.array([0.2, 0.3, -0.4], "float32")
    gbad = np.array([0.1, bad, 0.0], "float32")

    def run(skip, grads):
        return _run_optimizer(make_optimizer(1e-1, warmup_steps=2, ema_decay=0.9, grad_clip=1.0,
                                             skip_nonfinite=skip), grads)

    for with_bad, without in (([g1, gbad], [g1]), ([g1, gbad, g3], [g1, g3])):
        for a, b in zip(run(True, with_bad), run(True, without)):
            np.testing.assert_array_equal(a, b)
    # The finite updates are plain Adam's (on JAX the skipping update runs inside lax.cond,
    # compiled, while the plain one here runs op by op: last-bit differences only).
    plain, skipped = run(False, [g1, g3]), run(True, [g1, g3])
    assert len(plain) == len(skipped)
    for a, b in zip(plain, skipped):
        if BACKEND == "jax":
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
        else:
            np.testing.assert_array_equal(a, b)
    # Without skipping, the same non-finite update does poison the weights.
    assert not np.all(np.isfinite(run(False, [g1, gbad, g3])[0]))


@backend_free
def test_checkpoint_refuses_non_finite_weights(tmp_path):
    model = _tiny_model()
    manager = ckpt.CheckpointManager(str(tmp_path / "ck"))
    manager.save(model, 10, {"seeds": {}})
    before = tree(tmp_path)
    v = model.trainable_variables[0]
    bad = np.asarray(keras.ops.convert_to_numpy(v)).copy()
    bad.flat[0] = np.inf
    v.assign(bad)
    with pytest.raises(FloatingPointError, match="step 20"):
        manager.save(model, 20, {"seeds": {}})
    assert tree(tmp_path) == before
    plain = _tiny_model(ema=False)  # with EMA, model.keras holds the (finite) averages
    plain.trainable_variables[0].assign(bad)
    with pytest.raises(FloatingPointError, match="non-finite"):
        ckpt.save_model(str(tmp_path / "run"), plain, {"kind": "teacher"})
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------------------------
# Storage faults.


def _tiny_model(seed=0, ema=True):
    data = load_dataset("toy2d", seed=0)
    model = build_teacher(TrainConfig(**TINY).resolved(), data)
    model.compile(optimizer=make_optimizer(1e-3, ema_decay=0.9 if ema else 0.0))
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


@pytest.fixture
def two_checkpoints(tmp_path):
    """A manager with checkpoints 10 and 20 of different weights; the weights at each."""
    manager = ckpt.CheckpointManager(str(tmp_path / "ck"))
    saved = {}
    for step, seed in ((10, 1), (20, 2)):
        model = _tiny_model(seed)
        manager.save(model, step, {"seeds": {}})
        saved[step] = [np.asarray(w) for w in model.get_weights()]
    return manager, saved


def _damage(path, how):
    data = open(path, "rb").read()
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip":  # same size, bytes changed in the middle (h5 data is not checksummed)
        mid = len(data) // 2
        data = data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]
    elif how == "garbage":
        data = b"{not json"
    with open(path, "wb") as f:
        f.write(data)


@backend_free
@pytest.mark.parametrize("target,how", [("weights", "truncate"), ("weights", "flip"),
                                        ("index", "garbage"), ("weights", "delete")])
def test_damaged_latest_checkpoint_falls_back_with_warning(two_checkpoints, target, how):
    manager, saved = two_checkpoints
    weights, index = manager._paths(20)
    path = weights if target == "weights" else index
    if how == "delete":
        os.remove(path)
    else:
        _damage(path, how)
    model = _tiny_model(seed=9)
    with pytest.warns(UserWarning, match="skipping checkpoint .*ckpt-00000020"):
        state = manager.restore(model)
    assert state["step"] == 10
    for a, b in zip(model.get_weights(), saved[10]):
        np.testing.assert_array_equal(a, b)


@backend_free
def test_no_good_checkpoint_is_a_clear_error(two_checkpoints):
    manager, _ = two_checkpoints
    for step in (10, 20):
        _damage(manager._paths(step)[0], "truncate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ckpt.CheckpointError, match="no loadable checkpoint .*20, 10"):
            manager.restore(_tiny_model())


def _enospc_after_half(real_write):
    """A writer that writes half a file, then fails as a full disk does."""

    def write(path):
        real_write(path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    return write


@backend_free
def test_disk_full_mid_checkpoint_leaves_previous_intact(two_checkpoints, monkeypatch):
    manager, saved = two_checkpoints
    before = tree(manager.directory)
    model = _tiny_model(seed=3)
    monkeypatch.setattr(model, "save_weights", _enospc_after_half(model.save_weights))
    with pytest.raises(OSError) as e:
        manager.save(model, 30, {"seeds": {}})
    assert e.value.errno == errno.ENOSPC
    assert tree(manager.directory) == before  # no partial file, no temporary left
    state = manager.restore(_tiny_model(seed=9))
    assert state["step"] == 20


@backend_free
def test_disk_full_writing_the_index_removes_the_new_weights(two_checkpoints, monkeypatch):
    manager, _ = two_checkpoints
    before = tree(manager.directory)

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(ckpt, "write_json", full)
    with pytest.raises(OSError):
        manager.save(_tiny_model(seed=3), 30, {"seeds": {}})
    assert tree(manager.directory) == before


@backend_free
def test_disk_full_mid_model_write_keeps_previous_model(teacher_copy, monkeypatch):
    before = tree(teacher_copy)
    model, card = ckpt.load_model(teacher_copy)
    real_save = keras.Model.save

    def save(self, path, *args, **kwargs):
        _enospc_after_half(lambda p: real_save(self, p, *args, **kwargs))(path)

    monkeypatch.setattr(keras.Model, "save", save)
    with pytest.raises(OSError):
        ckpt.save_model(teacher_copy, model, card)
    monkeypatch.undo()
    assert tree(teacher_copy) == before
    ckpt.load_model(teacher_copy)


@backend_free
def test_second_run_on_a_workdir_is_refused(teacher_copy):
    before = tree(teacher_copy)
    with ckpt.workdir_lock(teacher_copy):
        with pytest.raises(ckpt.CheckpointError, match="in use by another run"):
            train(TrainConfig(**dict(TINY, train_steps=30)), teacher_copy, verbose=0)
    assert tree(teacher_copy) == before


@backend_free
def test_stale_temporaries_of_a_killed_writer_are_removed(teacher_copy):
    stale = [os.path.join(teacher_copy, ".tmp-99999-model.keras"),
             os.path.join(teacher_copy, "checkpoints", ".tmp-99999-ckpt-00000030.weights.h5")]
    for p in stale:
        with open(p, "wb") as f:
            f.write(b"half")
    with ckpt.workdir_lock(teacher_copy):
        pass
    assert not any(os.path.exists(p) for p in stale)
    assert ckpt.CheckpointManager(os.path.join(teacher_copy, "checkpoints")).steps() == [20, 10]


# --------------------------------------------------------------------------------------------
# Bad input: one test per row of docs/reliability.md's table (ids = row names there).


def run_app(app, *flags, env=None, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    cmd = [sys.executable, "-m", f"apps.{app}", *flags] if app != "litert_sample" else \
        [sys.executable, os.path.join(ROOT, "tools", "litert_sample.py"), *flags]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(proc, message):
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]


APP_ROWS = [
    # id, app, flags, env, message
    ("train-unknown-dataset", "train", ["--dataset=imagenet_offline_typo"], None,
     "unknown dataset 'imagenet_offline_typo'"),
    ("train-misspelt-flag", "train", ["--trian_steps=10"], None,
     "Unknown command line flag 'trian_steps'"),
    ("train-bad-enum", "train", ["--parameterization=y"], None, "--parameterization=y"),
    ("train-not-an-integer", "train", ["--batch_size=abc"], None, "--batch_size=abc"),
    ("train-positional-argument", "train", ["digits"], None, "unexpected arguments: digits"),
    ("train-resume-other-dataset", "train", ["--workdir={teacher}", "--dataset=digits"], None,
     "holds a run with dataset='toy2d'"),
    ("train-workdir-locked", "train", ["--workdir={teacher}", "--dataset=toy2d"], None,
     "in use by another run"),
    ("sample-missing-checkpoint", "sample", [], None, "--checkpoint"),
    ("sample-no-such-directory", "sample", ["--checkpoint={tmp}/nothing"], None,
     "no such directory"),
    ("sample-noise-wrong-shape", "sample", ["--checkpoint={teacher}",
                                            "--noise_file={tmp}/bad.npy"], None,
     "has shape (3, 5)"),
    ("distill-not-power-of-two", "distill", ["--teacher={teacher}", "--end_steps=3"], None,
     "end_steps must be a power of two, got 3"),
    ("distill-other-dataset", "distill", ["--teacher={teacher}", "--dataset=digits",
                                          "--distill_data=data"], None,
     "teacher was trained on data of shape [2]"),
    ("distill-dataset-unused", "distill", ["--teacher={teacher}", "--dataset=digits"], None,
     "dataset 'digits' is not used when distilling on the teacher's own samples"),
    ("distill-teacher-and-model", "distill", ["--teacher={teacher}",
                                              "--teacher_model={tmp}/m.keras"], None,
     "give one of --teacher"),
    ("distill-model-conventions-missing", "distill", ["--teacher_model={tmp}/m.keras"], None,
     "--teacher_model needs --teacher_input"),
    ("distill-model-not-keras", "distill", ["--teacher_model={tmp}/bad.npy",
                                            "--teacher_input=logsnr", "--teacher_steps=8"],
     None, "teacher_model must be a .keras file"),
    ("distill-model-schedule-option", "distill", [
        "--teacher_model={tmp}/m.keras", "--teacher_schedule=flow", "--beta_start=0.1",
        "--teacher_input=flow_time", "--teacher_steps=8"], None,
     "--beta_start does not apply to --teacher_schedule=flow"),
    ("train-schedule-option", "train", ["--dataset=toy2d", "--schedule=cosine",
                                        "--flow_shift=3"], None,
     "--flow_shift does not apply to --schedule=cosine"),
    ("distill-student-parameterization", "distill", ["--teacher={teacher}",
                                                     "--student_parameterization=both"], None,
     "student_parameterization 'both' needs another number of output channels"),
    ("pipeline-unknown-preset", "pipeline", ["--preset=no_such_net", "--workdir={tmp}/p"], None,
     "no_such_net"),
    ("evaluate-gamma-out-of-range", "evaluate", ["--workdir={tmp}/e", "--teacher={teacher}",
                                                 "--gammas=0.3,2"], None,
     "--gammas must lie in [0, 1], got 0.3,2"),
    ("unknown-backend", "train", [], {"KERAS_BACKEND": "mxnet"}, "unknown KERAS_BACKEND 'mxnet'"),
    ("export-litert-needs-tflite", "export", ["--checkpoint={teacher}", "--format=litert",
                                              "--output={tmp}/out/model.bin"], None,
     "must end in .tflite"),
]


@backend_free
@pytest.mark.slow
@pytest.mark.parametrize("row,app,flags,env,message", APP_ROWS, ids=[r[0] for r in APP_ROWS])
def test_app_bad_input(row, app, flags, env, message, teacher_copy, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), "float32"))
    os.makedirs(tmp_path / "out")
    flags = [f.format(tmp=tmp_path, teacher=teacher_copy) for f in flags]
    if app in ("train", "distill") and not any(f.startswith("--workdir") for f in flags):
        flags.append(f"--workdir={tmp_path}/w")
    before = tree(tmp_path)
    if row == "train-workdir-locked":
        with ckpt.workdir_lock(teacher_copy):
            proc = run_app(app, *flags, env=env)
    else:
        proc = run_app(app, *flags, env=env)
    assert_one_line_error(proc, message)
    assert proc.returncode == 2
    assert tree(tmp_path) == before  # no partial files (no workdir created either)


@backend_free
@pytest.mark.slow
def test_app_stops_at_a_corrupt_image_naming_it_and_resumes_once_it_is_mended(tmp_path):
    """A corrupt file in an image folder is met when its batch is read: one error line naming
    the file, exit 2, no checkpoint written; once the file is replaced the same command trains."""
    from conftest import write_folder

    written = write_folder(str(tmp_path / "images"), classes=None, per_class=6, size=(8, 8))
    bad = sorted(written)[2]
    with open(bad, "wb") as f:
        f.write(b"not a png")
    flags = [f"--dataset=folder:{tmp_path / 'images'}", "--preset=digits_mlp",
             "--train_steps=4", "--batch_size=6", "--checkpoint_every=2", "--sample_every=0",
             f"--workdir={tmp_path / 'w'}"]
    proc = run_app("train", *flags)
    assert_one_line_error(proc, f"corrupt or truncated image {bad}")
    assert proc.returncode == 2
    assert not os.path.exists(tmp_path / "w" / "checkpoints") or not os.listdir(
        tmp_path / "w" / "checkpoints")
    from PIL import Image

    Image.fromarray(written[bad]).save(bad)
    proc = run_app("train", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ckpt.read_card(str(tmp_path / "w"))["steps_trained"] == 4


def _write_card(directory, **changes):
    path = os.path.join(directory, ckpt.CARD_NAME)
    card = ckpt.read_json(path)
    card.update(changes)
    with open(path, "w") as f:
        json.dump(card, f)


def _unsafe_model_keras(directory):
    """Replaces model.keras by a model holding a Python lambda (arbitrary code)."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    os.remove(os.path.join(directory, ckpt.MODEL_NAME))
    model.save(os.path.join(directory, ckpt.MODEL_NAME))


def _noise(tmp, kind):
    path = os.path.join(tmp, f"{kind}.npy")
    if kind == "corrupt":
        with open(path, "wb") as f:
            f.write(b"\x93NUMPY garbage, not an array")
    elif kind == "pickled":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "nan":
        np.save(path, np.full((4, 2), np.nan, "float32"))
    return path


API_ROWS = [
    # id, callable(teacher_copy, tmp) raising, exception type, message
    ("api-unknown-preset", lambda t, d: train(TrainConfig(dataset="toy2d", preset="huge"),
                                              f"{d}/w", verbose=0), ValueError, "preset"),
    ("api-zero-train-steps", lambda t, d: train(TrainConfig(**dict(TINY, train_steps=0)),
                                                f"{d}/w", verbose=0), ValueError,
     "train_steps must be a positive integer"),
    ("api-ema-decay-one", lambda t, d: train(TrainConfig(**dict(TINY, ema_decay=1.0)),
                                             f"{d}/w", verbose=0), ValueError, "ema_decay"),
    ("api-negative-learning-rate", lambda t, d: train(
        TrainConfig(**dict(TINY, learning_rate=-1.0)), f"{d}/w", verbose=0), ValueError,
     "learning_rate must be positive"),
    ("api-tfds-not-downloaded", lambda t, d: load_dataset("tfds:cifar10",
                                                          data_dir=f"{d}/empty"),
     ValueError, "cifar10"),
    ("api-negative-steps", lambda t, d: generate(t, f"{d}/s", steps=-1), ValueError,
     "steps must be a positive integer, got -1"),
    ("api-corrupt-noise-file", lambda t, d: generate(t, f"{d}/s", noise_file=_noise(d, "corrupt")),
     ValueError, "cannot read noise file"),
    ("api-pickled-noise-file", lambda t, d: generate(t, f"{d}/s", noise_file=_noise(d, "pickled")),
     ValueError, "allow_pickle=False"),
    ("api-nan-noise-file", lambda t, d: generate(t, f"{d}/s", noise_file=_noise(d, "nan")),
     ValueError, "non-finite"),
    ("api-labels-unconditional", lambda t, d: generate(t, f"{d}/s", labels=["3"]), ValueError,
     "not class-conditional"),
    ("api-card-other-version", lambda t, d: (_write_card(t, card_version=99),
                                             ckpt.load_model(t)), ckpt.CheckpointError,
     "has version 99"),
    ("api-card-model-mismatch", lambda t, d: (_write_card(t, parameterization="v"),
                                              ckpt.load_model(t)), ckpt.CheckpointError,
     "card says parameterization='v', model has 'x'"),
    ("api-card-unreadable", lambda t, d: (open(f"{t}/card.json", "w").write("{"),
                                          ckpt.load_model(t)), ckpt.CheckpointError,
     "unreadable"),
    ("api-no-card", lambda t, d: ckpt.load_model(d), ckpt.CheckpointError, "no model card"),
    ("api-model-missing", lambda t, d: (os.remove(f"{t}/model.keras"), ckpt.load_model(t)),
     ckpt.CheckpointError, "has a card but no model.keras"),
    ("api-model-truncated", lambda t, d: (_damage(f"{t}/model.keras", "truncate"),
                                          ckpt.load_model(t)), ckpt.CheckpointError,
     "cannot load"),
    ("api-model-with-code", lambda t, d: (_unsafe_model_keras(t), ckpt.load_model(t)),
     ckpt.CheckpointError, "pass --unsafe_deserialization"),
    ("api-end-steps-not-below", lambda t, d: plan(DistillConfig(end_steps=4),
                                                  ckpt.read_card(t)), ValueError,
     "end_steps (4) must be below the teacher's steps (4)"),
    ("api-teacher-steps-not-power-of-two", lambda t, d: plan(DistillConfig(teacher_steps=12),
                                                             ckpt.read_card(t)), ValueError,
     "teacher_steps must be a power of two, got 12"),
    ("api-distill-zero-learning-rate", lambda t, d: plan(DistillConfig(learning_rate=0.0),
                                                         ckpt.read_card(t)), ValueError,
     "learning_rate must be positive"),
    ("api-distill-workdir-of-other-teacher", lambda t, d: (
        os.makedirs(f"{d}/s/student_0002"),
        ckpt.write_json(f"{d}/s/student_0002/card.json",
                        dict(card_version=ckpt.CARD_VERSION, teacher="/elsewhere",
                             sampling_steps=2)),
        distill(t, f"{d}/s", DistillConfig(updates_per_round=2), verbose=0)),
     ckpt.CheckpointError, "use another --workdir"),
    ("api-sample-noise-wrong-shape", lambda t, d: ckpt.load_model(t)[0].sample(
        np.zeros((2, 3), "float32"), 2), ValueError, "noise has shape (2, 3)"),
    ("api-distill-shape-mismatch", lambda t, d: DistillationModel(
        ckpt.load_model(t)[0], _tiny_model(), 2), None, None),  # replaced below
    ("api-export-unknown-format", lambda t, d: __import__("keras_pd.export").export.export_sampler(
        t, f"{d}/m.pt", format="pt"), ValueError, "unknown format 'pt'"),
    ("api-export-quantize-saved-model", lambda t, d: __import__(
        "keras_pd.export").export.export_sampler(t, f"{d}/sm", format="saved_model",
                                                 quantize="float16"), ValueError,
     "quantize='float16' applies to format='litert' only"),
]


def _shape_mismatch(t, d):
    teacher, _ = ckpt.load_model(t)
    other = build_teacher(TrainConfig(**dict(TINY, dataset="digits")).resolved(),
                          load_dataset("digits"))
    return DistillationModel(teacher, other, 2)


API_ROWS[[r[0] for r in API_ROWS].index("api-distill-shape-mismatch")] = (
    "api-distill-shape-mismatch", _shape_mismatch, ValueError, "same data shape")


@pytest.mark.parametrize("row,fn,error,message", API_ROWS, ids=[r[0] for r in API_ROWS])
def test_api_bad_input(row, fn, error, message, teacher_copy, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    before = tree(work)
    with pytest.raises(error) as e:
        fn(teacher_copy, str(work))
    text = str(e.value)
    assert message in text and "\n" not in text.strip(), text
    after = tree(work)
    created = set(after) - set(before)
    assert not created - {"noise.npy", "corrupt.npy", "pickled.npy", "nan.npy",
                          "s/student_0002/card.json"}, created


@pytest.mark.one_backend("jax")  # the runtime is backend-free, its in-process export is not
@pytest.mark.slow
def test_litert_runtime_refuses_noise_of_the_wrong_shape(teacher, tmp_path):
    from keras_pd import export

    model_path = str(tmp_path / "m.tflite")
    export.export_sampler(teacher, model_path, format="litert", steps=2, batch_size=2)
    np.save(tmp_path / "noise.npy", np.zeros((4, 3), "float32"))
    before = tree(tmp_path)
    proc = run_app("litert_sample", f"--model={model_path}", f"--noise={tmp_path}/noise.npy",
                   f"--output={tmp_path}/o.png", f"--npy={tmp_path}/o.npy")
    assert_one_line_error(proc, "has shape (4, 3); the model takes [num, 2]")
    assert tree(tmp_path) == before
    # The right shape runs (the check does not refuse everything).
    np.save(tmp_path / "noise.npy", np.zeros((4, 2), "float32"))
    proc = run_app("litert_sample", f"--model={model_path}", f"--noise={tmp_path}/noise.npy",
                   f"--npy={tmp_path}/o.npy")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.load(tmp_path / "o.npy").shape == (4, 2)


# --------------------------------------------------------------------------------------------
# Determinism.


@pytest.mark.slow
def test_same_seed_same_training_and_samples(teacher, tmp_path):
    """A second run with the same seed and flags: same losses, weights and samples."""
    other = str(tmp_path / "again")
    train(TrainConfig(**TINY), other, verbose=0)
    logs = [np.genfromtxt(os.path.join(d, "log.csv"), delimiter=",", names=True)["loss"]
            for d in (teacher, other)]
    (ma, _), (mb, _) = ckpt.load_model(teacher), ckpt.load_model(other)
    wa, wb = ma.get_weights(), mb.get_weights()
    noise = [np.random.default_rng(s).standard_normal((8, 2)).astype("float32") for s in (5, 6)]
    sa, sb, sc = ma.sample(noise[0], 4), mb.sample(noise[0], 4), ma.sample(noise[1], 4)
    assert not np.array_equal(sa, sc)  # the seed matters
    if BACKEND in ("jax", "tensorflow"):
        np.testing.assert_array_equal(logs[0], logs[1])
        for a, b in zip(wa, wb):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)
    else:  # torch CPU: see docs/reliability.md
        np.testing.assert_allclose(logs[0], logs[1], rtol=1e-4)
        np.testing.assert_allclose(sa, sb, atol=1e-4)


def test_sampling_twice_is_bit_identical(teacher, tmp_path):
    kwargs = dict(num_samples=8, seed=1, sampler="ancestral", gamma=0.5)
    a = generate(teacher, str(tmp_path / "a"), **kwargs)
    b = generate(teacher, str(tmp_path / "b"), **kwargs)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["samples"], a)


class _Killed(Exception):
    """Stands in for kill -9 right after a checkpoint was written."""


def _run_killed_after(monkeypatch, step, fn):
    """Runs fn with the run stopped right after its checkpoint of `step`, then fn again (the
    rerun of the same command resumes from that checkpoint)."""
    from keras_pd.runs import RunCallback

    real = RunCallback.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        real(self, epoch, logs)
        if self._step(epoch, self._batch) >= step:
            raise _Killed()

    with monkeypatch.context() as m:
        m.setattr(RunCallback, "on_epoch_end", on_epoch_end)
        with pytest.raises(_Killed):
            fn()
    fn()


def _training_state(directory):
    """{h5 dataset: array} of the newest checkpoint (weights, Adam moments, EMA, iteration
    counter) and its RNG states."""
    import h5py

    manager = ckpt.CheckpointManager(os.path.join(directory, "checkpoints"))
    weights, index = manager._paths(manager.steps()[0])
    out = {}
    with h5py.File(weights, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out, [value for _, value in ckpt.read_json(index)["seeds"]]


def _assert_same_run(a, b):
    (wa, sa), (wb, sb) = _training_state(a), _training_state(b)
    assert sorted(wa) == sorted(wb) and sa == sb
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    for x, y in zip(weights_of(a), weights_of(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_killed_and_resumed_teacher_is_bit_identical(teacher, tmp_path, monkeypatch,
                                                     no_sample_grids):
    """Stopped after its checkpoint of step 10 and rerun: the same weights, Adam moments, EMA,
    iteration counter and RNG states at step 20 as the uninterrupted run (`teacher`)."""
    resumed = str(tmp_path / "resumed")
    _run_killed_after(monkeypatch, 10, lambda: train(TrainConfig(**TINY), resumed, verbose=0))
    _assert_same_run(teacher, resumed)


@pytest.mark.one_backend("torch")  # the folder stream is backend-free; resume is checked per backend above
@pytest.mark.slow
def test_killed_and_resumed_teacher_on_a_streamed_folder_is_bit_identical(
        tmp_path, monkeypatch, no_sample_grids):
    """The same on an image folder read through Grain's worker threads (`sources.FolderSource`):
    batch k comes from the index sampler, so the resumed run reads the batches it would have."""
    from conftest import write_folder

    write_folder(str(tmp_path / "images"), per_class=20, size=(8, 8))
    # Dropout off: on PyTorch a run with dropout does not resume bit-identically, with any
    # input (docs/reliability.md, "Determinism"); this test is about the streamed input.
    cfg = dict(TINY, dataset=f"folder:{tmp_path / 'images'}", preset="digits_mlp",
               class_conditional=True, dropout=0.0)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train(TrainConfig(**cfg), straight, verbose=0)
    _run_killed_after(monkeypatch, 10, lambda: train(TrainConfig(**cfg), resumed, verbose=0))
    assert ckpt.read_card(resumed)["steps_trained"] == 20
    _assert_same_run(straight, resumed)


@pytest.mark.slow
@pytest.mark.one_backend("jax")  # the mechanism (variables and SeedGenerator states restored by
# position) is the teacher's, tested above on every backend; on TensorFlow this took 88 s
def test_killed_and_resumed_distillation_round_is_bit_identical(teacher, tmp_path, monkeypatch,
                                                                no_sample_grids):
    """The same for a distillation round (three SeedGenerators: the round's, the student's and
    the teacher's). The resumed call names its generators differently from the killed one, as
    a resumed `apps.distill` process does (it skips finished rounds, so creates fewer)."""
    from keras_pd.cascade import distill_round

    data = load_dataset("toy2d", seed=TINY["seed"])
    cfg = DistillConfig(updates_per_round=4, final_rounds_factor=1, checkpoint_every=2,
                        batch_size=32, seed=1)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    distill_round(teacher, straight, 2, cfg, 1, data, verbose=0)
    _run_killed_after(monkeypatch, 2,
                      lambda: distill_round(teacher, resumed, 2, cfg, 1, data, verbose=0))
    assert ckpt.read_card(resumed)["steps_trained"] == 4
    _assert_same_run(straight, resumed)


def test_seed_states_restore_by_position_not_by_name(teacher):
    """A SeedGenerator's path holds a process-wide counter, so the same generator of a rebuilt
    model has another name; its state is restored by position."""
    def build():
        model = copy_model(ckpt.load_model(teacher)[0])
        return DistillationModel(model, copy_model(model), 2, seed=5)

    a, b = build(), build()
    keras.random.normal((3,), seed=a.seed_generator)
    states = ckpt.seed_states(a)
    assert [p for p, _ in states] != [p for p, _ in ckpt.seed_states(b)]
    ckpt.restore_seed_states(b, json.loads(json.dumps(states)))  # as read from the index
    assert [v for _, v in ckpt.seed_states(b)] == [v for _, v in states]
    assert states[0][1] == [5, 1]  # the round's own generator, advanced by one draw
    # Checkpoints written before positional restore hold {path: state}: matched by path, and
    # a generator they do not name keeps its seed, with a warning.
    with pytest.warns(UserWarning, match="holds no RNG state"):
        ckpt.restore_seed_states(build(), {p: v for p, v in states})
