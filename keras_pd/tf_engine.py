"""tf.distribute for keras_pd's TensorFlow engines (`distribute.py`): strategies, per-worker
input and clipping after the all-reduce. TensorFlow comes through `tf_adapter`."""

from keras_pd.tf_adapter import import_tensorflow


def make_strategy(name, tpu=None):
    """The tf.distribute strategy of a TensorFlow distribution name (mirrored, multi_worker,
    tpu)."""
    tf = import_tensorflow()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(local_devices())
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    address = "" if tpu in (None, "local") else tpu
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def local_devices():
    """GPUs if any, else every logical CPU (MirroredStrategy's default ignores extra CPUs)."""
    tf = import_tensorflow()

    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def distributed_input(strategy, stream):
    """A distributed dataset whose replica r gets rows r*b .. r*b+b-1 of global batch k
    (b = batch / replicas), k counting from the stream's current step; each worker reads only
    its replicas' rows."""
    tf = import_tensorflow()

    b = stream.batch_size // int(strategy.num_replicas_in_sync)
    start = stream.step
    spec = (tf.TensorSpec((b,) + stream.example_shape, tf.float32),)
    if stream.has_labels:
        spec += (tf.TensorSpec((b,), tf.int32),)

    def per_worker(context):
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def gen():  # this worker's replicas' rows of batches start, start + 1, ...
            k = start
            while True:
                batch = stream.batch(k, slice(first * b, (first + local) * b))
                batch = batch if isinstance(batch, tuple) else (batch,)
                for r in range(local):
                    yield tuple(a[r * b:(r + 1) * b] for a in batch)
                k += 1

        return tf.data.Dataset.from_generator(gen, output_signature=spec)

    return strategy.distribute_datasets_from_function(per_worker)


def clip_after_all_reduce(optimizer):
    """Makes a TF optimizer clip by global norm after summing gradients over replicas.

    Keras 3 clips inside `apply` before `_backend_update_step` all-reduces, i.e. each replica's
    partial gradient by its own norm; that differs from one-device training whenever clipping
    is active. Here per-replica clipping is skipped and the summed gradient is clipped.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not getattr(inner, "global_clipnorm", None) or getattr(inner, "_pd_reduce_then_clip",
                                                              False):
        return optimizer
    base = type(inner)

    class ReduceThenClip(base):
        _pd_reduce_then_clip = True

        def _clip_gradients(self, grads):
            return grads  # per replica: clipped after the sum instead

        def _all_reduce_sum_gradients(self, grads_and_vars):
            reduced = list(super()._all_reduce_sum_gradients(grads_and_vars))
            grads = [g for g, _ in reduced]
            clipped = base._clip_gradients(self, grads)
            return [(c, v) for c, (_, v) in zip(clipped, reduced)]

    ReduceThenClip.__name__ = base.__name__
    inner.__class__ = ReduceThenClip
    return optimizer
