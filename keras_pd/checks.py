"""Argument checks shared by the library and the apps (a leaf module: imports nothing from
keras_pd), each raising a one-line ValueError that names the argument."""

import math
import operator
import re

import numpy as np


def _describe(value):
    """A one-line, bounded description of a rejected value for an error message."""
    shape = getattr(value, "shape", None)
    if shape is not None and len(tuple(shape)) > 0:
        return f"an array of shape {tuple(shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def one_line(error, limit=500):
    """An exception's message as one bounded line: whitespace collapsed, terminal colour codes
    (Keras bolds parts of its messages) removed."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())
    return text[:limit]


def check_positive_int(value, name):
    """Validates a count (steps, batch size, updates, ...): an integer >= 1.

    Accepted: Python ints, numpy integer scalars and 0-d integer arrays, and integral floats
    (4.0, numpy.float32(4.0)), whatever produced them (a flag, a JSON card, a numpy
    computation). Rejected: bools (True is not a count), strings, None, arrays with any axis,
    non-integral or non-finite numbers, and values below 1.

    Args:
        value: the value to check.
        name: the argument's name, for the error message.

    Returns:
        `value` as a Python int.

    Raises:
        ValueError: one line naming `name`, when `value` is not a positive integer.
    """
    error = ValueError(f"{name} must be a positive integer, got {_describe(value)}")
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise error
    if getattr(value, "dtype", None) is not None and "bool" in str(value.dtype):
        raise error
    shape = getattr(value, "shape", None)
    if shape is not None and len(tuple(shape)) > 0:
        raise error
    try:
        number = operator.index(value)  # int, numpy integers, 0-d integer arrays
    except TypeError:
        try:
            real = float(value)  # integral floats, 0-d float arrays
        except (TypeError, ValueError, OverflowError):
            raise error from None
        if not math.isfinite(real) or real != math.floor(real):
            raise error from None
        number = int(real)
    if number < 1:
        raise error
    return int(number)
