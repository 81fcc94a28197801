"""Sample a trained teacher or a distilled student.

    python -m apps.sample --checkpoint=runs/digits/teacher --steps=128 --output=samples/teacher
"""

from apps import common
from absl import flags

from keras_pd.generate import generate, output_paths
from keras_pd.samplers import SAMPLERS

flags.DEFINE_string("checkpoint", None, "Run directory: a teacher workdir or a student dir.",
                    required=True)
flags.DEFINE_integer("steps", None, "Sampling steps (default: the model card's).")
flags.DEFINE_enum("sampler", "ddim", list(SAMPLERS), "Sampler.")
flags.DEFINE_float("gamma", 0.0, "Ancestral sampler variance interpolation g in [0, 1].")
flags.DEFINE_integer("num_samples", 64, "Number of samples (without --noise_file).")
flags.DEFINE_integer("seed", 0, "Seed of the starting noise.")
flags.DEFINE_string("noise_file", None, ".npy with the starting noise [num, *data_shape].")
flags.DEFINE_list("labels", None, "Class-conditional models: one label or one per sample.")
flags.DEFINE_string("output", "samples", "Output prefix: writes PREFIX.png and PREFIX.npz.")
flags.DEFINE_float("guidance", None, "Classifier-free guidance weight w (models trained with "
                   "--label_dropout, and guided students).")
flags.DEFINE_boolean("jit_compile", None, "Compile the sampler. Default: on TensorFlow XLA for "
                     "jobs of 50,000 samples x steps or more (a graph below), jit on JAX, eager "
                     "on PyTorch; --jit_compile on PyTorch runs torch.compile, "
                     "which pays off for many samples (its one-time cost and speed-up: "
                     "docs/performance.md).")
FLAGS = flags.FLAGS


def main(argv):
    samples = generate(FLAGS.checkpoint, FLAGS.output, FLAGS.steps, FLAGS.sampler, FLAGS.gamma,
                       FLAGS.num_samples, FLAGS.seed, FLAGS.noise_file, FLAGS.labels,
                       guidance=FLAGS.guidance, jit_compile=FLAGS.jit_compile)
    png, npz = output_paths(FLAGS.output)
    print(f"wrote {len(samples)} samples to {png} and {npz}")


if __name__ == "__main__":
    common.run(main)
