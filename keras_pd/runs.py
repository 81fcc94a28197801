"""One resumable run: what teacher training and every distillation round share.

`resume_and_fit` compiles a model under its engine, restores the newest checkpoint of its run
directory (weights, optimizer and EMA state, step counter, RNG states, card) and fits it to the
requested number of updates from exactly there: data order and noise continue as if the run had
never stopped, losing at most one checkpoint interval. `RunCallback` writes the checkpoints, the
downstream model, its card and sample grids. `make_optimizer` is the one optimizer recipe.
"""

import math
import os
import time
import warnings

import keras
import numpy as np

from keras_pd import checkpoint as ckpt
from keras_pd.data import BatchStream
from keras_pd.images import save_grid_png
from keras_pd.nonfinite import skip_nonfinite_updates
from keras_pd.replicas import MAX_STEPS_PER_EXECUTION
from keras_pd.torch_optimizer import fuse_for_torch


def make_optimizer(learning_rate, warmup_steps=0, decay_steps=None, ema_decay=0.0,
                   weight_decay=0.0, grad_clip=1.0, skip_nonfinite=False):
    """Adam(0.9, 0.999, 1e-8) with linear warmup, optional linear decay to 0, EMA and clipping.

    Teachers: warmup then constant (REFERENCE 6). Distillation: no warmup, linear decay over the
    round, no EMA (REFERENCE 5). `skip_nonfinite`: updates whose gradients hold NaN or Inf
    change nothing (`keras_pd.nonfinite`). On PyTorch the EMA and clipping run as fused
    `_foreach` calls (`keras_pd.torch_optimizer`).
    """
    if decay_steps:
        schedule = keras.optimizers.schedules.PolynomialDecay(
            learning_rate, decay_steps, end_learning_rate=0.0, power=1.0)
    elif warmup_steps:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=learning_rate,
            warmup_steps=warmup_steps)
    else:
        schedule = learning_rate
    cls = keras.optimizers.AdamW if weight_decay else keras.optimizers.Adam
    kwargs = dict(weight_decay=weight_decay) if weight_decay else {}
    optimizer = cls(learning_rate=schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                    global_clipnorm=grad_clip or None, use_ema=ema_decay > 0,
                    ema_momentum=ema_decay or 0.99, **kwargs)
    optimizer = fuse_for_torch(optimizer)
    return skip_nonfinite_updates(optimizer) if skip_nonfinite else optimizer


class RunCallback(keras.callbacks.Callback):
    """Stops at the requested step; writes checkpoints, the downstream model, card and grids.

    Args:
        workdir: the run directory.
        card: the model card (updated with the step count at each save).
        start_step: the step the run (re)started from.
        total_steps: stop after this many updates.
        steps_per_epoch: updates between checkpoints.
        sample_every: updates between sample grids (0: never).
        sample_fn: callable(model, path) writing a sample grid.
        artifact: the model written to workdir/model.keras (default: the model being fit; a
            distillation run writes its student).
        skip_nonfinite: the optimizer skips non-finite updates: a non-finite loss does not stop
            the run; skipped updates are counted in the card (`skipped_updates`).
    """

    def __init__(self, workdir, card, start_step, total_steps, steps_per_epoch, sample_every,
                 sample_fn=None, artifact=None, skip_nonfinite=False):
        super().__init__()
        self.workdir = workdir
        self.card = card
        self.start_step = start_step
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.sample_every = sample_every
        self.sample_fn = sample_fn
        self.artifact = artifact
        self.skip_nonfinite = skip_nonfinite
        self.manager = ckpt.CheckpointManager(os.path.join(workdir, "checkpoints"))
        self._epoch0 = None
        self._t0 = time.time()
        self.wall_time = card.get("wall_time_s", 0.0)

    def _step(self, epoch, batch):
        return self.start_step + (epoch - self._epoch0) * self.steps_per_epoch + batch + 1

    def on_epoch_begin(self, epoch, logs=None):
        if self._epoch0 is None:
            self._epoch0 = epoch
        self._epoch = epoch
        self._batch = -1

    def on_train_batch_end(self, batch, logs=None):
        self._batch = batch
        if (not self.skip_nonfinite and logs and "loss" in logs
                and not math.isfinite(float(logs["loss"]))):
            self.model.stop_training = True
            step, group = self._step(self._epoch, batch), self.model.steps_per_execution
            where = (f"at step {step}" if group == 1 else
                     f"at one of steps {step - group + 1}-{step} (run as one compiled call)")
            raise FloatingPointError(
                f"loss is {logs['loss']} {where}; the last good checkpoint is kept. Lower "
                f"--learning_rate or check the data.")
        if self._step(self._epoch, batch) >= self.total_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        step = self._step(epoch, self._batch)
        now = time.time()
        self.wall_time += now - self._t0
        self._t0 = now
        self.card.update(steps_trained=int(step), wall_time_s=round(self.wall_time, 1))
        if logs and "loss" in logs and math.isfinite(float(logs["loss"])):
            self.card["final_loss"] = float(logs["loss"])
        if self.skip_nonfinite:
            # A skipped update leaves the optimizer's iteration counter where it was.
            skipped = int(step) - int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if skipped > self.card.get("skipped_updates", 0):
                warnings.warn(f"{skipped - self.card.get('skipped_updates', 0)} update(s) with "
                              f"non-finite gradients skipped up to step {step}")
            self.card["skipped_updates"] = skipped
        self.manager.save(self.model, step, dict(seeds=ckpt.seed_states(self.model),
                                                 card=self.card))
        artifact = self.artifact or self.model
        ckpt.save_model(self.workdir, artifact, self.card)
        if self.sample_fn and self.sample_every and (
                step // self.sample_every > (step - self._batch - 1) // self.sample_every
                or step >= self.total_steps):
            with ckpt.ema_weights(self.model):
                self.sample_fn(artifact, os.path.join(self.workdir, "samples",
                                                      f"step_{step:08d}.png"))


def steps_per_execution(start, total, checkpoint_every, limit=MAX_STEPS_PER_EXECUTION):
    """Updates per call into the compiled train function for a run from `start` to `total`.

    Keras then returns to Python (callbacks, logs, the next batches) once per group of updates
    instead of after every one (measured in docs/performance.md). The group size is the largest
    divisor <= `limit` of every span the run is cut into (the checkpoint interval, the updates
    done and left), so no call runs past a checkpoint or the end. PyTorch runs eagerly, one
    update per call (Keras requires 1).
    """
    if keras.backend.backend() == "torch":
        return 1
    span = math.gcd(math.gcd(checkpoint_every, total - start), start)
    return max(d for d in range(1, limit + 1) if span % d == 0)


def fit_steps(model, engine, stream, start, total, checkpoint_every, callbacks, verbose):
    """`model.fit` on `stream` from update `start` to `total`, one epoch per checkpoint interval.

    The one place a run is handed to Keras: the engine's input, the epoch arithmetic that makes
    a resumed run continue where its checkpoint stopped, and the updates per compiled call.
    """
    model.steps_per_execution = steps_per_execution(start, total, checkpoint_every,
                                                    engine.steps_per_execution_limit())
    initial_epoch = start // checkpoint_every
    epochs = initial_epoch + math.ceil((total - start) / checkpoint_every)
    model.fit(engine.input(stream), steps_per_epoch=checkpoint_every, epochs=epochs,
              initial_epoch=initial_epoch, verbose=verbose, shuffle=False, callbacks=callbacks)


def sample_grid(model, path, num_steps, seed=0, num=64):
    """Writes a grid (or a scatter for vector data) of `num` DDIM samples to `path`."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((num,) + model.data_shape).astype("float32")
    labels = (np.arange(num) % model.num_classes).astype("int32") if model.num_classes else None
    samples = model.sample(noise, num_steps, labels=labels)
    save_grid_png(samples, path)
    return samples


def log_callbacks(workdir):
    """A CSV log of every epoch, and TensorBoard's writer where tensorflow and tensorboard are
    installed (Keras' writer needs them on any backend; `tf_adapter` imports TensorFlow after
    Keras, the order that keeps TensorFlow and torch's triton from crashing each other)."""
    from keras_pd import tf_adapter

    callbacks = [keras.callbacks.CSVLogger(os.path.join(workdir, "log.csv"), append=True)]
    if tf_adapter.has_tensorboard():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(workdir, "logs"),
                                                     write_graph=False))
    return callbacks


def resume_and_fit(model, optimizer, workdir, card, total_steps, *, engine, source, batch_size,
                   data_seed, checkpoint_every, sample_every=0, sample_steps=None, sample_seed=0,
                   artifact=None, skip_nonfinite=False, log=False, title=None, verbose=1):
    """Compiles `model`, restores `workdir`'s newest checkpoint and fits it to `total_steps`.

    Call it under `checkpoint.workdir_lock(workdir)` and `engine.scope()`, where `model` was
    built. A rerun on the same workdir continues from the last checkpoint: batch k of the data
    stream and every random draw are those an uninterrupted run would have seen.

    Args:
        model: the Keras model to fit (a DiffusionModel, or a distillation model).
        optimizer: its optimizer (`make_optimizer`), adapted to the engine here.
        workdir: the run directory.
        card: the model card of a fresh run; a resumed run continues its saved card, with the
            fresh card's `config` (the current settings).
        total_steps: updates in all.
        engine: the `distribute.Engine` the model was built under.
        source: the training examples (`data.Dataset.source`: labels only for conditional
            models), read a batch at a time.
        batch_size: the global batch.
        data_seed: seed of the data order.
        checkpoint_every: updates between checkpoints.
        sample_every: updates between sample grids (0: never; the last update always has one
            when > 0).
        sample_steps: DDIM steps of those grids.
        sample_seed: their noise seed.
        artifact: the model written to workdir/model.keras (default: `model`).
        skip_nonfinite: updates with non-finite gradients are skipped (see RunCallback).
        log: also write log.csv and TensorBoard logs.
        title: printed (when verbose) before the first update of this call.
        verbose: Keras progress level.

    Returns:
        (card, start): the card after the last update, and the update this call started from.
    """
    model.compile(optimizer=engine.optimizer(optimizer),
                  jit_compile=engine.jit_compile(total_steps))
    model.optimizer.build(model.trainable_variables)
    state = ckpt.CheckpointManager(os.path.join(workdir, "checkpoints")).restore(model)
    start = 0
    if state is not None:
        ckpt.restore_seed_states(model, state["seeds"])
        card = dict(state["card"], **({"config": card["config"]} if "config" in card else {}))
        start = int(state["step"])
    if start >= total_steps:
        if verbose:
            print(f"{workdir}: already trained for {start} updates")
        return card, start
    if verbose:
        if title:
            print(title, flush=True)
        if start:
            print(f"{workdir}: resuming from the checkpoint of step {start}", flush=True)
    run_cb = RunCallback(workdir, card, start, total_steps, checkpoint_every, sample_every,
                         lambda m, p: sample_grid(m, p, sample_steps, seed=sample_seed),
                         artifact=artifact, skip_nonfinite=skip_nonfinite)
    stream = BatchStream(source, None, batch_size, seed=data_seed, start_step=start)
    fit_steps(model, engine, stream, start, total_steps, checkpoint_every,
              [run_cb] + (log_callbacks(workdir) if log else []), verbose)
    return run_cb.card, start
