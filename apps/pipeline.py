"""The main job: train a teacher, distill it to 1 step, evaluate, export, report. Rerun to resume.

    KERAS_BACKEND=jax python -m apps.pipeline                # digits (wall time: docs/results.md)
    python -m apps.pipeline --dataset=toy2d --workdir=runs/toy2d
"""

from apps import common
from absl import flags

from keras_pd.data import BUILTIN_DATASETS
from keras_pd.pipeline import QUICK, PipelineConfig, default_workdir, run_pipeline
from keras_pd.teacher_samples import DISTILL_DATA

_D = PipelineConfig()
flags.DEFINE_string("dataset", _D.dataset,
                    f"{', '.join(BUILTIN_DATASETS)} or tfds:NAME[:SPLIT].")
flags.DEFINE_string("workdir", None, "Run directory (default: runs/DATASET).")
flags.DEFINE_string("preset", None, "Teacher network preset (default: the dataset's; see "
                    "keras_pd/networks/presets.py).")
flags.DEFINE_integer("image_size", None, "folder:PATH datasets: resize and centre-crop every "
                     "image to this square.")
flags.DEFINE_integer("seed", _D.seed, "Seed of every stage.")
flags.DEFINE_integer("train_steps", None, "Teacher updates (default: the dataset's).")
flags.DEFINE_integer("teacher_steps", None, "Teacher's DDIM steps (default: the dataset's).")
flags.DEFINE_integer("end_steps", _D.end_steps, "Distill down to this many steps.")
flags.DEFINE_integer("updates_per_round", _D.updates_per_round, "Distillation updates per round.")
flags.DEFINE_integer("final_rounds_factor", _D.final_rounds_factor,
                     "Extra updates for the rounds to 2 and 1 steps.")
flags.DEFINE_float("distill_learning_rate", _D.distill_learning_rate, "Distillation rate.")
flags.DEFINE_enum("distill_data", _D.distill_data, list(DISTILL_DATA),
                  "What the students train on: the dataset, the teacher's own samples, or both.")
flags.DEFINE_integer("teacher_samples", _D.teacher_samples,
                     "How many teacher samples (--distill_data=teacher or mix).")
flags.DEFINE_integer("num_samples", _D.num_samples, "Samples per evaluation cell.")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Updates between checkpoints.")
flags.DEFINE_integer("batch_size", None, "Batch size (default: the dataset's).")
flags.DEFINE_integer("export_max_steps", _D.export_max_steps,
                     "Export students with at most this many steps (LiteRT; ONNX on torch); 0: none.")
flags.DEFINE_boolean("guided", _D.guided, "The guided job: class-conditional teacher with label "
                     "dropout, guided distillation, guided evaluation (default workdir "
                     "runs/DATASET_guided).")
flags.DEFINE_float("label_dropout", _D.label_dropout, "Guided teacher's null-label probability.")
flags.DEFINE_float("guidance_max", _D.guidance_max, "Guided distillation trains w in [0, max].")
flags.DEFINE_integer("guided_updates", _D.guided_updates, "Updates of the w-input stage.")
flags.DEFINE_boolean("quick", False, "Tiny sizes for a smoke test (overrides size flags).")
FLAGS = flags.FLAGS


def main(argv):
    values = {name: FLAGS[name].value for name in PipelineConfig.__dataclass_fields__}
    if FLAGS.quick:
        values.update(QUICK)
    config = PipelineConfig(**values)
    results = run_pipeline(FLAGS.workdir or default_workdir(config), config)
    with open(results["report_path"]) as f:
        print(f.read())


if __name__ == "__main__":
    common.run(main)
