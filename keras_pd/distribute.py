"""Scale-out and mixed precision: which engine a run uses, and how it is fed.

Engines (`--distribution`):

| name | backend | what |
|---|---|---|
| `none` | any | one device (the default) |
| `data_parallel` | jax | `keras.distribution.DataParallel` over every device; multi-host through `keras.distribution.initialize` |
| `mirrored` | tensorflow | `tf.distribute.MirroredStrategy` over the local GPUs (or logical CPUs) |
| `multi_worker` | tensorflow | `tf.distribute.MultiWorkerMirroredStrategy`, cluster from `TF_CONFIG` |
| `tpu` | tensorflow | `tf.distribute.TPUStrategy`, cluster from a TPU cluster-resolver address |

`--batch_size` is always the global batch. Training code stays one path: `Engine.scope()` wraps
model building, compile and fit; `Engine.input(...)` turns the global-batch stream into what
the engine feeds its replicas; inside a step, `replicas.replicas_in_step`, `replica_rows` and
`scale_loss` (a leaf module) make a per-replica `compute_loss` equal to the single-device one:

* On JAX the step sees the global batch (sharded arrays), so nothing changes.
* On TensorFlow each replica sees its rows of the global batch. Random draws are made for the
  global batch and each replica keeps its own rows (the same draws as on one device, not R
  copies of one local draw); the loss, a mean over the replica's rows, is divided by the
  replica count because the optimizer sums gradients over replicas (REFERENCE 8); and global
  norm clipping, which Keras applies to each replica's gradient before that sum, is moved after
  it. The tf.distribute parts (strategies, per-worker input, that clipping) live in the adapter
  `tf_engine.py`; JAX's engine is Keras' own `keras.distribution`.

Mixed precision (`--dtype_policy`): `float32`, `mixed_bfloat16`, `mixed_float16` (Keras wraps the
optimizer in a `LossScaleOptimizer` at compile). Variables stay float32; the diffusion math runs in
float32 (the model casts the network output; see `diffusion.DiffusionModel.denoise`).
"""

import contextlib
import dataclasses
import os

import keras

from keras_pd.replicas import MAX_STEPS_PER_EXECUTION

DISTRIBUTIONS = ("none", "data_parallel", "mirrored", "multi_worker", "tpu")
_BACKEND_OF = {"data_parallel": "jax", "mirrored": "tensorflow", "multi_worker": "tensorflow",
               "tpu": "tensorflow"}
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
#: Runs of at least this many updates compile their TensorFlow step with XLA
#: (`Engine.jit_compile`): about twice the break-even length measured on digits_mlp.
XLA_MIN_UPDATES = 1000


@dataclasses.dataclass
class ScaleOutConfig:
    """A run's scale-out and precision settings, shared by the teacher's and the distillation
    configs (the apps' `--distribution` flags, `apps/scale_flags.py`). A run's `batch_size` is
    the global batch.

    Attributes:
        distribution: one of DISTRIBUTIONS.
        coordinator_address: JAX multi-host: host:port of process 0.
        num_processes: JAX multi-host: number of processes.
        process_id: JAX multi-host: this process's id.
        tpu: TPUStrategy: the cluster-resolver address.
        dtype_policy: one of DTYPE_POLICIES.
    """

    distribution: str = "none"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    tpu: str | None = None
    dtype_policy: str = "float32"


def _what_works(backend):
    names = [n for n, b in _BACKEND_OF.items() if b == backend]
    if names:
        return f"on the {backend} backend use --distribution={' or '.join(['none'] + names)}"
    return ("multi-device training runs on KERAS_BACKEND=jax (data_parallel) or "
            "KERAS_BACKEND=tensorflow (mirrored, multi_worker, tpu)")


def check_distribution(name, backend=None):
    """Validates a distribution name for a backend (default: the current one).

    Raises:
        ValueError: one line naming what works, for an unknown name or a mismatched backend.
    """
    backend = backend or keras.backend.backend()
    name = "none" if name in (None, "") else str(name)
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}: {_what_works(backend)}")
    if name != "none" and _BACKEND_OF[name] != backend:
        raise ValueError(f"distribution {name!r} needs KERAS_BACKEND={_BACKEND_OF[name]}, not "
                         f"{backend}: {_what_works(backend)}")
    return name


def check_dtype_policy(name):
    """Validates a dtype policy name (None means float32)."""
    name = "float32" if name in (None, "") else str(name)
    if name not in DTYPE_POLICIES:
        raise ValueError(f"unknown dtype policy {name!r}: use one of {', '.join(DTYPE_POLICIES)}")
    return name


@contextlib.contextmanager
def dtype_policy(name):
    """Sets Keras's global dtype policy while models are built, then restores it."""
    name = check_dtype_policy(name)
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def with_dtype_policy(config, name):
    """A copy of a serialized model config with every layer's dtype policy set to `name`.

    Lets a distillation run use its own policy whatever the teacher was trained with (variables
    are float32 under every policy, so the weights carry over unchanged).
    """
    name = check_dtype_policy(name)

    def rewrite(obj):
        if isinstance(obj, dict):
            out = {k: rewrite(v) for k, v in obj.items()}
            if "dtype" in out and isinstance(out["dtype"], dict) and (
                    "DTypePolicy" in str(out["dtype"].get("class_name", ""))):
                out["dtype"] = name
            return out
        if isinstance(obj, list):
            return [rewrite(v) for v in obj]
        return obj

    return rewrite(config)


# ---------------------------------------------------------------------------------------------
# Engines.

_ENGINES = {}


class Engine:
    """A set-up distribution: where models are built and how the global batch is fed.

    Attributes:
        name: the distribution name.
        num_replicas: devices sharing each global batch.
        process_index, process_count: this host among the hosts feeding data.
    """

    def __init__(self, name, strategy=None, distribution=None):
        self.name = name
        self.strategy = strategy
        self.distribution = distribution
        self.num_replicas = 1
        self.process_index, self.process_count = 0, 1
        if strategy is not None:
            self.num_replicas = int(strategy.num_replicas_in_sync)
            resolver = getattr(strategy, "cluster_resolver", None)
            if resolver is not None and getattr(resolver, "task_type", None):
                self.process_index = int(resolver.task_id or 0)
        if distribution is not None:
            import jax

            self.num_replicas = len(distribution.device_mesh.devices.flatten())
            self.process_index, self.process_count = jax.process_index(), jax.process_count()

    def __repr__(self):
        return f"Engine({self.name}, replicas={self.num_replicas})"

    @contextlib.contextmanager
    def scope(self):
        """Build, compile and fit models inside this."""
        if self.strategy is not None:
            with self.strategy.scope():
                yield
        elif self.distribution is not None:
            with self.distribution.scope():
                yield
        else:
            yield

    def check_batch_size(self, batch_size):
        """Raises ValueError unless the global batch splits evenly over replicas and hosts."""
        for count, what in ((self.num_replicas, "replicas"), (self.process_count, "hosts")):
            if batch_size % count:
                raise ValueError(f"batch_size {batch_size} (the global batch) must be a "
                                 f"multiple of the {count} {what} of --distribution={self.name}")
        return batch_size

    def optimizer(self, optimizer):
        """The optimizer adapted to the engine (TF replicas: clip after the all-reduce)."""
        if self.strategy is not None and self.num_replicas > 1:
            from keras_pd import tf_engine

            return tf_engine.clip_after_all_reduce(optimizer)
        return optimizer

    def jit_compile(self, updates=None):
        """`compile(jit_compile=...)` for a run of `updates` updates under this engine.

        TensorFlow on one device: True (XLA) for runs of at least `XLA_MIN_UPDATES` updates
        (or of unknown length). Keras' "auto" turns XLA off for TensorFlow on CPU-only
        machines, where the train step then runs as a tf.function graph, op by op; XLA fuses
        it, which measured faster per update here, but its compilation costs seconds more
        than tracing the graph, so a shorter run finishes sooner without it (both measured in
        docs/performance.md, "Compiling the step"). The choice depends on the run's whole
        length, not on what is left of it, so a resumed run compiles as the uninterrupted one
        did. Under a tf.distribute strategy, on JAX (jitted anyway) and on torch (where
        torch.compile measured slower than eager), Keras' "auto" stays.
        """
        if keras.backend.backend() == "tensorflow" and self.strategy is None:
            return updates is None or updates >= XLA_MIN_UPDATES
        return "auto"

    def steps_per_execution_limit(self):
        """Most updates per compiled call for models trained under this engine.

        One device on JAX or TensorFlow: `replicas.MAX_STEPS_PER_EXECUTION`. Under a
        tf.distribute strategy Keras 3.15's multi-step function fails (MirroredStrategy,
        tests/test_distribution.py), and a keras.distribution mesh is left at Keras' default
        too: 1 there, as on torch, where Keras requires 1.
        """
        if (keras.backend.backend() == "torch" or self.strategy is not None
                or self.distribution is not None):
            return 1
        return MAX_STEPS_PER_EXECUTION

    def input(self, stream, workers=None):
        """What to pass to `fit` for a `data.BatchStream` of global batches.

        One device: the stream's Grain dataset (`BatchStream.grain_dataset`). JAX: each
        host's rows of every global batch, and only those are read (Keras assembles the
        global, sharded array). TensorFlow: a distributed dataset whose replica r gets rows
        r*b .. r*b+b-1 of global batch k (b = batch / replicas), k counting from the stream's
        current step, each worker reading only its replicas' rows; every iterator Keras opens
        restarts there (fit peeks a batch to build the model under a strategy).

        Args:
            stream: the BatchStream.
            workers: Grain reading threads (None: `input_workers(stream.source)`).
        """
        self.check_batch_size(stream.batch_size)
        workers = input_workers(stream.source) if workers is None else workers
        if self.distribution is not None:
            return stream.grain_dataset(rows=self.process_rows(stream.batch_size),
                                        workers=workers)
        if self.strategy is None:
            return stream.grain_dataset(workers=workers)
        from keras_pd import tf_engine

        return tf_engine.distributed_input(self.strategy, stream)

    def process_rows(self, batch_size):
        """The rows of each global batch this host feeds (a slice)."""
        b = batch_size // self.process_count
        return slice(self.process_index * b, (self.process_index + 1) * b)

def input_workers(source):
    """Grain reading threads for a source: none for arrays in memory (a batch is one fancy
    index), up to 8 for sources that decode files (`sources.FolderSource`, `TfdsSource`)."""
    from keras_pd.sources import ArraySource

    return 0 if isinstance(source, ArraySource) else min(8, os.cpu_count() or 1)


def setup(name="none", coordinator_address=None, num_processes=None, process_id=None,
          tpu=None):
    """Creates (once per process) the engine for a distribution name.

    Args:
        name: one of DISTRIBUTIONS.
        coordinator_address: JAX multi-host: host:port of process 0.
        num_processes: JAX multi-host: number of processes.
        process_id: JAX multi-host: this process's id (0 .. num_processes - 1).
        tpu: TPUStrategy: the cluster-resolver address ("" or "local" for a TPU VM).

    Raises:
        ValueError: a name that does not fit the backend, or multi-host flags without
            data_parallel.
    """
    name = check_distribution(name)
    multi_host = (coordinator_address, num_processes, process_id)
    if name != "data_parallel" and any(v is not None for v in multi_host):
        raise ValueError("--coordinator_address, --num_processes and --process_id are for "
                         "--distribution=data_parallel (TF multi_worker reads TF_CONFIG)")
    if name != "tpu" and tpu is not None:
        raise ValueError("--tpu is for --distribution=tpu")
    key = (name, coordinator_address, num_processes, process_id, tpu)
    if key in _ENGINES:
        return _ENGINES[key]
    if name == "none":
        engine = Engine(name)
    elif name == "data_parallel":
        if any(v is not None for v in multi_host):
            if None in multi_host:
                raise ValueError("multi-host data_parallel needs all of --coordinator_address, "
                                 "--num_processes and --process_id")
            keras.distribution.initialize(coordinator_address, int(num_processes),
                                          int(process_id))
        engine = Engine(name, distribution=keras.distribution.DataParallel(
            devices=keras.distribution.list_devices()))
    else:
        from keras_pd import tf_engine

        engine = Engine(name, strategy=tf_engine.make_strategy(name, tpu))
    _ENGINES[key] = engine
    return engine


def from_config(cfg):
    """The engine for a run's config (a `ScaleOutConfig`: TrainConfig, DistillConfig)."""
    return setup(cfg.distribution, coordinator_address=cfg.coordinator_address,
                 num_processes=cfg.num_processes, process_id=cfg.process_id, tpu=cfg.tpu)

