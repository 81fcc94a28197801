"""The UNet's blocks (Salimans & Ho, 2022; the official `diffusion_distillation` code, itself
derived from Improved DDPM / BigGAN), built from `networks.layers`:

* `ResBlock`: BigGAN-style residual block with optional up/down sampling inside the block and
  the time embedding injected as `GroupNorm(h) * (1 + scale) + shift`.
* `AttentionBlock`: multi-head self-attention over the spatial positions, with a
  zero-initialised output projection.

Both take a `data_format` (see `networks.layers.resolve_data_format`); their weights are the
same in both layouts.
"""

import math

import keras
from keras import ops

from keras_pd.networks.layers import (
    KERNEL_INIT,
    LayoutConv2D,
    call_sublayer,
    channel_axis,
    downsample_avg,
    feature_shape,
    group_norm,
    resolve_data_format,
    split_feature_shape,
    upsample_nearest,
)


@keras.saving.register_keras_serializable(package="keras_pd")
class ResBlock(keras.layers.Layer):
    """BigGAN-style residual block conditioned on an embedding.

    `h = swish(GN(x))`; optional resampling of both `h` and the skip `x`;
    `h = conv3x3(h)`; `scale, shift = Dense(swish(emb))`;
    `h = swish(GN(h) * (1 + scale) + shift)`; dropout; zero-initialised
    `conv3x3`; the skip goes through a 1x1 conv when the channel count
    changes. Returns `skip + h`, so the block is the identity (up to
    resampling/projection of the skip) at initialisation.

    Args:
        out_channels: int or None, output channels (None: same as input).
        resample: None, "up" (nearest 2x) or "down" (2x2 average pool).
        dropout: float, dropout rate before the last conv.
        data_format: "channels_last" (default, [B, H, W, C]),
            "channels_first" ([B, C, H, W]) or None (the backend's layout,
            see `resolve_data_format`): the layout of the input and output.
            The weights are the same in both layouts.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).
    """

    def __init__(self, out_channels=None, resample=None, dropout=0.0,
                 data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        if resample not in (None, "up", "down"):
            raise ValueError(
                f"ResBlock resample must be None, 'up' or 'down'; got {resample!r}."
            )
        self.out_channels = None if out_channels is None else int(out_channels)
        self.resample = resample
        self.dropout = float(dropout)
        resolve_data_format(data_format)  # validates
        self.data_format = data_format

    def build(self, x_shape, emb_shape=None):
        """Creates the sub-layers.

        Args:
            x_shape: shape of the input feature map, [B, H, W, C] or
                [B, C, H, W] (see `data_format`).
            emb_shape: shape of the embedding, [B, E].
        """
        fmt = self._fmt = resolve_data_format(self.data_format)
        if len(x_shape) != 4:
            raise ValueError(
                f"ResBlock expects a 4-D ({fmt}) input, got shape {x_shape}."
            )
        if emb_shape is None:
            raise ValueError("ResBlock needs the embedding: call it as block(x, emb).")
        b, h, w, in_ch = split_feature_shape(x_shape, fmt)
        in_ch = int(in_ch)
        out_ch = in_ch if self.out_channels is None else self.out_channels
        self._out_ch = out_ch
        if self.resample == "up":
            h, w = (None if h is None else 2 * h), (None if w is None else 2 * w)
        elif self.resample == "down":
            h, w = (None if h is None else h // 2), (None if w is None else w // 2)
        self.norm1 = group_norm(in_ch, name="norm1", data_format=fmt)
        self.norm1.build(x_shape)
        self.conv1 = LayoutConv2D(
            out_ch, 3, padding="same", data_format=fmt, kernel_initializer=KERNEL_INIT,
            name="conv1",
        )
        self.conv1.build(feature_shape(b, h, w, in_ch, fmt))
        self.temb_proj = keras.layers.Dense(
            2 * out_ch, kernel_initializer=KERNEL_INIT, name="temb_proj"
        )
        self.temb_proj.build(tuple(emb_shape))
        self.norm2 = group_norm(out_ch, name="norm2", data_format=fmt)
        self.norm2.build(feature_shape(b, h, w, out_ch, fmt))
        self.drop = keras.layers.Dropout(self.dropout, name="dropout")
        self.conv2 = LayoutConv2D(
            out_ch,
            3,
            padding="same",
            data_format=fmt,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name="conv2",
        )
        self.conv2.build(feature_shape(b, h, w, out_ch, fmt))
        if in_ch != out_ch:
            self.nin_shortcut = LayoutConv2D(
                out_ch, 1, data_format=fmt, kernel_initializer=KERNEL_INIT,
                name="nin_shortcut",
            )
            self.nin_shortcut.build(feature_shape(b, h, w, in_ch, fmt))
        else:
            self.nin_shortcut = None

    def _resample(self, x):
        if self.resample == "up":
            return upsample_nearest(x, self._fmt)
        if self.resample == "down":
            return downsample_avg(x, self._fmt)
        return x

    def call(self, x, emb, training=None):
        """Applies the block.

        Args:
            x: tensor [B, H, W, C] (or [B, C, H, W] when channels-first).
            emb: tensor [B, E], time (and class) embedding.
            training: bool, enables dropout.

        Returns:
            Tensor [B, H', W', out_channels] (or [B, out_channels, H', W'])
            with H' = 2H ("up"), H/2 ("down") or H.
        """
        h = ops.silu(call_sublayer(self.norm1, x))
        h = self._resample(h)
        x = self._resample(x)
        h = call_sublayer(self.conv1, h)
        emb_out = call_sublayer(self.temb_proj, ops.silu(emb))
        # [B, 2C] -> broadcastable [B, 1, 1, 2C] or [B, 2C, 1, 1]; split on the channels.
        emb_out = ops.reshape(emb_out, feature_shape(-1, 1, 1, 2 * self._out_ch, self._fmt))
        scale, shift = ops.split(emb_out, 2, axis=channel_axis(self._fmt))
        h = call_sublayer(self.norm2, h, scale, shift)
        h = ops.silu(h)
        h = call_sublayer(self.drop, h, training=training)
        h = call_sublayer(self.conv2, h)
        if self.nin_shortcut is not None:
            x = call_sublayer(self.nin_shortcut, x)
        return x + h

    def compute_output_shape(self, x_shape, emb_shape=None):
        """Output shape for a given input shape.

        Args:
            x_shape: input shape [B, H, W, C] (or [B, C, H, W]).
            emb_shape: embedding shape (unused).

        Returns:
            Output shape tuple, in the same layout.
        """
        fmt = resolve_data_format(self.data_format)
        b, h, w, c = split_feature_shape(x_shape, fmt)
        out_ch = c if self.out_channels is None else self.out_channels
        if self.resample == "up":
            h, w = (None if h is None else 2 * h), (None if w is None else 2 * w)
        elif self.resample == "down":
            h, w = (None if h is None else h // 2), (None if w is None else w // 2)
        return feature_shape(b, h, w, out_ch, fmt)

    def get_config(self):
        """Returns the constructor arguments.

        Returns:
            A JSON-serialisable dict.
        """
        config = super().get_config()
        config.update(
            {
                "out_channels": self.out_channels,
                "resample": self.resample,
                "dropout": self.dropout,
                "data_format": self.data_format,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_pd")
class AttentionBlock(keras.layers.Layer):
    """Multi-head self-attention over the H*W positions, with a residual add.

    `h = GN(x)`; q, k, v by a (fused) dense projection of the channels;
    softmax(q k^T / sqrt(head_dim)) v per head; output projection
    initialised to zero; returns `x + h` (the identity at initialisation).

    Args:
        num_heads: int or None, number of heads (default 1 when `head_dim`
            is None). Ignored when `head_dim` is given.
        head_dim: int or None, channels per head; the number of heads is
            then `channels // head_dim`.
        data_format: "channels_last" (default, [B, H, W, C]),
            "channels_first" ([B, C, H, W]) or None (the backend's layout,
            see `resolve_data_format`). The weights are the same in both.
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(self, num_heads=None, head_dim=None, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = None if num_heads is None else int(num_heads)
        self.head_dim = None if head_dim is None else int(head_dim)
        resolve_data_format(data_format)  # validates
        self.data_format = data_format

    def build(self, x_shape):
        """Creates the sub-layers.

        Args:
            x_shape: input shape [B, H, W, C] (or [B, C, H, W]).
        """
        fmt = self._fmt = resolve_data_format(self.data_format)
        if len(x_shape) != 4:
            raise ValueError(
                f"AttentionBlock expects a 4-D ({fmt}) input, got shape {x_shape}."
            )
        c = int(x_shape[channel_axis(fmt)])
        if self.head_dim is not None:
            if c % self.head_dim:
                raise ValueError(
                    f"AttentionBlock: channels {c} not divisible by head_dim {self.head_dim}."
                )
            heads, hd = c // self.head_dim, self.head_dim
        else:
            heads = 1 if self.num_heads is None else self.num_heads
            if c % heads:
                raise ValueError(
                    f"AttentionBlock: channels {c} not divisible by num_heads {heads}."
                )
            hd = c // heads
        self._channels, self._heads, self._hd = c, heads, hd
        self.norm = group_norm(c, name="norm", data_format=fmt)
        self.norm.build(x_shape)
        self.qkv = keras.layers.Dense(3 * c, kernel_initializer=KERNEL_INIT, name="qkv")
        self.qkv.build((None, None, c))
        self.proj_out = keras.layers.Dense(
            c, kernel_initializer="zeros", bias_initializer="zeros", name="proj_out"
        )
        self.proj_out.build((None, None, c))

    def call(self, x):
        """Applies the block.

        Args:
            x: tensor [B, H, W, C] (or [B, C, H, W]).

        Returns:
            Tensor of the shape of `x`.
        """
        c, heads, hd = self._channels, self._heads, self._hd
        channels_first = self._fmt == "channels_first"
        shape = ops.shape(x)
        _, height, width, _ = split_feature_shape(shape, self._fmt)
        length = height * width
        if channels_first:  # [B, C, H, W] -> [B, C, L] -> [B, L, C]
            h = ops.transpose(ops.reshape(call_sublayer(self.norm, x), (-1, c, length)),
                              (0, 2, 1))
        else:
            h = ops.reshape(call_sublayer(self.norm, x), (-1, length, c))
        qkv = call_sublayer(self.qkv, h)  # [B, L, 3C]
        qkv = ops.reshape(qkv, (-1, length, 3 * heads, hd))
        q, k, v = ops.split(qkv, 3, axis=2)  # each [B, L, heads, hd]
        # softmax(q k^T / sqrt(hd)) v per head: the backend's fused kernel where it has one.
        h = ops.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(hd))
        h = ops.reshape(h, (-1, length, c))
        h = call_sublayer(self.proj_out, h)  # [B, L, C]
        if channels_first:
            return x + ops.reshape(ops.transpose(h, (0, 2, 1)), (-1, c, height, width))
        return x + ops.reshape(h, (-1, height, width, c))

    def compute_output_shape(self, x_shape):
        """Output shape (same as the input).

        Args:
            x_shape: input shape.

        Returns:
            The input shape.
        """
        return tuple(x_shape)

    def get_config(self):
        """Returns the constructor arguments.

        Returns:
            A JSON-serialisable dict.
        """
        config = super().get_config()
        config.update(
            {"num_heads": self.num_heads, "head_dim": self.head_dim,
             "data_format": self.data_format}
        )
        return config
