"""Shared fixtures, and the suite's two markers (declared in pyproject.toml).

- `slow`: end-to-end runs, app subprocesses and long trainings. `pytest -m "not slow"` is the
  inner-loop tier; CI (`tools/run_tests.sh`) runs everything.
- `backend_free`: the outcome cannot depend on the Keras backend (data, checkpoint files, flag
  and argument errors, numpy metrics, reports, apps refusing bad input). A plain `pytest` runs
  them on whatever backend it has; `tools/run_tests.sh` sets KERAS_PD_BACKEND_FREE_ON to the
  one backend whose pass runs them (jax: its app subprocesses start fastest) and the other
  passes deselect them (`pytest_collection_modifyitems` below), so each runs once per suite.
- `one_backend(NAME)`: an end-to-end run (a whole cascade, the main job, an app's kill and
  resume) whose backend-specific parts (the training step, the sampler, saving, restoring) are
  each checked on every backend by smaller tests here. `tools/run_tests.sh` runs it on the
  named backend's pass only; the long ones are spread over the three backends so that each pass
  runs some end to end. A plain `pytest` runs them all, on whatever backend it has.

Trained fixtures are session-scoped and shared: a test must not write into one (copy it, e.g.
`shutil.copytree(toy_teacher_dir, tmp_path / "t")`, when it needs to).
"""

import os

import keras
import numpy as np
import pytest

#: Names the backend whose pass runs the `backend_free` tests (unset: every run runs them).
BACKEND_FREE_ENV = "KERAS_PD_BACKEND_FREE_ON"


def _backend_free_runs_elsewhere():
    """The backend that runs the `backend_free` tests, when it is not this one; else None."""
    on = os.environ.get(BACKEND_FREE_ENV, "").strip()
    return on if on and on != keras.backend.backend() else None


def pytest_report_header(config):
    header = f"keras backend: {keras.backend.backend()} (keras {keras.__version__})"
    if os.environ.get(BACKEND_FREE_ENV, "").strip():
        header += (f"; suite pass ({BACKEND_FREE_ENV}={os.environ[BACKEND_FREE_ENV]}): "
                   "backend_free and other backends' one_backend tests deselected")
    return header


def _runs_elsewhere(item):
    """Whether the suite (tools/run_tests.sh) runs this test on another backend's pass."""
    if item.get_closest_marker("backend_free"):
        return _backend_free_runs_elsewhere() is not None
    one = item.get_closest_marker("one_backend")
    return one is not None and one.args[0] != keras.backend.backend()


def pytest_collection_modifyitems(config, items):
    if not os.environ.get(BACKEND_FREE_ENV, "").strip():
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


@pytest.fixture(scope="session")
def toy_teacher_dir(tmp_path_factory):
    """A toy2d MLP teacher trained for 256-step DDIM sampling, shared by the tests."""
    from keras_pd.training import TrainConfig, train

    workdir = str(tmp_path_factory.mktemp("toy") / "teacher")
    train(TrainConfig(dataset="toy2d", train_steps=1500, batch_size=256, warmup_steps=100,
                      checkpoint_every=500, sample_every=100000, sampling_steps=256,
                      learning_rate=1e-3), workdir, verbose=0)
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
