"""Inside a training step: one replica's share of the global batch (a leaf module).

Under a tf.distribute strategy each replica's `compute_loss` sees its rows of the global batch.
These helpers make that per-replica step equal to the one-device step: random draws are made for
the global batch and each replica keeps its rows (`replica_rows`), and the replica's mean loss is
divided by the replica count because the optimizer sums gradients over replicas (`scale_loss`).
On one device, on JAX (whose step sees the global, sharded batch) and on PyTorch they are
identities. `keras_pd.distribute` sets the engines up; this module only reads the step's context.
"""

import keras

#: Most updates run per call into the compiled train function (Keras' `steps_per_execution`)
#: on one JAX or TensorFlow device (`distribute.Engine.steps_per_execution_limit`).
MAX_STEPS_PER_EXECUTION = 10


def _tf_replica_context():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def replicas_in_step():
    """How many replicas share this step's global batch (1 unless inside a tf.distribute step)."""
    ctx = _tf_replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


def replica_rows(values):
    """This replica's rows of a tensor drawn for the global batch ([R * b, ...] -> [b, ...]).

    Replica r holds rows r*b .. r*b+b-1 of the global batch (`distribute.Engine.input` feeds
    them so).
    """
    ctx = _tf_replica_context()
    if ctx is None:
        return values
    import tensorflow as tf

    n = ctx.num_replicas_in_sync
    b = tf.shape(values)[0] // n
    start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * b
    return values[start:start + b]


def scale_loss(loss):
    """Divides a replica's mean loss by the replica count (the optimizer sums over replicas)."""
    n = replicas_in_step()
    return loss if n == 1 else loss / float(n)
