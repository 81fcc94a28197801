"""PyTorch backend only: Adam, its EMA and global-norm clipping in fewer passes over the weights.

Keras' base optimizer updates the EMA of the weights with about eight `keras.ops` calls per
variable and clips by global norm with three more, in a Python loop; its PyTorch Adam runs ten
`torch._foreach_*` calls. JAX and TensorFlow (XLA) compile all of that into a few fused kernels.
On the CPU a `_foreach` call is itself a loop of one kernel per tensor, so eager PyTorch makes
about 20 passes over the weights per update, a large part of a small network's step
(docs/performance.md, "Against a plain PyTorch loop"). This mixin uses

    Adam:     PyTorch's fused Adam kernel (one pass), with Keras' arithmetic: Keras adds epsilon to
              sqrt(v) before the bias correction, PyTorch after it, so the kernel gets
              eps_t = eps / sqrt(1 - beta_2^t), which makes the two updates identical:
              w <- w - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + eps)
    EMA:      a <- a + (1 - m)(w - a) = m * a + (1 - m) * w, one lerp per tensor
              (m = ema_momentum; 0 on the first update, as Keras)
    clipping: g <- g * clip * min(1 / ||g||, 1 / clip),   ||g|| the global L2 norm (NaN stays NaN)

The variables, their order and the arithmetic are Keras' own, so checkpoints and results are
interchangeable with the unfused optimizer (tested to float32 rounding in
tests/test_optimizer.py).
"""

import keras

_CLASSES = {}


def _compiling():
    """True while torch.compile traces the step: Keras' own update is then compiled (and fused by
    the compiler), since the fused Adam kernel has no tracing implementation on the CPU."""
    import torch

    return torch.compiler.is_compiling()


class FusedTorchMixin:
    """Mixed into a Keras optimizer's class on the torch backend: fused EMA and clipping."""

    def _update_model_variables_moving_average(self, trainable_variables):
        import torch

        if not self.use_ema:
            return
        if _compiling():
            return super()._update_model_variables_moving_average(trainable_variables)
        pairs = [(v.value, a.value) for v, a in zip(trainable_variables,
                                                      self._model_variables_moving_average)
                 if a is not None]
        if not pairs:
            return
        values, averages = (list(p) for p in zip(*pairs))
        with torch.no_grad():
            momentum = self.ema_momentum if int(self.iterations.value) else 0.0
            torch._foreach_lerp_(averages, values, 1.0 - momentum)

    def _parallel_update_step(self, grads, variables, learning_rate):
        import torch

        values = [v.value for v in variables]
        if (not self._fused_adam or self.amsgrad or _compiling()
                or any(v.dtype != torch.float32 for v in values)):
            return super()._parallel_update_step(grads, variables, learning_rate)
        with torch.no_grad():
            step = (self.iterations.value + 1).to(torch.float32)
            lr = getattr(learning_rate, "value", learning_rate)  # a Keras variable or a tensor
            lr = torch.as_tensor(lr, dtype=torch.float32)
            eps = self.epsilon / float(torch.sqrt(1.0 - self.beta_2 ** step))
            index = self._get_variable_index
            torch._fused_adam_(
                values, [g.to(torch.float32) for g in grads],
                [self._momentums[index(v)].value for v in variables],
                [self._velocities[index(v)].value for v in variables],
                [], [step] * len(values), amsgrad=False, lr=lr, beta1=self.beta_1,
                beta2=self.beta_2, weight_decay=0.0, eps=eps, maximize=False)

    def _clip_gradients(self, grads):
        import torch

        if not (self.global_clipnorm and self.global_clipnorm > 0) or (
                self.clipnorm and self.clipnorm > 0) or _compiling():
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
        from keras.src.backend.torch.optimizers.torch_adam import Adam

        # Only Keras' own Adam (not AdamW or a subclass) takes the fused Adam kernel.
        _CLASSES[base] = type(f"FusedTorch{base.__name__}", (FusedTorchMixin, base),
                              {"_fused_adam": base is Adam})
    optimizer.__class__ = _CLASSES[base]
    return optimizer
