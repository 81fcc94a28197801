"""The training optimizer (runs.make_optimizer) on every backend.

On PyTorch its EMA and global-norm clipping are fused `_foreach` calls
(keras_pd/torch_optimizer.py); they must give Keras' own per-variable results, so that runs
and checkpoints do not depend on the fusion.
"""

import keras
import numpy as np
import pytest

from keras_pd.torch_optimizer import FusedTorchMixin
from keras_pd.runs import make_optimizer

BACKEND = keras.backend.backend()
SHAPES = [(3, 4), (4,), (2, 2, 5), ()]


def _run(optimizer, grads_per_step):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    optimizer.build(variables)
    for grads in grads_per_step:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    ema = [keras.ops.convert_to_numpy(a) for a in optimizer._model_variables_moving_average]
    return [keras.ops.convert_to_numpy(v) for v in variables], ema


def _grads(scale, seed):
    rng = np.random.default_rng(seed)
    return [(scale * rng.normal(size=s)).astype("float32") for s in SHAPES]


def test_fusion_only_on_torch():
    fused = isinstance(make_optimizer(1e-3, ema_decay=0.9), FusedTorchMixin)
    assert fused == (BACKEND == "torch")


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_make_optimizer_equals_keras_adam_with_ema_and_clipping(clip):
    # Steps with a global gradient norm far above the clip (about 30) and far below (about
    # 0.03), so the clipping both acts and passes through; EMA 0.9 from the first step
    # (Keras starts the average at the weights themselves).
    steps = [_grads(s, k) for k, s in enumerate([10.0, 0.01, 5.0, 0.02, 3.0])]
    ours = make_optimizer(0.05, ema_decay=0.9, grad_clip=clip)
    reference = keras.optimizers.Adam(learning_rate=0.05, beta_1=0.9, beta_2=0.999,
                                      epsilon=1e-8, global_clipnorm=clip or None,
                                      use_ema=True, ema_momentum=0.9)
    assert type(reference) is not type(ours) or BACKEND != "torch"
    (w1, e1), (w2, e2) = _run(ours, steps), _run(reference, steps)
    moved = 0.0
    for a, b, ea, eb, s in zip(w1, w2, e1, e2, SHAPES):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ea, eb, rtol=1e-6, atol=1e-6)
        moved = max(moved, float(np.max(np.abs(a - ea))))
    # The EMA lags the weights (momentum 0.9 over 5 steps of lr 0.05): a real average.
    assert moved > 1e-3


def test_steps_per_execution_divides_every_span():
    from keras_pd.runs import steps_per_execution

    cases = {(0, 20000, 1000): 10, (0, 2500, 1000): 10, (500, 2000, 1000): 10,
             (0, 7, 7): 7, (3, 20, 10): 1, (0, 24, 8): 8, (12, 36, 12): 6}
    for (start, total, every), expected in cases.items():
        got = steps_per_execution(start, total, every)
        if BACKEND == "torch":  # Keras' PyTorch trainer runs one update per call
            assert got == 1
            continue
        assert got == expected, (start, total, every)
        # No compiled call runs past a checkpoint, the start or the end.
        assert every % got == 0 and (total - start) % got == 0 and start % got == 0
