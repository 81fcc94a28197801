"""Non-finite numbers in training: skipping updates whose gradients hold NaN or Inf.

By default a run stops at the first non-finite loss (`training.RunCallback`), and a checkpoint
is never written from non-finite weights (`checkpoint.CheckpointManager.save`). With
`skip_nonfinite=True` the optimizer instead drops every update whose gradients are not all
finite, as the authors' code does (REFERENCE 5, 6): weights, Adam moments, the EMA and the
iteration counter all keep their values, so the learning-rate schedule does not advance either.

Keras' `LossScaleOptimizer` also skips non-finite steps, but it rescales the loss, changes the
scale after every skip and adds variables to the checkpoint; this wrapper adds no variable, so
checkpoints keep one layout with the option on or off and a run can be resumed either way.
Skipped updates are counted as (batches run) - (optimizer iterations).

One code path: `apply` (TensorFlow and PyTorch, stateful) runs the update under `ops.cond`;
`stateless_apply` (JAX) selects between the updated and the old values with `ops.cond`.
(A TensorFlow multi-replica strategy without merge-call-free updates is not supported here.)
"""

import keras
from keras import ops


def all_finite(tensors):
    """A scalar bool tensor: every entry of every (non-None) tensor is finite."""
    checks = [ops.all(ops.isfinite(t)) for t in tensors if t is not None]
    if not checks:
        return ops.convert_to_tensor(True)
    return ops.all(ops.stack(checks))


class SkipNonFiniteMixin:
    """Mixed into a Keras optimizer's class: an update with non-finite gradients changes nothing."""

    _skip_stateless = False

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        parent = super().apply
        if self._skip_stateless or not self.built:
            # Inside stateless_apply (which already chose), or the building call.
            return parent(grads, trainable_variables)
        finite = all_finite(grads)
        if keras.backend.backend() == "jax":
            # JAX trains through stateless_apply; a direct apply is eager, its flag concrete
            # (lax.cond cannot hold the variable assignments of a stateful update).
            if bool(finite):
                parent(grads, trainable_variables)
            return
        ops.cond(finite, lambda: parent(grads, trainable_variables), lambda: None)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        grads = list(grads)
        optimizer_variables = list(optimizer_variables)
        trainable_variables = list(trainable_variables)
        parent = super().stateless_apply

        def update():
            self._skip_stateless = True
            try:
                new_trainable, new_optimizer = parent(optimizer_variables, grads,
                                                      trainable_variables)
            finally:
                self._skip_stateless = False
            return list(new_trainable), list(new_optimizer)

        return ops.cond(all_finite(grads), update,
                        lambda: (trainable_variables, optimizer_variables))


_CLASSES = {}


def skip_nonfinite_updates(optimizer):
    """Makes `optimizer` (a built-in Keras optimizer instance) skip non-finite updates.

    The instance keeps its backend's own update code (on PyTorch, Keras swaps in a fused Adam);
    only `apply` and `stateless_apply` gain the finiteness check. Returns the same instance.
    """
    base = type(optimizer)
    if isinstance(optimizer, SkipNonFiniteMixin):
        return optimizer
    if base not in _CLASSES:
        _CLASSES[base] = type(f"SkipNonFinite{base.__name__}", (SkipNonFiniteMixin, base), {})
    optimizer.__class__ = _CLASSES[base]
    return optimizer
