import os

import keras
import numpy as np
import pytest


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()} (keras {keras.__version__})"


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
