"""Flags shared by apps.train and apps.distill: scale-out engine and dtype policy.

See keras_pd/distribute.py and docs/scaling.md. --batch_size stays the global batch.
"""

from absl import flags

from keras_pd.distribute import DISTRIBUTIONS, DTYPE_POLICIES


def define():
    flags.DEFINE_enum("distribution", "none", list(DISTRIBUTIONS),
                      "none; data_parallel (JAX, every local device; multi-host with the three "
                      "flags below); mirrored, multi_worker (TF_CONFIG) or tpu (TensorFlow).")
    flags.DEFINE_string("coordinator_address", None,
                        "JAX multi-host data_parallel: host:port of process 0.")
    flags.DEFINE_integer("num_processes", None, "JAX multi-host data_parallel: process count.")
    flags.DEFINE_integer("process_id", None, "JAX multi-host data_parallel: this process's id.")
    flags.DEFINE_string("tpu", None, "TPUStrategy cluster-resolver address ('local' on a TPU VM).")
    flags.DEFINE_enum("dtype_policy", "float32", list(DTYPE_POLICIES),
                      "Keras dtype policy; variables and the diffusion math stay float32.")
