"""PyTorch backend only: the optimizer's EMA and global-norm clipping as fused `_foreach` calls.

Keras' base optimizer updates the EMA of the weights with about eight `keras.ops` calls per
variable and clips by global norm with three more, in a Python loop. JAX and TensorFlow (XLA)
compile that loop into a few fused kernels; eager PyTorch runs every op, so on small networks
the EMA and the clipping are a quarter of the whole training step (docs/performance.md,
"Backend gap"). Keras' own PyTorch Adam already updates all moments in a handful of
`torch._foreach_*` calls; this mixin does the same for the two remaining loops:

    EMA:      a <- m * a + (1 - m) * w,   m = ema_momentum (0 on the first update, as Keras)
    clipping: g <- g * clip * min(1 / ||g||, 1 / clip),   ||g|| the global L2 norm (NaN stays NaN)

The variables, their order and the arithmetic are Keras' own, so checkpoints and results are
interchangeable with the unfused optimizer (tested to float32 rounding in
tests/test_training.py).
"""

import keras

_CLASSES = {}


class FusedTorchMixin:
    """Mixed into a Keras optimizer's class on the torch backend: fused EMA and clipping."""

    def _update_model_variables_moving_average(self, trainable_variables):
        import torch

        if not self.use_ema:
            return
        pairs = [(v.value, a.value) for v, a in zip(trainable_variables,
                                                      self._model_variables_moving_average)
                 if a is not None]
        if not pairs:
            return
        values, averages = (list(p) for p in zip(*pairs))
        with torch.no_grad():
            not_first = (self.iterations.value != 0).to(values[0].dtype)
            momentum = not_first * self.ema_momentum
            torch._foreach_mul_(averages, momentum)
            torch._foreach_add_(averages, torch._foreach_mul(values, 1.0 - momentum))

    def _clip_gradients(self, grads):
        import torch

        if not (self.global_clipnorm and self.global_clipnorm > 0) or (
                self.clipnorm and self.clipnorm > 0):
            return super()._clip_gradients(grads)
        present = [g for g in grads if g is not None]
        if not present:
            return grads
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present)))
            clip = self.global_clipnorm
            scale = clip * torch.minimum(1.0 / norm, torch.tensor(1.0 / clip, dtype=norm.dtype))
            scale = scale + (norm - norm)
            scaled = iter(torch._foreach_mul(present, scale))
        return [next(scaled) if g is not None else None for g in grads]


def fuse_for_torch(optimizer):
    """Gives `optimizer` the fused EMA and clipping on the torch backend; elsewhere a no-op.

    Returns the same instance (its class swapped for a subclass with `FusedTorchMixin`).
    """
    if keras.backend.backend() != "torch" or isinstance(optimizer, FusedTorchMixin):
        return optimizer
    base = type(optimizer)
    if base not in _CLASSES:
        _CLASSES[base] = type(f"FusedTorch{base.__name__}", (FusedTorchMixin, base), {})
    optimizer.__class__ = _CLASSES[base]
    return optimizer
