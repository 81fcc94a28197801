"""Run directories: model cards, atomic checkpoints that survive kill -9, resume state, locks.

A run directory (a teacher's workdir or a distilled student's directory) holds:

    card.json            the model card: what the model is and how it was made
    model.keras          the model to use downstream (EMA weights for teachers), no optimizer
    checkpoints/         full training state for resume:
        ckpt-00001000.weights.h5   raw weights + optimizer slots (EMA included)
        ckpt-00001000.json         step, RNG states, the card at that step
    lock                 held while a run writes here

Every file is written to a temporary name in the same directory, then renamed, so a kill leaves
either the old file or the new one. A checkpoint counts only once its JSON (written last) names a
weights file of the recorded size and SHA-256; the previous one is deleted only after the new one
is complete. Weights holding NaN or Inf are never written (FloatingPointError instead).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import warnings

import keras
import numpy as np

from keras_pd.checks import one_line

CARD_NAME = "card.json"
MODEL_NAME = "model.keras"
CARD_VERSION = 1


class CheckpointError(ValueError):
    """A run directory is missing, unusable, or does not match what was asked for."""


#: The opt-in flag named in the error for a model holding code (a `Lambda` layer).
UNSAFE_FLAG = "--unsafe_deserialization"
_unsafe = {"allowed": False}


def allow_unsafe_deserialization(allowed=True):
    """Lets `load_keras_file` load models holding Python code (Keras' safe_mode off, for the
    rest of the process): only for files the user trusts (the apps' --unsafe_deserialization)."""
    _unsafe["allowed"] = bool(allowed)
    if allowed:  # copies of such a model (students, clones) deserialize it again
        keras.config.enable_unsafe_deserialization()


def load_keras_file(path):
    """keras.saving.load_model(path) uncompiled, in Keras safe mode unless allowed otherwise.

    Raises:
        CheckpointError: one line: the file needs unsafe deserialization (naming the flag), or
            it cannot be loaded (missing, corrupt, an unknown layer).
    """
    if not os.path.exists(path):
        raise CheckpointError(f"no such file: {path}")
    safe = not _unsafe["allowed"]
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=safe)
    except Exception as e:  # corrupt zip, h5 or config: one clear line
        detail = one_line(e, limit=None)
        if safe and "safe_mode" in detail:
            raise CheckpointError(
                f"{path} holds Python code (a Lambda layer), which Keras refuses to load in safe "
                f"mode: pass {UNSAFE_FLAG} (from Python: checkpoint.allow_unsafe_deserialization()) "
                "only if you trust the file") from None
        missing = re.search(r"Could not locate (?:function|class) '([^']+)'", detail)
        if missing:
            raise CheckpointError(
                f"cannot load {path}: it uses {missing.group(1)!r}, a custom function or class "
                "of the code that saved it: from Python, import that code, load the model and "
                "pass the object") from None
        raise CheckpointError(f"cannot load {path}: {type(e).__name__}: {detail[:500]}") from None


def atomic_write(path, write_fn):
    """Calls write_fn(tmp_path), then renames tmp_path to `path` (same directory, atomic).

    Returns:
        What write_fn returned.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # Keep the suffix: Keras picks the format from it (.keras, .weights.h5).
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{base}")
    try:
        result = write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return result
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    """Writes JSON atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_card(directory, card):
    """Writes the model card (REFERENCE 8: the parameterization travels with the model)."""
    card = dict(card, card_version=CARD_VERSION, backend=keras.backend.backend(),
                keras_version=keras.__version__)
    write_json(os.path.join(directory, CARD_NAME), card)
    return card


def read_card(directory):
    """Reads a run directory's model card.

    Raises:
        CheckpointError: when the directory or its card is missing or unreadable.
    """
    path = os.path.join(directory, CARD_NAME)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no such directory: {directory}")
    if not os.path.exists(path):
        raise CheckpointError(f"{directory} holds no model card ({CARD_NAME}): not a keras-pd run")
    try:
        card = read_json(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"model card {path} is unreadable: {e}") from None
    if card.get("card_version") != CARD_VERSION:
        raise CheckpointError(
            f"model card {path} has version {card.get('card_version')!r}; this keras-pd reads "
            f"version {CARD_VERSION}"
        )
    return card


def clone_uncompiled(model):
    """A fresh, uncompiled copy of a model with the same config and weights."""
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


@contextlib.contextmanager
def ema_weights(model):
    """Temporarily swaps the optimizer's EMA weights into the model (no-op without EMA)."""
    optimizer = getattr(model, "optimizer", None)
    # mixed_float16: Keras wraps the optimizer in a LossScaleOptimizer; the EMA is the inner one's.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if not getattr(optimizer, "use_ema", False) or not averages or not optimizer.built:
        yield model
        return
    pairs = [(v, a) for v, a in zip(model.trainable_variables, averages) if a is not None]
    # Copies through numpy: on JAX, sharing a buffer with a donated optimizer slot breaks fit.
    saved = [keras.ops.convert_to_numpy(v) for v, _ in pairs]
    for v, a in pairs:
        v.assign(keras.ops.convert_to_numpy(a))
    try:
        yield model
    finally:
        for (v, _), value in zip(pairs, saved):
            v.assign(value)


def save_model(directory, model, card):
    """Writes model.keras (no optimizer, EMA weights if the optimizer keeps them) and card.json."""
    with ema_weights(model):
        clone = clone_uncompiled(model)
    check_finite_weights(clone, f"{os.path.join(directory, MODEL_NAME)}")
    atomic_write(os.path.join(directory, MODEL_NAME), clone.save)
    return write_card(directory, card)


def load_model(directory):
    """Loads a run directory's model and card, in Keras safe mode (`load_keras_file`).

    Returns:
        (model, card).

    Raises:
        CheckpointError: missing or corrupt files, or a card that does not describe the model.
    """
    card = read_card(directory)
    path = os.path.join(directory, MODEL_NAME)
    if not os.path.exists(path):
        raise CheckpointError(f"{directory} has a card but no {MODEL_NAME}")
    model = load_keras_file(path)
    check_card_matches(card, model, path)
    return model, card


def check_card_matches(card, model, where):
    """Raises CheckpointError when the card and the model disagree (REFERENCE 8)."""
    for key in ("parameterization", "data_shape", "num_classes"):
        if key in card:
            want = card[key]
            have = getattr(model, key)
            have = list(have) if isinstance(have, tuple) else have
            if want != have:
                raise CheckpointError(f"{where}: card says {key}={want!r}, model has {have!r}")
    schedule = getattr(model, "schedule", None)
    if "schedule" in card and schedule is not None and card["schedule"] != schedule.to_config():
        raise CheckpointError(f"{where}: card says schedule={card['schedule']!r}, model has "
                              f"{schedule.to_config()!r}")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_finite_weights(model, what):
    """Raises FloatingPointError naming `what` when a model or optimizer variable is NaN or Inf."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    for v in variables:
        if "float" not in str(v.dtype):
            continue
        value = np.asarray(keras.ops.convert_to_numpy(v))
        if not np.all(np.isfinite(value)):
            raise FloatingPointError(
                f"{v.path} holds non-finite values at {what}; not saved, the last good "
                f"checkpoint is kept")


class CheckpointManager:
    """Numbered training-state checkpoints in `directory`, newest `keep` kept.

    Args:
        directory: where checkpoints live (created on first save).
        keep: how many complete checkpoints to keep (>= 1).
    """

    _PATTERN = re.compile(r"^ckpt-(\d+)\.json$")

    def __init__(self, directory, keep=2):
        self.directory = directory
        self.keep = max(1, int(keep))

    def _paths(self, step):
        stem = os.path.join(self.directory, f"ckpt-{step:08d}")
        return stem + ".weights.h5", stem + ".json"

    def steps(self):
        """Steps with a checkpoint index file, newest first (not yet validated)."""
        if not os.path.isdir(self.directory):
            return []
        found = [int(m.group(1)) for m in map(self._PATTERN.match, os.listdir(self.directory)) if m]
        return sorted(found, reverse=True)

    def save(self, model, step, state):
        """Writes the model's weights and optimizer state plus `state` for `step`.

        Raises:
            FloatingPointError: a weight or optimizer variable is NaN or Inf (nothing written).
            OSError: the write failed (disk full...); earlier checkpoints are untouched.
        """
        check_finite_weights(model, f"step {step}")
        weights, index = self._paths(step)
        atomic_write(weights, model.save_weights)
        try:
            write_json(index, dict(state, step=int(step), weights=os.path.basename(weights),
                                   weights_bytes=os.path.getsize(weights),
                                   weights_sha256=file_sha256(weights)))
        except BaseException:
            if not os.path.exists(index):  # a weights file without its index is never used
                os.remove(weights)
            raise
        for old in self.steps()[self.keep:]:
            for p in self._paths(old)[::-1]:
                if os.path.exists(p):
                    os.remove(p)

    def restore(self, model):
        """Loads the newest good checkpoint into a compiled, built model.

        A checkpoint whose files are missing, truncated or unreadable is skipped with a warning.

        Returns:
            The checkpoint's state dict (with "step"), or None when there is no checkpoint.

        Raises:
            CheckpointError: when checkpoints exist but none of them loads.
        """
        steps = self.steps()
        for step in steps:
            weights, index = self._paths(step)
            try:
                state = read_json(index)
                if os.path.getsize(weights) != state["weights_bytes"]:
                    raise ValueError("size differs from the recorded one (truncated?)")
                if "weights_sha256" in state and file_sha256(weights) != state["weights_sha256"]:
                    raise ValueError("SHA-256 differs from the recorded one (corrupted)")
                model.load_weights(weights)
                return state
            except Exception as e:
                warnings.warn(f"skipping checkpoint {index}: {type(e).__name__}: {e}")
        if steps:
            raise CheckpointError(f"no loadable checkpoint in {self.directory} (tried steps "
                                  f"{', '.join(map(str, steps))}); move it away to start over")
        return None


def _seed_variables(model):
    return [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]


def seed_states(model):
    """Every SeedGenerator state in a model, in the model's variable order (not kept by
    load_weights; REFERENCE 8).

    Returns:
        [[path, [seed, counter]], ...]. Restored by position: a SeedGenerator's path holds a
        process-wide counter ("seed_generator_7/seed_generator_state") that depends on how many
        were created before it, so a resumed process (or a second run in one process) names the
        same generator differently; the position in the model does not change.
    """
    return [[v.path, np.asarray(keras.ops.convert_to_numpy(v)).tolist()]
            for v in _seed_variables(model)]


def restore_seed_states(model, states):
    """Assigns states saved by `seed_states` (a {path: value} dict of older checkpoints is
    matched by path; a generator it does not name keeps its initial state, with a warning)."""
    variables = _seed_variables(model)
    if isinstance(states, dict):  # checkpoints written before positional restore
        missing = [v.path for v in variables if v.path not in states]
        for v in variables:
            if v.path in states:
                v.assign(np.asarray(states[v.path], dtype=v.dtype))
        if missing:
            warnings.warn(f"checkpoint holds no RNG state for {', '.join(missing)}: those "
                          f"draws restart from their seed (the run is not bit-identical to an "
                          f"uninterrupted one)")
        return
    if len(states) != len(variables):
        raise CheckpointError(f"checkpoint holds {len(states)} RNG states, the model has "
                              f"{len(variables)}: not a checkpoint of this model")
    for v, (_, value) in zip(variables, states):
        v.assign(np.asarray(value, dtype=v.dtype))


def remove_stale_temporaries(directory):
    """Deletes `.tmp-*` files a killed writer left in a run directory (call under its lock)."""
    for sub in ("", "checkpoints", "samples"):
        path = os.path.join(directory, sub)
        if not os.path.isdir(path):
            continue
        for name in os.listdir(path):
            if name.startswith(".tmp-") and os.path.isfile(os.path.join(path, name)):
                os.remove(os.path.join(path, name))


@contextlib.contextmanager
def workdir_lock(directory):
    """Holds an exclusive lock on a run directory; a second run on it is refused.

    Raises:
        CheckpointError: when another process holds the lock.
    """
    os.makedirs(directory, exist_ok=True)
    f = open(os.path.join(directory, "lock"), "w")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CheckpointError(f"{directory} is in use by another run (lock held)") from None
        f.write(str(os.getpid()))
        f.flush()
        remove_stale_temporaries(directory)
        yield
    finally:
        f.close()
