"""What every app shares: quiet logs, and user mistakes as one line with a nonzero exit.

Exit codes: 2 for a user mistake (bad flag, bad file, unusable run directory, non-finite loss),
1 for a failed read or write (disk full, permissions), 130 for Ctrl-C; the one line starts with
"error: ". Anything else is a bug and keeps its traceback.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKENDS = ("tensorflow", "jax", "torch")


def _configured_backend():
    """The backend Keras will pick: KERAS_BACKEND, else keras.json's, else tensorflow."""
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        import json

        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


BACKEND = _configured_backend()
if BACKEND not in BACKENDS:
    # Checked before Keras is imported, whose own failure is a traceback.
    print(f"error: unknown KERAS_BACKEND {BACKEND!r}; use one of {', '.join(BACKENDS)}",
          file=sys.stderr)
    sys.exit(2)


def _import_tensorflow_quietly():
    """Imports TensorFlow with stderr muted: its C++ start-up banner ignores log levels.

    Only for KERAS_BACKEND=tensorflow, where Keras imports it anyway. On JAX and PyTorch the
    apps leave TensorFlow alone: the library imports it when it needs it, after Keras
    (keras_pd.tf_adapter says why: under torch, TensorFlow first can crash the process).
    """
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            except ImportError:
                pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)


if BACKEND == "tensorflow":
    _import_tensorflow_quietly()


def _define_shared_flags():
    from absl import flags

    if "unsafe_deserialization" not in flags.FLAGS:
        flags.DEFINE_boolean("unsafe_deserialization", False,
                             "Load models holding Python code (a Lambda layer), which Keras' "
                             "safe mode refuses: only for files you trust.")


_define_shared_flags()


def _fail(message, code=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _parse_flags(argv):
    """absl's flag parsing, its errors (unknown, malformed, missing flags) as one line."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e} (see --helpshort)")


def run(main):
    """absl.app.run(main), turning a user error (ValueError and subclasses) into one line, exit 2.

    Errors of other types are bugs and keep their traceback.
    """
    from absl import app

    def wrapped(argv):
        if len(argv) > 1:
            _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
        try:
            from absl import flags

            from keras_pd import checkpoint

            checkpoint.allow_unsafe_deserialization(flags.FLAGS.unsafe_deserialization)
            return main(argv)
        except (ValueError, FloatingPointError) as e:
            _fail(" ".join(str(e).split()) or type(e).__name__)
        except OSError as e:  # disk full, permissions: the environment, not a bug
            _fail(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}", code=1)
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume", file=sys.stderr)
            sys.exit(130)

    app.run(wrapped, flags_parser=_parse_flags)


def progress_verbosity():
    """Keras fit verbosity: a live bar on a terminal, one line per checkpoint interval otherwise."""
    return 1 if sys.stdout.isatty() else 2
