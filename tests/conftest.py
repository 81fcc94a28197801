"""Shared fixtures, and the suite's two markers (declared in pyproject.toml).

- `slow`: end-to-end runs, app subprocesses and long trainings. `pytest -m "not slow"` is the
  inner-loop tier; CI (`tools/run_tests.sh`) runs everything.
- `backend_free`: the outcome cannot depend on the Keras backend (data, checkpoint files, flag
  and argument errors, numpy metrics, reports, apps refusing bad input). A plain `pytest` runs
  them on whatever backend it has; `tools/run_tests.sh` sets KERAS_PD_BACKEND_FREE_ON to the
  backends whose passes share them (all three: each test goes to one pass, picked by a hash of
  its id, so that the passes end at about the same time) and the other passes deselect it
  (`pytest_collection_modifyitems` below), so each runs once per suite.
- `one_backend(NAME)`: an end-to-end run (a whole cascade, the main job, an app's kill and
  resume) whose backend-specific parts (the training step, the sampler, saving, restoring) are
  each checked on every backend by smaller tests here. `tools/run_tests.sh` runs it on the
  named backend's pass only; the long ones are spread over the three backends so that each pass
  runs some end to end. A plain `pytest` runs them all, on whatever backend it has.

Trained fixtures are session-scoped and shared: a test must not write into one (copy it, e.g.
`shutil.copytree(toy_teacher_dir, tmp_path / "t")`, when it needs to).
"""

import os
import zlib

import keras
import numpy as np
import pytest

#: Names the backends whose passes share the `backend_free` tests (unset: every run runs them).
BACKEND_FREE_ENV = "KERAS_PD_BACKEND_FREE_ON"


def _backend_free_backends():
    """The backends whose passes share the `backend_free` tests ([]: every run runs them)."""
    return [b.strip() for b in os.environ.get(BACKEND_FREE_ENV, "").split(",") if b.strip()]


def pytest_report_header(config):
    header = f"keras backend: {keras.backend.backend()} (keras {keras.__version__})"
    if _backend_free_backends():
        header += (f"; suite pass ({BACKEND_FREE_ENV}={os.environ[BACKEND_FREE_ENV]}): "
                   "other passes' backend_free and one_backend tests deselected")
    return header


def _runs_elsewhere(item):
    """Whether the suite (tools/run_tests.sh) runs this test on another backend's pass."""
    if item.get_closest_marker("backend_free"):
        on = _backend_free_backends()
        # A stable hash (not Python's salted hash()): every pass must agree on the split.
        pick = on[zlib.crc32(item.nodeid.encode()) % len(on)] if on else None
        return pick is not None and pick != keras.backend.backend()
    one = item.get_closest_marker("one_backend")
    return one is not None and one.args[0] != keras.backend.backend()


def pytest_collection_modifyitems(config, items):
    if not _backend_free_backends():
        return  # not the suite's split passes: run everything here
    keep, drop = [], []
    for item in items:
        (drop if _runs_elsewhere(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    yield


@pytest.fixture
def no_sample_grids(monkeypatch):
    """For tests that check no sample grid: runs write none (a grid at a run's end is not
    training state), which skips compiling a sampler per run."""
    monkeypatch.setattr("keras_pd.runs.sample_grid", lambda *a, **k: None)


#: Updates of the shared toy2d teacher: at a learning rate of 3e-3 its 64-step DDIM samples
#: score a mean mixture log-density of about -1.5 with every mode covered (1500 updates at
#: 1e-3 scored -2.0), in a third of the updates; on torch an update costs the same at any size,
#: so the fixture's time is its update count.
TOY_TEACHER_STEPS = 500


@pytest.fixture(scope="session")
def toy_teacher_dir(tmp_path_factory):
    """A toy2d MLP teacher trained for 256-step DDIM sampling, shared by the tests."""
    from keras_pd.training import TrainConfig, train

    workdir = str(tmp_path_factory.mktemp("toy") / "teacher")
    train(TrainConfig(dataset="toy2d", train_steps=TOY_TEACHER_STEPS, batch_size=256,
                      warmup_steps=50, checkpoint_every=250, sample_every=100000,
                      sampling_steps=256, learning_rate=3e-3), workdir, verbose=0)
    return workdir


def write_folder(root, classes=("a", "b"), per_class=5, size=(6, 4), mode="RGB", seed=0):
    """PNG images of random pixels (width, height = size) in one subfolder per class (or in
    `root` itself for classes=None); returns {path: uint8 array}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    out = {}
    for c in classes or [None]:
        folder = os.path.join(root, c) if c else root
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
            path = os.path.join(folder, f"{i:03d}.png")
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
            out[path] = pixels
    return out
