"""Residual MLP denoiser for vector data (and small flattened images).

Each block mirrors the UNet's ResBlock with dense layers:
`h = Dense(swish(LN(x)))`; `h = swish(LN(h) * (1 + scale) + shift)` with
`scale, shift = Dense(swish(emb))`; dropout; zero-initialised Dense;
`x + h`. The output Dense is zero-initialised too, so the network outputs
exactly zero at initialisation.
"""

import math

import keras
from keras import ops

from keras_pd.networks.layers import (
    KERNEL_INIT,
    GuidanceEmbedding,
    call_sublayer,
    class_one_hot,
    timestep_embedding,
)

LAYERNORM_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="keras_pd")
class MLPResBlock(keras.layers.Layer):
    """Residual dense block with FiLM conditioning on an embedding.

    Args:
        dropout: float, dropout rate before the last Dense.
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(self, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dropout = float(dropout)

    def build(self, x_shape, emb_shape=None):
        """Creates the sub-layers.

        Args:
            x_shape: [B, width] input shape.
            emb_shape: [B, E] embedding shape.
        """
        if emb_shape is None:
            raise ValueError("MLPResBlock needs the embedding: call it as block(x, emb).")
        width = int(x_shape[-1])
        self._width = width
        self.norm1 = keras.layers.LayerNormalization(epsilon=LAYERNORM_EPSILON, name="norm1")
        self.norm1.build(x_shape)
        self.dense1 = keras.layers.Dense(width, kernel_initializer=KERNEL_INIT, name="dense1")
        self.dense1.build(x_shape)
        self.emb_proj = keras.layers.Dense(2 * width, kernel_initializer=KERNEL_INIT, name="emb_proj")
        self.emb_proj.build(tuple(emb_shape))
        self.norm2 = keras.layers.LayerNormalization(epsilon=LAYERNORM_EPSILON, name="norm2")
        self.norm2.build(x_shape)
        self.drop = keras.layers.Dropout(self.dropout, name="dropout")
        self.dense2 = keras.layers.Dense(
            width, kernel_initializer="zeros", bias_initializer="zeros", name="dense2"
        )
        self.dense2.build(x_shape)

    def call(self, x, emb, training=None):
        """Applies the block.

        Args:
            x: tensor [B, width].
            emb: tensor [B, E].
            training: bool, enables dropout.

        Returns:
            Tensor [B, width].
        """
        h = call_sublayer(self.dense1, ops.silu(call_sublayer(self.norm1, x)))
        scale, shift = ops.split(call_sublayer(self.emb_proj, ops.silu(emb)), 2, axis=-1)
        h = ops.silu(call_sublayer(self.norm2, h) * (1.0 + scale) + shift)
        h = call_sublayer(self.dense2, call_sublayer(self.drop, h, training=training))
        return x + h

    def compute_output_shape(self, x_shape, emb_shape=None):
        """Output shape (same as the input).

        Args:
            x_shape: input shape.
            emb_shape: unused.

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
        config.update({"dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="keras_pd")
class MLPDenoiser(keras.layers.Layer):
    """Residual MLP denoiser `f(z, t, labels)`.

    The input `z` has shape [B, *S, C] (e.g. [B, D] vectors or [B, H, W, C]
    images); everything but the batch axis is flattened, and the output has
    shape [B, *S, out_dim]: the last axis is treated as the channel axis, as
    in the UNet. For vectors [B, D] the output is [B, out_dim].

    Time: `timestep_embedding(t, emb_dim)` -> Dense(width) -> swish ->
    Dense(width); classes add `Dense(width)(class_one_hot(labels))` (label
    `num_classes` is the null label); a guidance weight w adds
    `GuidanceEmbedding(width)(w)` when `guidance` is set.

    Args:
        out_dim: int, size of the output's last (channel) axis.
        width: int, hidden width.
        num_blocks: int, number of residual blocks.
        emb_dim: int, size of the sinusoidal time embedding.
        dropout: float, dropout rate inside the blocks.
        num_classes: int or None, number of classes for class conditioning.
        guidance: bool, take a guidance weight w [B] as input (guided students).
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        out_dim,
        width=256,
        num_blocks=4,
        emb_dim=128,
        dropout=0.0,
        num_classes=None,
        guidance=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.out_dim = int(out_dim)
        self.width = int(width)
        self.num_blocks = int(num_blocks)
        self.emb_dim = int(emb_dim)
        self.dropout = float(dropout)
        self.num_classes = None if not num_classes else int(num_classes)
        self.guidance = bool(guidance)
        self._data_shape = None

    def build(self, z_shape, t_shape=None, labels_shape=None, guidance_shape=None):
        """Creates all sub-layers.

        Args:
            z_shape: [B, *S, C] input shape with known non-batch dimensions.
            t_shape: [B] time shape (unused).
            labels_shape: [B] labels shape (unused).
            guidance_shape: [B] guidance shape (unused).
        """
        z_shape = tuple(z_shape)
        if len(z_shape) < 2 or any(d is None for d in z_shape[1:]):
            raise ValueError(
                f"MLPDenoiser needs input [B, ...] with known non-batch dims; got shape {z_shape}."
            )
        self._data_shape = tuple(int(d) for d in z_shape[1:])
        in_features = math.prod(self._data_shape)
        self._out_shape = self._data_shape[:-1] + (self.out_dim,)
        b, w = z_shape[0], self.width
        self.temb_dense0 = keras.layers.Dense(w, kernel_initializer=KERNEL_INIT, name="temb_dense0")
        self.temb_dense0.build((b, self.emb_dim))
        self.temb_dense1 = keras.layers.Dense(w, kernel_initializer=KERNEL_INIT, name="temb_dense1")
        self.temb_dense1.build((b, w))
        if self.num_classes:
            self.class_emb = keras.layers.Dense(w, kernel_initializer=KERNEL_INIT, name="class_emb")
            self.class_emb.build((b, self.num_classes))
        else:
            self.class_emb = None
        self.dense_in = keras.layers.Dense(w, kernel_initializer=KERNEL_INIT, name="dense_in")
        self.dense_in.build((b, in_features))
        self.blocks = []
        for i in range(self.num_blocks):
            block = MLPResBlock(dropout=self.dropout, name=f"block_{i}")
            block.build((b, w), (b, w))
            self.blocks.append(block)
        self.norm_out = keras.layers.LayerNormalization(epsilon=LAYERNORM_EPSILON, name="norm_out")
        self.norm_out.build((b, w))
        self.dense_out = keras.layers.Dense(
            math.prod(self._out_shape),
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name="dense_out",
        )
        self.dense_out.build((b, w))
        # Built last: its weights come after the conditional network's (see guidance.py).
        self.guidance_emb = None
        if self.guidance:
            self.guidance_emb = GuidanceEmbedding(w, self.emb_dim, name="guidance_emb")
            self.guidance_emb.build((b,))

    def call(self, z, t, labels=None, guidance=None, training=None):
        """Runs the network.

        Args:
            z: float tensor [B, *S, C].
            t: float tensor [B], network time in [0, 1].
            labels: int tensor [B]; required when `num_classes` is set,
                ignored otherwise.
            guidance: float tensor [B], the guidance weight w; required when
                `guidance` is set, ignored otherwise.
            training: bool, enables dropout.

        Returns:
            Tensor [B, *S, out_dim].
        """
        shape = tuple(ops.shape(z))[1:]
        if all(isinstance(d, int) for d in shape) and tuple(shape) != self._data_shape:
            raise ValueError(
                f"MLPDenoiser was built for data shape {self._data_shape} but was "
                f"called on input of shape {tuple(ops.shape(z))}."
            )
        emb = timestep_embedding(t, self.emb_dim)
        emb = call_sublayer(self.temb_dense1, ops.silu(call_sublayer(self.temb_dense0, emb)))
        if self.class_emb is not None:
            if labels is None:
                raise ValueError(
                    f"MLPDenoiser was built with num_classes={self.num_classes}: pass labels."
                )
            emb = emb + call_sublayer(self.class_emb, class_one_hot(labels, self.num_classes))
        if self.guidance_emb is not None:
            if guidance is None:
                raise ValueError("MLPDenoiser was built with guidance=True: pass guidance.")
            emb = emb + call_sublayer(self.guidance_emb, guidance)
        h = ops.reshape(z, (-1, math.prod(self._data_shape)))
        h = call_sublayer(self.dense_in, h)
        for block in self.blocks:
            h = call_sublayer(block, h, emb, training=training)
        h = call_sublayer(self.dense_out, ops.silu(call_sublayer(self.norm_out, h)))
        return ops.reshape(h, (-1,) + self._out_shape)

    def compute_output_shape(self, z_shape, t_shape=None, labels_shape=None,
                             guidance_shape=None):
        """Output shape: the input shape with `out_dim` on the last axis.

        Args:
            z_shape: input shape [B, *S, C].
            t_shape: unused.
            labels_shape: unused.
            guidance_shape: unused.

        Returns:
            Output shape tuple.
        """
        return tuple(z_shape[:-1]) + (self.out_dim,)

    def get_config(self):
        """Returns the constructor arguments.

        Returns:
            A JSON-serialisable dict.
        """
        config = super().get_config()
        config.update(
            {
                "out_dim": self.out_dim,
                "width": self.width,
                "num_blocks": self.num_blocks,
                "emb_dim": self.emb_dim,
                "dropout": self.dropout,
                "num_classes": self.num_classes,
                "guidance": self.guidance,
            }
        )
        return config
