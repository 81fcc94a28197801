"""Teacher training: a config, its DiffusionModel, and the resumable run that fits it.

`train(TrainConfig(...), workdir)` is what `apps.train` calls. Running it again on the same
workdir resumes from the newest checkpoint (`runs.resume_and_fit`: weights, optimizer and EMA
state, step counter, data order and noise RNG), losing at most one checkpoint interval.
"""

import dataclasses
import os

import keras

from keras_pd import checkpoint as ckpt
from keras_pd import distribute
from keras_pd.checks import check_positive_int
from keras_pd.data import check_dataset_name, load_dataset
from keras_pd.diffusion import DiffusionModel
from keras_pd.networks import make_network
from keras_pd.networks.presets import get_preset
from keras_pd.parameterization import check_parameterization, output_channels
from keras_pd.runs import make_optimizer, resume_and_fit
from keras_pd.schedules import get_schedule
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
#: The UNet preset an image folder gets for its --image_size (the paper's sizes).
FOLDER_PRESETS = {28: "mnist", 32: "cifar10", 64: "imagenet64", 128: "lsun128"}


@dataclasses.dataclass
class TrainConfig(distribute.ScaleOutConfig):
    """Everything that defines a teacher run. None means the dataset's default.

    Attributes mirror `apps.train`'s flags; see docs/training.md.
    """

    dataset: str = "digits"
    preset: str | None = None
    parameterization: str = "x"
    weighting: str = "truncated_snr"
    schedule: str | dict = "cosine"
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
    image_size: int | None = None
    skip_nonfinite: bool = False

    def resolved(self):
        """A copy with dataset defaults filled in, validated."""
        defaults = DATASET_DEFAULTS.get(self.dataset, _FALLBACK_DEFAULTS)
        if str(self.dataset).startswith("folder:"):
            defaults = dict(defaults, preset=FOLDER_PRESETS.get(self.image_size))
        values = {k: (defaults.get(k, v) if v is None else v)
                  for k, v in dataclasses.asdict(self).items()}
        cfg = TrainConfig(**values)
        if cfg.weight_decay is None:
            cfg.weight_decay = 0.0
        if cfg.preset is None:
            check_dataset_name(cfg.dataset)
            sizes = ", ".join(str(k) for k in FOLDER_PRESETS)
            raise ValueError(f"no default preset for dataset {cfg.dataset!r}: pass --preset"
                             + (f" or --image_size ({sizes})"
                                if cfg.dataset.startswith("folder:") else ""))
        if cfg.image_size is not None:
            check_positive_int(cfg.image_size, "image_size")
        check_parameterization(cfg.parameterization)
        check_weighting(cfg.weighting)
        get_schedule(cfg.schedule)
        cfg.distribution = distribute.check_distribution(cfg.distribution)
        cfg.dtype_policy = distribute.check_dtype_policy(cfg.dtype_policy)
        for name in ("train_steps", "batch_size", "checkpoint_every", "sampling_steps"):
            check_positive_int(getattr(cfg, name), name)
        if cfg.sample_every != 0:  # 0: no sample grids
            check_positive_int(cfg.sample_every, "sample_every (0 for never)")
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
                          label_dropout=cfg.label_dropout, schedule=cfg.schedule)


def card_for(cfg, dataset):
    """The teacher's model card (REFERENCE 8: parameterization and schedule stored with it)."""
    return dict(
        kind="teacher", dataset=cfg.dataset, image_size=cfg.image_size,
        data_shape=list(dataset.data_shape),
        num_classes=dataset.num_classes if cfg.class_conditional else None,
        preset=cfg.preset, parameterization=cfg.parameterization, weighting=cfg.weighting,
        schedule=get_schedule(cfg.schedule).to_config(),
        sampling_steps=cfg.sampling_steps, steps_trained=0, seed=cfg.seed,
        config=dataclasses.asdict(cfg),
    )


# Fields that must agree between a workdir's checkpoint and the flags of a resumed run.
_RESUME_KEYS = ("dataset", "image_size", "preset", "parameterization", "weighting",
                "class_conditional", "label_dropout", "schedule")


def _comparable(key, value):
    """A config value as resumption compares it: a schedule by its full config, so "cosine"
    and the default cosine's config are the same run."""
    return get_schedule(value).to_config() if key == "schedule" else value


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
                           seed=cfg.seed, image_size=cfg.image_size)
    if cfg.class_conditional and not dataset.num_classes:  # before the workdir is touched
        raise ValueError(f"dataset {dataset.name!r} has no labels: drop --class_conditional")
    # Build, compile and fit under the engine (strategy scope / keras distribution).
    with ckpt.workdir_lock(workdir), engine.scope():
        card = card_for(cfg, dataset)
        if ckpt.CheckpointManager(os.path.join(workdir, "checkpoints")).steps():
            old = ckpt.read_card(workdir)
            old_cfg = old.get("config", {})
            for key in _RESUME_KEYS:
                if key in old_cfg and _comparable(key, old_cfg[key]) != _comparable(
                        key, getattr(cfg, key)):
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
        resume_and_fit(model, optimizer, workdir, card, cfg.train_steps, engine=engine,
                       source=dataset.source(labels=cfg.class_conditional),
                       batch_size=cfg.batch_size, data_seed=cfg.seed,
                       checkpoint_every=cfg.checkpoint_every, sample_every=cfg.sample_every,
                       sample_steps=cfg.sampling_steps, sample_seed=cfg.seed,
                       skip_nonfinite=cfg.skip_nonfinite, log=True, verbose=verbose)
    return model
