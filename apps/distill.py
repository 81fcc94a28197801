"""Progressively distill a teacher: one round (N -> N/2) by default, or the cascade to --end_steps.

    python -m apps.distill --teacher=runs/digits/teacher --workdir=runs/digits --end_steps=1

Students go to WORKDIR/student_NNNN; each is a run directory usable as --checkpoint for
apps.sample and apps.export and as --teacher for a further round. Rerun to resume.
"""

from apps import common, scale_flags
from absl import flags

from keras_pd.distillation import DistillConfig, distill
from keras_pd.teacher_samples import DISTILL_DATA
from keras_pd.weighting import WEIGHTINGS

_D = DistillConfig()
flags.DEFINE_string("teacher", None, "Teacher run directory (its card gives its steps).",
                    required=True)
flags.DEFINE_string("workdir", "runs/distill", "Where the students go.")
flags.DEFINE_integer("teacher_steps", None, "Override the teacher's step count.")
flags.DEFINE_integer("end_steps", None, "Distill down to this many steps (default: one round).")
flags.DEFINE_integer("updates_per_round", _D.updates_per_round, "Updates in each round.")
flags.DEFINE_integer("final_rounds_factor", _D.final_rounds_factor,
                     "Multiply the updates of the rounds to 2 and 1 steps (the paper: 2).")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Initial rate, decayed linearly to 0.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Batch size.")
flags.DEFINE_enum("weighting", _D.weighting, list(WEIGHTINGS), "Loss weighting.")
flags.DEFINE_enum("distill_data", _D.distill_data, list(DISTILL_DATA),
                  "What the students train on: the dataset, the teacher's own DDIM samples "
                  "(generated once into WORKDIR/teacher_samples; no dataset needed), or both.")
flags.DEFINE_integer("teacher_samples", _D.teacher_samples,
                     "How many teacher samples (--distill_data=teacher or mix).")
flags.DEFINE_integer("teacher_sample_steps", None,
                     "DDIM steps of the teacher samples (default: the teacher's steps).")
flags.DEFINE_boolean("resample_each_round", _D.resample_each_round,
                     "Each round trains on samples of its own teacher instead of the first's.")
flags.DEFINE_string("dataset", None, "Training data (default: the teacher's).")
flags.DEFINE_integer("seed", _D.seed, "Seed.")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Updates between checkpoints.")
flags.DEFINE_float("grad_clip", _D.grad_clip, "Gradient clipping by global norm.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir.")
flags.DEFINE_boolean("skip_nonfinite", False, "Skip updates with NaN/Inf gradients "
                     "instead of stopping at a non-finite loss.")
flags.DEFINE_boolean("guided", _D.guided, "Guided distillation (Meng et al. 2023): first a "
                     "student taking w as input, then the cascade with w passed through.")
flags.DEFINE_float("guidance_min", _D.guidance_min, "Smallest guidance weight w trained.")
flags.DEFINE_float("guidance_max", _D.guidance_max, "Largest guidance weight w trained.")
flags.DEFINE_integer("guided_updates", _D.guided_updates, "Updates of the w-input stage.")
scale_flags.define()
FLAGS = flags.FLAGS


def main(argv):
    config = DistillConfig(**{name: FLAGS[name].value for name in DistillConfig.__dataclass_fields__})
    for steps, path in distill(FLAGS.teacher, FLAGS.workdir, config,
                               verbose=common.progress_verbosity()):
        print(f"{steps}-step student: {path}")


if __name__ == "__main__":
    common.run(main)
