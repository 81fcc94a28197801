"""Export a model's whole N-step sampler: SavedModel (serving), LiteRT (mobile) or ONNX.

    python -m apps.export --checkpoint=runs/digits/student_0004 --format=litert \
        --output=exports/student_0004.tflite
    python -m apps.export --checkpoint=runs/digits/student_0004 --output=exports/student_0004_sm

Inputs `noise` float32 [B, *data_shape] (+ `labels` int32 [B] when class-conditional), output
`samples` float32 in [-1, 1]; writes a JSON description beside the output (docs/export.md).
SavedModel and LiteRT need KERAS_BACKEND=tensorflow (default) or jax; ONNX works on tensorflow
and torch (jax with jax2onnx installed).
"""

from apps import common
from absl import flags

from keras_pd.export import FORMATS, QUANTIZATIONS, export_sampler, metadata_path

flags.DEFINE_string("checkpoint", None, "Run directory: a teacher workdir or a student dir.",
                    required=True)
flags.DEFINE_integer("steps", None, "Sampling steps N (default: the model card's).")
flags.DEFINE_enum("format", "saved_model", list(FORMATS), "Export format.")
flags.DEFINE_enum("quantize", "none", list(QUANTIZATIONS),
                  "LiteRT weight quantization: float16, or dynamic-range int8.")
flags.DEFINE_integer("batch_size", 1, "Batch size B, fixed in the exported function.")
flags.DEFINE_string("output", None, "SavedModel directory, .tflite file (litert) or .onnx file (onnx); its "
                    "folder must exist.",
                    required=True)
FLAGS = flags.FLAGS


def main(argv):
    meta = export_sampler(FLAGS.checkpoint, FLAGS.output, FLAGS.steps, FLAGS.format,
                          FLAGS.quantize, FLAGS.batch_size)
    print(f"wrote {meta['path']} ({meta['bytes']} bytes, {meta['steps']} steps, "
          f"batch {meta['batch_size']}, quantize {meta['quantize']}) and "
          f"{metadata_path(meta['path'])}")


if __name__ == "__main__":
    common.run(main)
