"""Progressively distill a teacher: one round (N -> N/2) by default, or the cascade to --end_steps.

    python -m apps.distill --teacher=runs/digits/teacher --workdir=runs/digits --end_steps=1

A model trained elsewhere (a plain .keras file; docs/own-teacher.md) instead of a keras-pd run:

    python -m apps.distill --teacher_model=my_ddim.keras --teacher_schedule=cosine \
        --logsnr_min=-7.82 --logsnr_max=2.22 --teacher_parameterization=eps \
        --teacher_input=noise_variance --teacher_steps=128 --end_steps=1 --workdir=runs/mine

It is imported as WORKDIR/teacher first. Students go to WORKDIR/student_NNNN; each is a run
directory usable as --checkpoint for apps.sample and apps.export and as --teacher for a further
round. Rerun to resume.
"""

import dataclasses

from apps import common, scale_flags, schedule_flags
from absl import flags

from keras_pd.cascade import DistillConfig, distill
from keras_pd.imported import distill_imported
from keras_pd.networks.foreign import CALL_STYLES, NOISE_INPUTS
from keras_pd.parameterization import PARAMETERIZATIONS
from keras_pd.teacher_samples import DISTILL_DATA
from keras_pd.weighting import WEIGHTINGS

_D = DistillConfig()
flags.DEFINE_string("teacher", None, "Teacher run directory (its card gives its steps).")
# A teacher trained elsewhere: a plain .keras model and how it was trained (docs/own-teacher.md).
flags.DEFINE_string("teacher_model", None, "A .keras model trained elsewhere, instead of "
                    "--teacher (needs --teacher_input and --teacher_steps).")
schedule_flags.define("teacher_schedule", "cosine", "Its noise schedule.")
flags.DEFINE_enum("teacher_parameterization", "eps", list(PARAMETERIZATIONS),
                  "What it predicts (flow: the velocity eps - x).")
flags.DEFINE_enum("teacher_input", None, list(NOISE_INPUTS), "The noise level it is fed.")
flags.DEFINE_enum("teacher_call", "list", list(CALL_STYLES),
                  "model([z, level]) (keras.io functional models) or model(z, level).")
flags.DEFINE_integer("teacher_num_classes", None, "Classes of a model taking labels as its "
                     "third input.")
flags.DEFINE_integer("teacher_noise_rank", None, "Rank of its level input (4: [B, 1, 1, 1]; "
                     "default: read from the model).")
flags.DEFINE_boolean("teacher_reverse_time", False, "Flow time runs data (1) to noise (0); "
                     "the model predicts x - eps.")
flags.DEFINE_list("data_mean", None, "Per-channel pixel mean in [0, 1] of a model trained on "
                  "standardized data (keras.io's Normalization layer).")
flags.DEFINE_list("data_variance", None, "Per-channel pixel variance, with --data_mean.")
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
flags.DEFINE_enum("student_parameterization", None, list(PARAMETERIZATIONS),
                  "What the students predict (default: the teacher's). Another adds an initial "
                  "round learning the teacher's denoiser (e.g. a v student of an eps teacher, "
                  "better at 1-2 steps).")
flags.DEFINE_string("student_preset", None, "The students' network preset (default: the "
                    "teacher's network), e.g. digits_mlp_quarter: a smaller student, which "
                    "first learns the teacher's denoiser in an initial round.")
flags.DEFINE_integer("initial_updates", None, "Updates of that initial round (default: "
                     "--updates_per_round; 24 times that for another network).")
flags.DEFINE_float("initial_learning_rate", None, "Initial rate of that round (default: "
                   "--learning_rate; for another network the teacher's training rate).")
scale_flags.define()
FLAGS = flags.FLAGS


def _floats(values, name):
    try:
        return None if values is None else [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list of numbers, got "
                         f"{','.join(values)}") from None


def main(argv):
    if bool(FLAGS.teacher) == bool(FLAGS.teacher_model):
        raise ValueError("give one of --teacher (a keras-pd run directory) and --teacher_model "
                         "(a .keras model trained elsewhere)")
    fields = DistillConfig.__dataclass_fields__
    config = DistillConfig(**{name: FLAGS[name].value for name in fields})
    verbose = common.progress_verbosity()
    if FLAGS.teacher:
        done = distill(FLAGS.teacher, FLAGS.workdir, config, verbose=verbose)
    else:
        if FLAGS.teacher_input is None or FLAGS.teacher_steps is None:
            raise ValueError("--teacher_model needs --teacher_input (how the model takes the "
                             "noise level) and --teacher_steps (its DDIM step count)")
        schedule = schedule_flags.schedule("teacher_schedule")
        num_classes = FLAGS.teacher_num_classes
        done = distill_imported(
            FLAGS.teacher_model, FLAGS.workdir, dataclasses.replace(config, dataset=None),
            FLAGS.teacher_steps, dataset=FLAGS.dataset, verbose=verbose, schedule=schedule,
            parameterization=FLAGS.teacher_parameterization, noise_input=FLAGS.teacher_input,
            call_style=FLAGS.teacher_call, num_classes=num_classes,
            conditioning="labels" if num_classes else "none",
            noise_rank=FLAGS.teacher_noise_rank, reverse_time=FLAGS.teacher_reverse_time,
            data_mean=_floats(FLAGS.data_mean, "data_mean"),
            data_variance=_floats(FLAGS.data_variance, "data_variance"))
    for steps, path in done:
        print(f"{steps}-step student: {path}")


if __name__ == "__main__":
    common.run(main)
