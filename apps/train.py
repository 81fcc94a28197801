"""Train a diffusion teacher; rerun the same command to resume after any interruption.

    python -m apps.train --dataset=digits --workdir=runs/digits/teacher
"""

from apps import common, scale_flags, schedule_flags
from absl import flags

from keras_pd.data import BUILTIN_DATASETS
from keras_pd.parameterization import PARAMETERIZATIONS
from keras_pd.training import TrainConfig, train
from keras_pd.weighting import WEIGHTINGS

_D = TrainConfig()
flags.DEFINE_string("dataset", _D.dataset,
                    f"{', '.join(BUILTIN_DATASETS)}, tfds:NAME[:SPLIT] (prepared as ArrayRecord) "
                    "or folder:PATH (PNG/JPEG images, optionally in class subfolders).")
flags.DEFINE_string("preset", None, "Network preset (default: the dataset's).")
flags.DEFINE_enum("parameterization", _D.parameterization, list(PARAMETERIZATIONS),
                  "What the network predicts.")
flags.DEFINE_enum("weighting", _D.weighting, list(WEIGHTINGS), "Loss weighting.")
schedule_flags.define("schedule", _D.schedule, "Noise schedule: the truncated cosine, DDPM's "
                      "discrete betas, or rectified flow (docs/training.md).")
flags.DEFINE_integer("train_steps", None, "Updates in total (default: the dataset's).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: the dataset's).")
flags.DEFINE_float("learning_rate", None, "Peak learning rate (default: the dataset's).")
flags.DEFINE_integer("warmup_steps", _D.warmup_steps, "Linear learning-rate warmup.")
flags.DEFINE_float("ema_decay", None, "EMA decay of the weights (default: the dataset's).")
flags.DEFINE_float("weight_decay", None, "AdamW weight decay (default: the dataset's).")
flags.DEFINE_float("grad_clip", _D.grad_clip, "Gradient clipping by global norm (0: off).")
flags.DEFINE_float("dropout", None, "Dropout (default: the preset's).")
flags.DEFINE_integer("seed", _D.seed, "Seed of the data order, t and noise draws.")
flags.DEFINE_string("workdir", "runs/teacher", "Run directory (resumed if it holds a run).")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Updates between checkpoints.")
flags.DEFINE_integer("sample_every", _D.sample_every, "Updates between sample grids (0: never).")
flags.DEFINE_boolean("class_conditional", _D.class_conditional, "Condition on the labels.")
flags.DEFINE_float("label_dropout", _D.label_dropout, "Probability of the null label in training "
                   "(> 0 enables classifier-free guidance; 0.1 is usual).")
flags.DEFINE_integer("sampling_steps", None, "DDIM steps the teacher is meant to sample with.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir.")
flags.DEFINE_integer("image_size", None, "folder:PATH: resize (shorter side) and centre-crop "
                     "every image to this square (default: the files' own, equal sizes).")
flags.DEFINE_boolean("download", False, "Let tensorflow-datasets download (needs network).")
flags.DEFINE_boolean("skip_nonfinite", False, "Skip updates with NaN/Inf gradients "
                     "instead of stopping at a non-finite loss.")
scale_flags.define()
FLAGS = flags.FLAGS


def main(argv):
    fields = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{name: FLAGS[name].value for name in fields})
    config.schedule = schedule_flags.schedule("schedule").to_config()
    train(config, FLAGS.workdir, verbose=common.progress_verbosity())


if __name__ == "__main__":
    common.run(main)
