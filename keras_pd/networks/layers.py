"""The layers and functions the diffusion networks are made of, written with `keras.ops` only.

* `timestep_embedding`: sinusoidal embedding of the network time (the official
  `diffusion_distillation` code's); `GuidanceEmbedding` embeds a guidance weight the same way.
* `GroupNorm` (optionally modulated), `LayoutConv2D`, nearest upsampling and average pooling:
  the pieces of the UNet's blocks (`networks.blocks`).
* The feature-map layout helpers, and `call_sublayer`, how every block calls its sub-layers.

The image layers take a `data_format` ("channels_last", the default: [B, H, W, C],
or "channels_first": [B, C, H, W]); the UNet runs them channels-first on the torch
backend, whose convolutions are channels-first natively (see `resolve_data_format`).
Weights do not depend on the layout: Conv2D kernels are (kh, kw, in, out) and
GroupNorm gamma/beta are (C,) in both. The code avoids `x[:, None]` style indexing
(it becomes Flex ops in TFLite) and uses `ops.reshape` / `ops.expand_dims`.
"""

import math

import keras
import numpy as np
from keras import ops

# Epsilon of flax.linen.GroupNorm, used by the official code.
GROUPNORM_EPSILON = 1e-6
# Default kernel initializer of flax.linen Dense/Conv (variance scaling, fan-in).
KERNEL_INIT = "lecun_normal"


DATA_FORMATS = ("channels_last", "channels_first")


def resolve_data_format(data_format=None):
    """The feature-map layout to compute in.

    Args:
        data_format: None, "channels_last" or "channels_first". None picks
            the backend's fast layout: "channels_first" on torch (its
            convolutions would otherwise transpose around every call),
            "channels_last" elsewhere.

    Returns:
        "channels_last" or "channels_first".

    Raises:
        ValueError: for any other value.
    """
    if data_format is None:
        return "channels_first" if keras.backend.backend() == "torch" else "channels_last"
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"data_format must be None, 'channels_last' or 'channels_first'; got {data_format!r}."
        )
    return data_format


def channel_axis(data_format):
    """Channel axis of a 4-D feature map: 1 for "channels_first", -1 for "channels_last".

    Args:
        data_format: "channels_last" or "channels_first".

    Returns:
        int, the axis.
    """
    return 1 if data_format == "channels_first" else -1


def _spatial_axes(data_format):
    return (2, 3) if data_format == "channels_first" else (1, 2)


def feature_shape(b, h, w, c, data_format):
    """A 4-D feature-map shape in the given layout.

    Args:
        b, h, w, c: batch, height, width and channel sizes (int, -1 or None).
        data_format: "channels_last" or "channels_first".

    Returns:
        (b, h, w, c) or (b, c, h, w).
    """
    return (b, c, h, w) if data_format == "channels_first" else (b, h, w, c)


def split_feature_shape(shape, data_format):
    """(b, h, w, c) of a 4-D feature-map shape in the given layout."""
    if data_format == "channels_first":
        b, c, h, w = shape
    else:
        b, h, w, c = shape
    return b, h, w, c


def num_groups(channels, max_groups=32):
    """Number of GroupNorm groups for a channel count.

    Args:
        channels: int, number of channels.
        max_groups: int, upper bound on the number of groups.

    Returns:
        The largest divisor of `channels` that is <= `max_groups`; this is
        `min(32, channels)` whenever that divides `channels`.
    """
    groups = min(max_groups, int(channels))
    while channels % groups:
        groups -= 1
    return groups


def call_sublayer(layer, *args, **kwargs):
    """Calls a built sub-layer: `layer.call(...)` directly on eager torch, `layer(...)` otherwise.

    Keras' `Layer.__call__` converts and casts the inputs, resolves `training` from the call
    context, attaches masks, opens name and autocast scopes and, on the torch backend, goes on
    through `torch.nn.Module.__call__` and `Operation.__call__`. JAX and TensorFlow run that
    Python once, while tracing the step; eager PyTorch runs it on every call of every step, and
    on the small networks of this library it is a large part of the forward pass
    (docs/performance.md, "Where the step's time goes"). For a built layer called on float32
    torch tensors, with a float32 policy, no autocast scope, no activity regulariser and no
    rematerialisation or quantization, all of it is a no-op and the call goes straight to
    `layer.call`. Anything else (other backends, symbolic tensors, mixed precision, a mask)
    takes `layer(...)`.

    `training` is passed as given, not looked up in the call context: callers are layers whose
    own `training` Keras has resolved, and they pass it on to the sub-layers that use it.

    Args:
        layer: a built `keras.layers.Layer`.
        *args, **kwargs: the call's arguments.

    Returns:
        The layer's output.
    """
    if _eager_torch_float32(layer, args):
        return layer.call(*args, **kwargs)
    return layer(*args, **kwargs)


# Keras' open autocast scope (not public API): where a Keras version lacks it, no call is direct.
_autocast_scope = getattr(getattr(keras.src, "backend", None), "get_autocast_scope", None)


def _eager_torch_float32(layer, args):
    if (keras.backend.backend() != "torch" or not layer.built or _autocast_scope is None
            or layer.dtype_policy.name != "float32" or _autocast_scope() is not None
            or layer.activity_regularizer is not None or getattr(layer, "_remat_mode", True)
            or getattr(layer, "quantization_mode", None) is not None):
        return False
    from keras_pd import torch_ops

    return torch_ops.plain_float32_tensors(args)


@keras.saving.register_keras_serializable(package="keras_pd")
class GroupNorm(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization`, optionally modulated: `GN(x) * (1 + scale) + shift`.

    The weights (gamma, beta) and the arithmetic are Keras' own. On the torch backend, for a
    channels-first float32 input, it runs as PyTorch's native group norm plus one fused
    multiply-add (`keras_pd.torch_ops`); elsewhere as Keras' layer followed by the modulation.

    Args:
        **kwargs: `keras.layers.GroupNormalization` arguments.
    """

    def call(self, inputs, scale=None, shift=None):
        """Normalises `inputs`, then applies the modulation.

        Args:
            inputs: tensor [B, ..., C] or [B, C, ...] (see `axis`).
            scale, shift: None, or tensors broadcastable to `inputs` (per example and channel).

        Returns:
            Tensor of the shape of `inputs`.
        """
        if (keras.backend.backend() == "torch" and self.axis == 1 and self.scale
                and self.center and self.compute_dtype == "float32"):
            from keras_pd import torch_ops

            return torch_ops.group_norm(inputs, self.groups, self.gamma.value, self.beta.value,
                                        self.epsilon, scale, shift)
        out = super().call(inputs)
        if scale is not None:
            out = out * (1.0 + scale)
        if shift is not None:
            out = out + shift
        return out


def group_norm(channels, name=None, data_format="channels_last"):
    """A `GroupNorm` layer with the project's settings.

    Args:
        channels: int, number of channels of the normalised tensor.
        name: optional layer name.
        data_format: "channels_last" or "channels_first", the layout of the
            normalised tensor (sets the channel axis; gamma/beta are (C,)
            either way).

    Returns:
        An unbuilt `GroupNorm` layer.
    """
    return GroupNorm(
        groups=num_groups(channels),
        axis=channel_axis(data_format),
        epsilon=GROUPNORM_EPSILON,
        name=name,
    )


class LayoutConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose channels-first bias add is a plain broadcast.

    Keras 3's TensorFlow `ops.add` (used by `Conv2D.call`) turns `x + bias` with a
    (1, C, 1, 1) bias into `tf.nn.bias_add` and picks NHWC whenever `x`'s last axis
    also has size C: a channels-first Conv2D on TensorFlow adds its bias along the
    width when W == filters. On PyTorch the stride-1 convolution adds its bias inside
    the kernel (`torch_ops.conv2d`), as PyTorch's own layers do, instead of a separate
    add whose backward is a sum over batch and space. Channels-last calls are Keras' own.
    Same weights, arguments and names as `keras.layers.Conv2D`.
    """

    def call(self, inputs):
        if not (self.use_bias and self.data_format == "channels_first"):
            return super().call(inputs)
        if (keras.backend.backend() == "torch" and self.groups == 1
                and all(s == 1 for s in self.strides) and self.compute_dtype == "float32"
                and (self.padding == "valid" or all(k % 2 for k in self.kernel_size))):
            from keras_pd import torch_ops

            outputs = torch_ops.conv2d(inputs, self.kernel.value, self.bias.value, self.padding,
                                       self.dilation_rate)
            return outputs if self.activation is None else self.activation(outputs)
        outputs = self.convolution_op(inputs, self.kernel)
        outputs = outputs + ops.reshape(self.bias, (1, self.filters, 1, 1))
        return outputs if self.activation is None else self.activation(outputs)


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding of the network time.

    As in the official code (tensor2tensor convention), the time is scaled by
    1000 and embedded as `[sin(1000 t f_k), cos(1000 t f_k)]` with frequencies
    `f_k = max_period ** (-k / (half - 1))`, `k = 0 .. half - 1`. An odd `dim`
    is zero-padded by one column.

    Args:
        t: tensor of shape [B] (or [B, 1]), network time in [0, 1].
        dim: int, embedding size.
        max_period: float, controls the lowest frequency.

    Returns:
        Float32 tensor of shape [B, dim].
    """
    half = dim // 2
    if half < 1:
        raise ValueError(f"timestep_embedding needs dim >= 2, got dim={dim}.")
    exponent = -math.log(max_period) / max(half - 1, 1)
    freqs = np.exp(np.arange(half, dtype="float32") * exponent).astype("float32")
    t = ops.reshape(ops.cast(t, "float32"), (-1,)) * 1000.0
    args = ops.expand_dims(t, 1) * ops.expand_dims(ops.convert_to_tensor(freqs), 0)
    emb = ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1)
    if dim % 2 == 1:
        emb = ops.pad(emb, [[0, 0], [0, 1]])
    return emb


def upsample_nearest(x, data_format="channels_last"):
    """Nearest-neighbour 2x upsampling of a feature map.

    Args:
        x: tensor [B, H, W, C] ("channels_last") or [B, C, H, W]
            ("channels_first").
        data_format: the layout of `x`.

    Returns:
        Tensor [B, 2H, 2W, C] or [B, C, 2H, 2W].
    """
    if keras.backend.backend() == "torch" and data_format == "channels_first":
        from keras_pd import torch_ops

        return torch_ops.upsample_nearest(x)
    h_axis, w_axis = _spatial_axes(data_format)
    x = ops.repeat(x, 2, axis=h_axis)
    return ops.repeat(x, 2, axis=w_axis)


def downsample_avg(x, data_format="channels_last"):
    """2x2 average pooling (stride 2) of a feature map.

    Args:
        x: tensor [B, H, W, C] ("channels_last") or [B, C, H, W]
            ("channels_first") with even H and W.
        data_format: the layout of `x`.

    Returns:
        Tensor [B, H/2, W/2, C] or [B, C, H/2, W/2].
    """
    return ops.average_pool(
        x, pool_size=2, strides=2, padding="valid", data_format=data_format
    )


def class_one_hot(labels, num_classes):
    """One-hot class vectors [B, K] for labels in 0..K-1; the null label K gives zeros.

    The null label is classifier-free guidance's "no class" (Ho & Salimans 2021): a class
    embedding `Dense(one_hot)` then reduces to its bias, one learned unconditional embedding,
    without an extra weight row. Written without an out-of-range one_hot, which the torch
    backend rejects.

    Args:
        labels: int tensor [B] (or [B, 1]) in 0..K (K = null).
        num_classes: K.

    Returns:
        Float32 tensor [B, K].
    """
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    known = ops.cast(ops.less(labels, num_classes), "float32")
    one_hot = ops.one_hot(ops.minimum(labels, num_classes - 1), num_classes)
    return one_hot * ops.expand_dims(known, -1)


# Guidance weights w are embedded like times t in [0, 1] after division by this scale, so the
# usual range w in [0, 8] stays within the time embedding's well-resolved frequencies.
GUIDANCE_SCALE = 10.0


@keras.saving.register_keras_serializable(package="keras_pd")
class GuidanceEmbedding(keras.layers.Layer):
    """Embeds a guidance weight w [B] like the time: sinusoids -> Dense -> swish -> Dense.

    The w-conditioned students of guided distillation (Meng et al., CVPR 2023) add this to the
    time embedding. The last Dense is zero-initialised: a student built from a teacher's weights
    starts as the teacher's conditional model for every w.

    Args:
        units: output size (the network's embedding width).
        emb_dim: size of the sinusoidal embedding of w / GUIDANCE_SCALE.
    """

    def __init__(self, units, emb_dim=128, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.emb_dim = int(emb_dim)

    def build(self, w_shape=None):
        self.dense0 = keras.layers.Dense(self.units, kernel_initializer=KERNEL_INIT,
                                         name="dense0")
        self.dense0.build((None, self.emb_dim))
        self.dense1 = keras.layers.Dense(self.units, kernel_initializer="zeros", name="dense1")
        self.dense1.build((None, self.units))

    def call(self, w):
        """w [B] -> embedding [B, units]."""
        emb = timestep_embedding(ops.cast(w, "float32") / GUIDANCE_SCALE, self.emb_dim)
        return call_sublayer(self.dense1, ops.silu(call_sublayer(self.dense0, emb)))

    def compute_output_shape(self, w_shape):
        return (w_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, emb_dim=self.emb_dim)
        return config
