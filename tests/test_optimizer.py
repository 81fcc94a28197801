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


def _adam_float64(steps, lr, clip, ema):
    """Adam (Keras' form: epsilon added to sqrt(v) before the bias correction), global-norm
    clipping and the EMA of the weights, in float64 from the equations."""
    rng = np.random.default_rng(0)
    w = [rng.normal(size=s).astype("float32").astype(np.float64) for s in SHAPES]
    m = [np.zeros(s) for s in SHAPES]
    v = [np.zeros(s) for s in SHAPES]
    a = [x.copy() for x in w]
    for t, grads in enumerate(steps, 1):
        g = [x.astype(np.float64) for x in grads]
        if clip:
            norm = np.sqrt(sum(np.sum(x * x) for x in g))
            g = [x * min(1.0, clip / norm) for x in g]
        alpha = lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        for i in range(len(w)):
            m[i] = 0.9 * m[i] + 0.1 * g[i]
            v[i] = 0.999 * v[i] + 0.001 * g[i] ** 2
            w[i] = w[i] - alpha * m[i] / (np.sqrt(v[i]) + 1e-8)
            a[i] = w[i] if t == 1 else ema * a[i] + (1 - ema) * w[i]
    return w, a


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_make_optimizer_equals_adam_with_ema_and_clipping(clip):
    # Steps with a global gradient norm far above the clip (about 30) and far below (about
    # 0.03), so the clipping both acts and passes through; EMA 0.9 from the first step
    # (Keras starts the average at the weights themselves). Ours (fused on PyTorch) and Keras'
    # own optimizer both match the float64 equations to float32 rounding.
    steps = [_grads(s, k) for k, s in enumerate([10.0, 0.01, 5.0, 0.02, 3.0])]
    ours = make_optimizer(0.05, ema_decay=0.9, grad_clip=clip)
    reference = keras.optimizers.Adam(learning_rate=0.05, beta_1=0.9, beta_2=0.999,
                                      epsilon=1e-8, global_clipnorm=clip or None,
                                      use_ema=True, ema_momentum=0.9)
    assert type(reference) is not type(ours) or BACKEND != "torch"
    want_w, want_ema = _adam_float64(steps, 0.05, clip, 0.9)
    moved = 0.0
    for w, ema in (_run(ours, steps), _run(reference, steps)):
        for a, b, ea, eb in zip(w, want_w, ema, want_ema):
            np.testing.assert_allclose(a, b, rtol=0, atol=3e-6)
            np.testing.assert_allclose(ea, eb, rtol=0, atol=3e-6)
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


@pytest.mark.skipif(BACKEND != "torch", reason="the fused update exists on PyTorch only")
def test_fused_optimizer_runs_keras_update_while_torch_compile_traces(monkeypatch):
    # torch.compile cannot trace PyTorch's fused Adam kernel on the CPU (it has no tracing
    # implementation), so while compiling the fused class runs Keras' own Adam, EMA and
    # clipping: the same equations.
    from keras_pd import torch_optimizer

    traced = []
    monkeypatch.setattr(torch_optimizer, "_compiling", lambda: traced.append(1) or True)
    steps = [_grads(s, k) for k, s in enumerate([10.0, 0.01, 5.0])]
    ours = make_optimizer(0.05, ema_decay=0.9, grad_clip=1.0)
    assert isinstance(ours, FusedTorchMixin)
    want_w, want_ema = _adam_float64(steps, 0.05, 1.0, 0.9)
    w, ema = _run(ours, steps)
    assert len(traced) >= 3 * len(steps)  # Adam, EMA and clipping each asked, every step
    for a, b, ea, eb in zip(w, want_w, ema, want_ema):
        np.testing.assert_allclose(a, b, rtol=0, atol=3e-6)
        np.testing.assert_allclose(ea, eb, rtol=0, atol=3e-6)
