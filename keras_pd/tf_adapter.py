"""TensorFlow as a helper library on any Keras backend: imported after Keras, and quietly.

keras_pd uses TensorFlow beside JAX and PyTorch for a few things (tensorflow-datasets, the
TensorBoard writer, LiteRT export from JAX, the LiteRT interpreter's fallback). Two rules for
importing it, kept here so that every such import follows them:

* **Keras first.** Under `KERAS_BACKEND=torch`, `import tensorflow` loads TensorFlow's native
  libraries and then imports Keras, whose torch backend imports `torch._dynamo` and triton; with
  the CUDA build of PyTorch (and triton) that a plain `pip install` resolves, triton's import
  then crashes the process with a segmentation fault. Keras (hence triton) first, TensorFlow
  second works. `tools/check_latest.sh` runs every app in such an install (docs/reliability.md).
* **Quietly.** TensorFlow's C++ start-up banner (CUDA probing, CPU features) goes to file
  descriptor 2 whatever Python's log levels say; it is muted for the import.

Nothing here imports TensorFlow at module level.
"""

import contextlib
import importlib
import importlib.util
import os
import sys

__all__ = ["has_tensorboard", "has_tensorflow", "import_tensorflow"]


def _installed(*names):
    return all(importlib.util.find_spec(name) is not None for name in names)


def has_tensorflow():
    """Whether TensorFlow is installed (looked up without importing it)."""
    return _installed("tensorflow")


def has_tensorboard():
    """Whether Keras' TensorBoard callback can write here: it needs tensorflow and tensorboard,
    on any backend (looked up without importing them)."""
    return _installed("tensorflow", "tensorboard")


@contextlib.contextmanager
def _stderr_muted():
    """Points file descriptor 2 at /dev/null (C++ writes there directly), then restores it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow(module="tensorflow"):
    """Imports and returns `module` (TensorFlow, or a package built on it) after Keras.

    Args:
        module: "tensorflow" or a module that imports it, e.g. "tensorflow_datasets".

    Returns:
        The module.

    Raises:
        ImportError: when it is not installed (raised after stderr is restored).
    """
    if sys.modules.get(module) is not None:  # (None there means "blocked": import raises)
        return sys.modules[module]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_muted():
        # On the tensorflow backend Keras imports TensorFlow itself: muted too.
        import keras  # noqa: F401  (first: see the module docstring)

        return importlib.import_module(module)
