"""The UNet of the official progressive-distillation code, as a Keras 3 layer.

Structure (REFERENCE section 6; google-research `diffusion_distillation/unet.py`
with `resblock_resample=True`):

* time embedding: `timestep_embedding(t, ch)` -> Dense(emb_ch) -> swish ->
  Dense(emb_ch); with classes, `Dense(emb_ch)(one_hot(labels))` is added;
* `conv3x3(z, ch)`; down path: per level `num_res_blocks` ResBlocks
  (`ch * ch_mult[level]` channels), each followed by attention when the
  current resolution is in `attn_resolutions`; every output is kept for the
  skip connections; between levels a ResBlock with `resample="down"`;
* middle: ResBlock, AttentionBlock, ResBlock;
* up path: per level (reversed) `num_res_blocks + 1` ResBlocks on
  `concat([h, skip])`, attention at the listed resolutions, a ResBlock with
  `resample="up"` between levels;
* end: GroupNorm, swish, zero-initialised conv3x3 to `out_channels`
  (so the network outputs exactly zero at initialisation).

"Resolution" is the feature-map height.

The UNet takes and returns channels-last images [B, H, W, C]. Inside, it runs in
`data_format` (default: channels-first on the torch backend, whose convolutions
are channels-first natively, channels-last elsewhere), transposing once at entry
and once at exit; the weights are the same in both layouts.
"""

import keras
from keras import ops

from keras_pd.networks.blocks import AttentionBlock, ResBlock
from keras_pd.networks.layers import (
    GuidanceEmbedding,
    class_one_hot,
    KERNEL_INIT,
    LayoutConv2D,
    call_sublayer,
    feature_shape,
    channel_axis,
    group_norm,
    resolve_data_format,
    timestep_embedding,
)


def _as_hw(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    hw = tuple(int(s) for s in image_size)
    if len(hw) != 2:
        raise ValueError(f"UNet image_size must be an int or (H, W); got {image_size!r}.")
    return hw


def check_unet_shape(data_shape, num_levels):
    """Checks that a [H, W, C] data shape fits a UNet with `num_levels` levels.

    Args:
        data_shape: per-example shape, (H, W, C).
        num_levels: int, `len(ch_mult)`.

    Returns:
        (H, W) as ints.

    Raises:
        ValueError: naming the shape if it is not rank 3 or if H or W is not
            divisible by `2 ** (num_levels - 1)`.
    """
    data_shape = tuple(data_shape)
    if len(data_shape) != 3 or any(d is None for d in data_shape[:2]):
        raise ValueError(
            f"UNet needs images of shape (H, W, C) with known H and W; got data shape {data_shape}."
        )
    factor = 2 ** (num_levels - 1)
    h, w = int(data_shape[0]), int(data_shape[1])
    if h % factor or w % factor:
        raise ValueError(
            f"UNet with {num_levels} resolution levels needs H and W divisible by "
            f"{factor}; got data shape {data_shape}."
        )
    return h, w


@keras.saving.register_keras_serializable(package="keras_pd")
class UNet(keras.layers.Layer):
    """UNet denoiser `f(z, t, labels) -> [B, H, W, out_channels]`.

    Args:
        out_channels: int, channels of the output (C for x/eps/v, 2C for the
            "both" parameterisation).
        ch: int, base channel count.
        emb_ch: int or None, embedding size (default `4 * ch`).
        ch_mult: tuple of int, channel multiplier per resolution level.
        num_res_blocks: int, residual blocks per level on the down path
            (the up path has one more).
        attn_resolutions: tuple of int, feature-map heights that get
            attention after their residual blocks.
        num_heads: int, attention heads (used when `head_dim` is None).
        head_dim: int or None, channels per attention head (takes precedence
            over `num_heads`).
        dropout: float, dropout rate inside the residual blocks.
        num_classes: int or None, number of classes for class conditioning.
        image_size: optional int or (H, W); if given, building on another
            spatial shape raises ValueError.
        guidance: bool, adds a guidance-weight embedding (`GuidanceEmbedding`);
            `call` then needs `guidance`.
        data_format: None (default), "channels_last" or "channels_first": the
            layout the network computes in. None resolves when the layer is
            built: "channels_first" on the torch backend, "channels_last"
            elsewhere (`resolve_data_format`); it stays None in the config, so
            a saved network runs in the fast layout of the backend that loads
            it. Inputs and outputs are channels-last either way, and the
            weights do not depend on it.
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        out_channels,
        ch=128,
        emb_ch=None,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        num_heads=1,
        head_dim=None,
        dropout=0.0,
        num_classes=None,
        image_size=None,
        guidance=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.out_channels = int(out_channels)
        self.ch = int(ch)
        self.emb_ch = 4 * self.ch if emb_ch is None else int(emb_ch)
        self.ch_mult = tuple(int(m) for m in ch_mult)
        self.num_res_blocks = int(num_res_blocks)
        self.attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.num_heads = None if num_heads is None else int(num_heads)
        self.head_dim = None if head_dim is None else int(head_dim)
        self.dropout = float(dropout)
        self.num_classes = None if not num_classes else int(num_classes)
        self.image_size = _as_hw(image_size)
        self.guidance = bool(guidance)
        resolve_data_format(data_format)  # validates
        self.data_format = data_format
        if not self.ch_mult:
            raise ValueError("UNet ch_mult must have at least one level.")
        if self.image_size is not None:
            check_unet_shape(self.image_size + (1,), len(self.ch_mult))
        self._hw = None

    @property
    def resolved_data_format(self):
        """The layout the network computes in: `data_format`, or the backend's when None."""
        return resolve_data_format(self.data_format)

    def _attn(self, name):
        fmt = self._fmt
        if self.head_dim is not None:
            return AttentionBlock(head_dim=self.head_dim, data_format=fmt, name=name)
        return AttentionBlock(num_heads=self.num_heads or 1, data_format=fmt, name=name)

    def build(self, z_shape, t_shape=None, labels_shape=None, guidance_shape=None):
        """Creates all sub-layers for a static input shape.

        Args:
            z_shape: [B, H, W, C] shape of the noisy input (channels-last in
                every `data_format`).
            t_shape: [B] shape of the time input (unused).
            labels_shape: [B] shape of the labels (unused).
            guidance_shape: [B] shape of the guidance weights (unused).
        """
        z_shape = tuple(z_shape)
        if len(z_shape) != 4:
            raise ValueError(f"UNet expects input of shape [B, H, W, C]; got shape {z_shape}.")
        hw = check_unet_shape(z_shape[1:], len(self.ch_mult))
        if self.image_size is not None and hw != self.image_size:
            raise ValueError(
                f"UNet was configured for image_size {self.image_size} but is built "
                f"on input shape {z_shape}."
            )
        self._hw = hw
        fmt = self._fmt = self.resolved_data_format
        b = z_shape[0]
        emb_ch, dropout = self.emb_ch, self.dropout
        emb_shape = (b, emb_ch)

        self.temb_dense0 = keras.layers.Dense(emb_ch, kernel_initializer=KERNEL_INIT, name="dense0")
        self.temb_dense0.build((b, self.ch))
        self.temb_dense1 = keras.layers.Dense(emb_ch, kernel_initializer=KERNEL_INIT, name="dense1")
        self.temb_dense1.build(emb_shape)
        if self.num_classes:
            self.class_emb = keras.layers.Dense(
                emb_ch, kernel_initializer=KERNEL_INIT, name="class_emb"
            )
            self.class_emb.build((b, self.num_classes))
        else:
            self.class_emb = None

        def shape_of(res_hw, c):
            """Shape of a feature map in the internal layout."""
            return feature_shape(b, res_hw[0], res_hw[1], c, fmt)

        self.conv_in = LayoutConv2D(
            self.ch, 3, padding="same", data_format=fmt, kernel_initializer=KERNEL_INIT,
            name="conv_in",
        )
        self.conv_in.build(shape_of(hw, z_shape[-1]))

        # Down path. `skips` tracks the channel count of every saved activation.
        cur_hw, cur_c = hw, self.ch
        skips = [cur_c]
        down_layers, down_plan = [], []
        num_levels = len(self.ch_mult)
        for level, mult in enumerate(self.ch_mult):
            for i in range(self.num_res_blocks):
                block = ResBlock(self.ch * mult, dropout=dropout, data_format=fmt,
                                 name=f"down_{level}_block_{i}")
                block.build(shape_of(cur_hw, cur_c), emb_shape)
                cur_c = self.ch * mult
                down_layers.append(block)
                down_plan.append("res")
                if cur_hw[0] in self.attn_resolutions:
                    attn = self._attn(f"down_{level}_attn_{i}")
                    attn.build(shape_of(cur_hw, cur_c))
                    down_layers.append(attn)
                    down_plan.append("attn")
                skips.append(cur_c)
            if level != num_levels - 1:
                block = ResBlock(resample="down", dropout=dropout, data_format=fmt,
                                 name=f"down_{level}_downsample")
                block.build(shape_of(cur_hw, cur_c), emb_shape)
                cur_hw = (cur_hw[0] // 2, cur_hw[1] // 2)
                down_layers.append(block)
                down_plan.append("res")
                skips.append(cur_c)
        self.down_layers = down_layers
        self._down_plan = down_plan

        # Middle.
        self.mid_block_1 = ResBlock(dropout=dropout, data_format=fmt, name="mid_block_1")
        self.mid_block_1.build(shape_of(cur_hw, cur_c), emb_shape)
        self.mid_attn_1 = self._attn("mid_attn_1")
        self.mid_attn_1.build(shape_of(cur_hw, cur_c))
        self.mid_block_2 = ResBlock(dropout=dropout, data_format=fmt, name="mid_block_2")
        self.mid_block_2.build(shape_of(cur_hw, cur_c), emb_shape)

        # Up path.
        up_layers, up_plan = [], []
        for level in reversed(range(num_levels)):
            out_c = self.ch * self.ch_mult[level]
            for i in range(self.num_res_blocks + 1):
                block = ResBlock(out_c, dropout=dropout, data_format=fmt,
                                 name=f"up_{level}_block_{i}")
                block.build(shape_of(cur_hw, cur_c + skips.pop()), emb_shape)
                cur_c = out_c
                up_layers.append(block)
                up_plan.append("res_cat")
                if cur_hw[0] in self.attn_resolutions:
                    attn = self._attn(f"up_{level}_attn_{i}")
                    attn.build(shape_of(cur_hw, cur_c))
                    up_layers.append(attn)
                    up_plan.append("attn")
            if level != 0:
                block = ResBlock(resample="up", dropout=dropout, data_format=fmt,
                                 name=f"up_{level}_upsample")
                block.build(shape_of(cur_hw, cur_c), emb_shape)
                cur_hw = (cur_hw[0] * 2, cur_hw[1] * 2)
                up_layers.append(block)
                up_plan.append("res")
        assert not skips, skips
        self.up_layers = up_layers
        self._up_plan = up_plan

        # End.
        self.norm_out = group_norm(cur_c, name="norm_out", data_format=fmt)
        self.norm_out.build(shape_of(cur_hw, cur_c))
        self.conv_out = LayoutConv2D(
            self.out_channels,
            3,
            padding="same",
            data_format=fmt,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name="conv_out",
        )
        self.conv_out.build(shape_of(cur_hw, cur_c))
        # Built last: its weights come after the conditional network's (see guidance.py).
        self.guidance_emb = None
        if self.guidance:
            self.guidance_emb = GuidanceEmbedding(emb_ch, self.ch, name="guidance_emb")
            self.guidance_emb.build((b,))

    def _check_input(self, z):
        shape = tuple(ops.shape(z))
        if len(shape) != 4:
            raise ValueError(f"UNet expects input of shape [B, H, W, C]; got shape {shape}.")
        hw = shape[1:3]
        if all(isinstance(d, int) for d in hw) and tuple(hw) != self._hw:
            raise ValueError(
                f"UNet was built for spatial shape {self._hw} (H, W) but was called "
                f"on input of shape {shape}."
            )

    def call(self, z, t, labels=None, guidance=None, training=None):
        """Runs the network.

        Args:
            z: float tensor [B, H, W, C], the noisy input (channels-last in
                every `data_format`).
            t: float tensor [B], network time in [0, 1].
            labels: int tensor [B] of class ids; required when `num_classes`
                is set, ignored otherwise (label `num_classes` is the null label).
            guidance: float tensor [B], the guidance weight w; required when
                `guidance` is set, ignored otherwise.
            training: bool, enables dropout.

        Returns:
            Tensor [B, H, W, out_channels] (channels-last).
        """
        self._check_input(z)
        channels_first = self._fmt == "channels_first"
        axis = channel_axis(self._fmt)
        emb = timestep_embedding(t, self.ch)
        emb = call_sublayer(self.temb_dense1, ops.silu(call_sublayer(self.temb_dense0, emb)))
        if self.class_emb is not None:
            if labels is None:
                raise ValueError(
                    f"UNet was built with num_classes={self.num_classes}: pass labels."
                )
            emb = emb + call_sublayer(self.class_emb, class_one_hot(labels, self.num_classes))
        if self.guidance_emb is not None:
            if guidance is None:
                raise ValueError("UNet was built with guidance=True: pass guidance.")
            emb = emb + call_sublayer(self.guidance_emb, guidance)

        if channels_first:
            z = ops.transpose(z, (0, 3, 1, 2))
        hs = [call_sublayer(self.conv_in, z)]
        for kind, layer in zip(self._down_plan, self.down_layers):
            if kind == "res":
                hs.append(call_sublayer(layer, hs[-1], emb, training=training))
            else:
                hs[-1] = call_sublayer(layer, hs[-1])

        h = hs[-1]
        h = call_sublayer(self.mid_block_1, h, emb, training=training)
        h = call_sublayer(self.mid_attn_1, h)
        h = call_sublayer(self.mid_block_2, h, emb, training=training)

        for kind, layer in zip(self._up_plan, self.up_layers):
            if kind == "res_cat":
                h = call_sublayer(layer, ops.concatenate([h, hs.pop()], axis=axis), emb,
                                  training=training)
            elif kind == "attn":
                h = call_sublayer(layer, h)
            else:
                h = call_sublayer(layer, h, emb, training=training)

        h = call_sublayer(self.conv_out, ops.silu(call_sublayer(self.norm_out, h)))
        if channels_first:
            h = ops.transpose(h, (0, 2, 3, 1))
        return h

    def compute_output_shape(self, z_shape, t_shape=None, labels_shape=None,
                             guidance_shape=None):
        """Output shape: the input shape with `out_channels` channels.

        Args:
            z_shape: input shape [B, H, W, C].
            t_shape: unused.
            labels_shape: unused.

        Returns:
            Output shape tuple.
        """
        return tuple(z_shape[:-1]) + (self.out_channels,)

    def get_config(self):
        """Returns the constructor arguments.

        Returns:
            A JSON-serialisable dict.
        """
        config = super().get_config()
        config.update(
            {
                "out_channels": self.out_channels,
                "ch": self.ch,
                "emb_ch": self.emb_ch,
                "ch_mult": list(self.ch_mult),
                "num_res_blocks": self.num_res_blocks,
                "attn_resolutions": list(self.attn_resolutions),
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "dropout": self.dropout,
                "num_classes": self.num_classes,
                "guidance": self.guidance,
                "image_size": None if self.image_size is None else list(self.image_size),
                # The user's value: None (the default) resolves per backend on load.
                "data_format": self.data_format,
            }
        )
        return config
