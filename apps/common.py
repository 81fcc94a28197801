"""What every app shares: quiet logs, and user mistakes as one line with a nonzero exit."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly():
    """Imports TensorFlow with stderr muted: its C++ start-up banner ignores log levels."""
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


# TensorFlow is the default backend and, on every backend, the TensorBoard writer.
_import_tensorflow_quietly()


def run(main):
    """absl.app.run(main), turning a user error (ValueError and subclasses) into one line, exit 2.

    Errors of other types are bugs and keep their traceback.
    """
    from absl import app

    def wrapped(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            return main(argv)
        except (ValueError, FloatingPointError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume", file=sys.stderr)
            sys.exit(130)

    app.run(wrapped)


def progress_verbosity():
    """Keras fit verbosity: a live bar on a terminal, one line per checkpoint interval otherwise."""
    return 1 if sys.stdout.isatty() else 2
