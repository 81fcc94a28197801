"""Subprocess of tests/test_distribution.py: one engine on 2 virtual CPU devices vs one device.

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python tests/distribution_worker.py data_parallel WORKDIR
    KERAS_BACKEND=tensorflow python tests/distribution_worker.py mirrored WORKDIR
    # 4 devices (docs/scaling.md): a third argument, and the XLA flag's count on JAX
    KERAS_BACKEND=tensorflow python tests/distribution_worker.py mirrored WORKDIR 4

Virtual devices must exist before the backend initialises, hence a separate process. Prints one
JSON line: per-step losses and weights (flattened) of a teacher and a distillation run under the
engine and on one device, and a distributed run interrupted after 2 updates and resumed to 4,
against 4 uninterrupted updates under the same engine.
"""

import json
import os
import sys

ENGINE, WORKDIR = sys.argv[1], sys.argv[2]
NUM_DEVICES = int(sys.argv[3]) if len(sys.argv) > 3 else 2
if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_DEVICES)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_pd import distribute  # noqa: E402
from keras_pd.data import BatchStream, load_dataset  # noqa: E402
from keras_pd.distillation import DistillationModel, copy_model  # noqa: E402
from keras_pd.training import TrainConfig, build_teacher, train  # noqa: E402

LR, CLIP, BATCH, STEPS = 0.05, 0.01, 16, 2  # clipping is active: every update has norm LR*CLIP
DATA = load_dataset("toy2d", seed=0)


def flat(model):
    return np.concatenate([np.ravel(w) for w in model.get_weights()]).astype("float64")


class Record(keras.callbacks.Callback):
    """Weights after each epoch (one update per epoch here); the weights are synced by then."""

    def __init__(self, watched):
        super().__init__()
        self.watched, self.weights = watched, [flat(watched)]

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(flat(self.watched))


def fit(engine, model, watched, seed):
    model.compile(optimizer=engine.optimizer(keras.optimizers.SGD(LR, global_clipnorm=CLIP)))
    record = Record(watched)
    history = model.fit(engine.input(BatchStream(DATA.x, None, BATCH, seed=seed)),
                        steps_per_epoch=1, epochs=STEPS, verbose=0, callbacks=[record])
    return dict(loss=[float(v) for v in history.history["loss"]],
                weights=[w.tolist() for w in record.weights])


def teacher(engine):
    cfg = TrainConfig(dataset="toy2d", seed=0).resolved()
    with engine.scope():
        keras.utils.set_random_seed(0)
        model = build_teacher(cfg, DATA)
        out = fit(engine, model, model, seed=0)
        v = model.trainable_variables[0].value
        out["devices"] = (len(v.sharding.device_set) if hasattr(v, "sharding")
                          else len(getattr(v, "values", [v])))
    return out


def distillation(engine):
    cfg = TrainConfig(dataset="toy2d", seed=0).resolved()
    with engine.scope():
        keras.utils.set_random_seed(0)
        model = build_teacher(cfg, DATA)
        # A fixed, non-trivial teacher (the output layer starts at zero): init + small noise.
        rng = np.random.default_rng(5)
        model.set_weights([w + 0.05 * rng.standard_normal(w.shape).astype(w.dtype)
                           for w in model.get_weights()])
        student = copy_model(model, dropout=0.0)
        pd = DistillationModel(model, student, 4, seed=1)
        return fit(engine, pd, student, seed=1)


def resume(engine_name):
    def run(workdir, steps, name):
        keras.utils.set_random_seed(0)
        model = train(TrainConfig(dataset="toy2d", train_steps=steps, checkpoint_every=2,
                                  batch_size=BATCH, warmup_steps=0, learning_rate=1e-3,
                                  sample_every=0, sampling_steps=2, distribution=name),
                      workdir, verbose=0)
        return flat(model)

    # One device may compile differently (TensorFlow: XLA on one device, not under a strategy;
    # Engine.jit_compile), so the resumed run is compared with an uninterrupted run under the
    # same engine; the steps themselves are compared with one device above.
    dist_dir, straight_dir = os.path.join(WORKDIR, "dist"), os.path.join(WORKDIR, "straight")
    run(dist_dir, 2, engine_name)                      # interrupted after 2 updates ...
    resumed = run(dist_dir, 4, engine_name)            # ... resumed to 4 under the engine,
    straight = run(straight_dir, 4, engine_name)       # and 4 updates without interruption
    with open(os.path.join(dist_dir, "card.json")) as f:
        steps = json.load(f)["steps_trained"]
    return dict(resumed=resumed.tolist(), straight=straight.tolist(), steps_trained=steps)


if __name__ == "__main__":
    one, many = distribute.setup("none"), distribute.setup(ENGINE)
    result = dict(engine=ENGINE, replicas=many.num_replicas,
                  teacher=dict(single=teacher(one), dist=teacher(many)),
                  distill=dict(single=distillation(one), dist=distillation(many)),
                  resume=resume(ENGINE))
    print("RESULT " + json.dumps(result))
