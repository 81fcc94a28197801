"""Teacher training as a resumable run: data -> DiffusionModel -> fit, with checkpoints.

`train(TrainConfig(...), workdir)` is what `apps.train` calls. Running it again on the same
workdir resumes from the newest checkpoint (weights, optimizer and EMA state, step counter,
data order and noise RNG), losing at most one checkpoint interval.
"""

import dataclasses
import importlib.util
import math
import os
import time
import warnings

import keras
import numpy as np

from keras_pd import checkpoint as ckpt
from keras_pd import distribute
from keras_pd.data import BatchStream, check_dataset_name, load_dataset
from keras_pd.images import save_grid_png
from keras_pd.diffusion import DiffusionModel
from keras_pd.nonfinite import skip_nonfinite_updates
from keras_pd.torch_optimizer import fuse_for_torch
from keras_pd.networks import make_network
from keras_pd.networks.presets import get_preset
from keras_pd.parameterization import check_parameterization, output_channels
from keras_pd.schedules import check_steps
from keras_pd.weighting import check_weighting

# Per-dataset defaults: what a user gets when leaving --preset and sizes unset.
DATASET_DEFAULTS = {
    "digits": dict(preset="digits_mlp", train_steps=20000, batch_size=128, learning_rate=1e-3,
                   ema_decay=0.999, sampling_steps=128),
    "toy2d": dict(preset="toy2d", train_steps=4000, batch_size=256, learning_rate=1e-3,
                  ema_decay=0.99, sampling_steps=64),
    "mnist5k": dict(preset="mnist", train_steps=30000, batch_size=64, learning_rate=2e-4,
                    ema_decay=0.999, sampling_steps=256),
    "tfds:cifar10": dict(preset="cifar10", train_steps=800000, batch_size=128,
                         learning_rate=2e-4, ema_decay=0.9999, sampling_steps=1024,
                         weight_decay=0.001),
}
_FALLBACK_DEFAULTS = dict(preset=None, train_steps=100000, batch_size=128, learning_rate=2e-4,
                          ema_decay=0.9999, sampling_steps=1024)


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a teacher run. None means the dataset's default.

    Attributes mirror `apps.train`'s flags; see docs/training.md.
    """

    dataset: str = "digits"
    preset: str | None = None
    parameterization: str = "x"
    weighting: str = "truncated_snr"
    train_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_steps: int = 1000
    ema_decay: float | None = None
    weight_decay: float | None = None
    grad_clip: float = 1.0
    dropout: float | None = None
    seed: int = 0
    checkpoint_every: int = 1000
    sample_every: int = 5000
    class_conditional: bool = False
    label_dropout: float = 0.0
    sampling_steps: int | None = None
    data_dir: str | None = None
    download: bool = False
    # Scale-out and precision (keras_pd.distribute; docs/scaling.md); batch_size is global.
    distribution: str = "none"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    tpu: str | None = None
    dtype_policy: str = "float32"
    skip_nonfinite: bool = False

    def resolved(self):
        """A copy with dataset defaults filled in, validated."""
        defaults = DATASET_DEFAULTS.get(self.dataset, _FALLBACK_DEFAULTS)
        values = {k: (defaults.get(k, v) if v is None else v)
                  for k, v in dataclasses.asdict(self).items()}
        cfg = TrainConfig(**values)
        if cfg.weight_decay is None:
            cfg.weight_decay = 0.0
        if cfg.preset is None:
            check_dataset_name(cfg.dataset)
            raise ValueError(f"no default preset for dataset {cfg.dataset!r}: pass --preset")
        check_parameterization(cfg.parameterization)
        check_weighting(cfg.weighting)
        cfg.distribution = distribute.check_distribution(cfg.distribution)
        cfg.dtype_policy = distribute.check_dtype_policy(cfg.dtype_policy)
        for name in ("train_steps", "batch_size", "checkpoint_every", "sample_every",
                     "sampling_steps"):
            check_steps(getattr(cfg, name), name)
        if cfg.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {cfg.learning_rate}")
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {cfg.ema_decay}")
        if cfg.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
        if not 0.0 <= cfg.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {cfg.label_dropout}")
        if cfg.label_dropout and not cfg.class_conditional:
            raise ValueError("label_dropout needs --class_conditional")
        get_preset(cfg.preset)  # an unknown preset fails here, before the workdir is touched
        return cfg


def build_teacher(cfg, dataset):
    """The DiffusionModel for a resolved config and a loaded dataset."""
    num_classes = dataset.num_classes if cfg.class_conditional else None
    if cfg.class_conditional and not num_classes:
        raise ValueError(f"dataset {dataset.name!r} has no labels: drop --class_conditional")
    channels = dataset.data_shape[-1]
    network = make_network(cfg.preset, dataset.data_shape,
                           output_channels(cfg.parameterization, channels),
                           num_classes=num_classes, dropout=cfg.dropout)
    return DiffusionModel(network, dataset.data_shape, cfg.parameterization, cfg.weighting,
                          num_classes=num_classes, flip=dataset.flip, seed=cfg.seed,
                          label_dropout=cfg.label_dropout)


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


#: Most updates run per call into the compiled train function (Keras' `steps_per_execution`).
MAX_STEPS_PER_EXECUTION = 10


def steps_per_execution(start, total, checkpoint_every, limit=MAX_STEPS_PER_EXECUTION):
    """Updates per call into the compiled train function for a run from `start` to `total`.

    Keras then returns to Python (callbacks, logs, the next batches) once per group of updates
    instead of after every one: on digits_mlp that took 16% off the TensorFlow step (JAX:
    within noise; docs/performance.md). The group size is the largest divisor <= `limit` of every span the
    run is cut into (the checkpoint interval, the updates done and left), so no call runs past
    a checkpoint or the end. PyTorch runs eagerly, one update per call (Keras requires 1).
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


def _log_callbacks(workdir):
    callbacks = [keras.callbacks.CSVLogger(os.path.join(workdir, "log.csv"), append=True)]
    # Keras's TensorBoard writer needs tensorflow and tensorboard, on any backend.
    if all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorboard")):
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(workdir, "logs"),
                                                     write_graph=False))
    return callbacks


def card_for(cfg, dataset):
    """The teacher's model card (REFERENCE 8: parameterization and schedule stored with it)."""
    return dict(
        kind="teacher", dataset=cfg.dataset, data_shape=list(dataset.data_shape),
        num_classes=dataset.num_classes if cfg.class_conditional else None,
        preset=cfg.preset, parameterization=cfg.parameterization, weighting=cfg.weighting,
        schedule=dict(name="cosine", logsnr_min=-20.0, logsnr_max=20.0),
        sampling_steps=cfg.sampling_steps, steps_trained=0, seed=cfg.seed,
        config=dataclasses.asdict(cfg),
    )


# Fields that must agree between a workdir's checkpoint and the flags of a resumed run.
_RESUME_KEYS = ("dataset", "preset", "parameterization", "weighting", "class_conditional",
                "label_dropout")


def train(config, workdir, verbose=1):
    """Trains (or resumes) a teacher in `workdir`.

    Args:
        config: a TrainConfig.
        workdir: the run directory; created if needed.
        verbose: Keras progress bar level (0 silent, 1 bar, 2 line per checkpoint).

    Returns:
        The trained DiffusionModel (EMA weights are in workdir/model.keras).
    """
    cfg = config.resolved()
    engine = distribute.from_config(cfg)  # before any TF op (multi_worker, tpu)
    engine.check_batch_size(cfg.batch_size)
    dataset = load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                           seed=cfg.seed)
    if cfg.class_conditional and not dataset.num_classes:  # before the workdir is touched
        raise ValueError(f"dataset {dataset.name!r} has no labels: drop --class_conditional")
    # Build, compile and fit under the engine (strategy scope / keras distribution).
    with ckpt.workdir_lock(workdir), engine.scope():
        manager = ckpt.CheckpointManager(os.path.join(workdir, "checkpoints"))
        card = card_for(cfg, dataset)
        if manager.steps():
            old = ckpt.read_card(workdir)
            old_cfg = old.get("config", {})
            for key in _RESUME_KEYS:
                if key in old_cfg and old_cfg[key] != getattr(cfg, key):
                    raise ckpt.CheckpointError(
                        f"{workdir} holds a run with {key}={old_cfg[key]!r}, not "
                        f"{getattr(cfg, key)!r}: use another --workdir")
            if old.get("data_shape") != list(dataset.data_shape):
                raise ckpt.CheckpointError(
                    f"{workdir} holds a model for data shape {old.get('data_shape')}, "
                    f"not {list(dataset.data_shape)}")
        with distribute.dtype_policy(cfg.dtype_policy):
            keras.utils.set_random_seed(cfg.seed)  # weight init: same seed, same run
            model = build_teacher(cfg, dataset)
        optimizer = make_optimizer(cfg.learning_rate, cfg.warmup_steps,
                                   ema_decay=cfg.ema_decay,
                                   weight_decay=cfg.weight_decay,
                                   grad_clip=cfg.grad_clip,
                                   skip_nonfinite=cfg.skip_nonfinite)
        model.compile(optimizer=engine.optimizer(optimizer), jit_compile=engine.jit_compile())
        model.optimizer.build(model.trainable_variables)
        state = manager.restore(model)
        start = 0
        if state is not None:
            ckpt.restore_seed_states(model, state["seeds"])
            card = dict(state["card"])
            card["config"] = dataclasses.asdict(cfg)
            start = int(state["step"])
        if start >= cfg.train_steps:
            if verbose:
                print(f"{workdir}: already trained for {start} steps")
            return model
        if verbose and start:
            print(f"{workdir}: resuming from the checkpoint of step {start}", flush=True)
        run_cb = RunCallback(
            workdir, card, start, cfg.train_steps, cfg.checkpoint_every, cfg.sample_every,
            lambda m, p: sample_grid(m, p, cfg.sampling_steps, seed=cfg.seed),
            skip_nonfinite=cfg.skip_nonfinite)
        y = dataset.y if cfg.class_conditional else None
        stream = BatchStream(dataset.x, y, cfg.batch_size, seed=cfg.seed, start_step=start)
        fit_steps(model, engine, stream, start, cfg.train_steps, cfg.checkpoint_every,
                  [run_cb] + _log_callbacks(workdir), verbose)
    return model

