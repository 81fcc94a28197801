"""Network presets: the paper's UNets and small CPU-sized networks.

`PRESETS[name]` is a dict with the network `type` ("unet" or "mlp"), its
constructor arguments and its default `dropout`. The paper's presets
(`cifar10`, `imagenet64`, `lsun128`) follow REFERENCE section 6; dropout is
the base-model value (distillation uses 0: pass `dropout=0.0`).
"""

import copy

from keras_pd.networks.mlp import MLPDenoiser
from keras_pd.networks.unet import UNet, check_unet_shape

PRESETS = {
    # Paper / official code, unconditional CIFAR-10 32x32x3 (60.0M parameters).
    "cifar10": {
        "type": "unet",
        "ch": 256,
        "emb_ch": 1024,
        "ch_mult": (1, 1, 1),
        "num_res_blocks": 3,
        "attn_resolutions": (8, 16),
        "num_heads": 1,
        "head_dim": None,
        "dropout": 0.2,
    },
    # Class-conditional ImageNet 64x64 (295.9M parameters with 1000 classes).
    "imagenet64": {
        "type": "unet",
        "ch": 192,
        "emb_ch": 768,
        "ch_mult": (1, 2, 3, 4),
        "num_res_blocks": 3,
        "attn_resolutions": (8, 16, 32),
        "num_heads": None,
        "head_dim": 64,
        "dropout": 0.1,
    },
    # LSUN 128x128 (bedrooms, churches; 139.6M parameters).
    "lsun128": {
        "type": "unet",
        "ch": 64,
        "emb_ch": 768,
        "ch_mult": (1, 2, 4, 6, 8),
        "num_res_blocks": 3,
        "attn_resolutions": (8, 16, 32),
        "num_heads": None,
        "head_dim": 64,
        "dropout": 0.1,
    },
    # Small UNet for scikit-learn digits, 8x8x1: 32 channels at 8x8 and 4x4
    # (0.35M parameters; ch_mult (1, 2) would give 0.83M).
    "digits": {
        "type": "unet",
        "ch": 32,
        "emb_ch": 128,
        "ch_mult": (1, 1),
        "num_res_blocks": 1,
        "attn_resolutions": (4,),
        "num_heads": 1,
        "head_dim": None,
        "dropout": 0.1,
    },
    # Residual MLP on the 64 flattened pixels of the 8x8 digits (1.19M parameters).
    "digits_mlp": {
        "type": "mlp",
        "width": 256,
        "num_blocks": 4,
        "emb_dim": 128,
        "dropout": 0.1,
    },
    # Students smaller than a `digits_mlp` teacher (docs/results.md, "Smaller students"):
    # 0.60M and 0.30M parameters (1/2 and 1/4 of its), the same depth, narrower.
    "digits_mlp_half": {
        "type": "mlp",
        "width": 180,
        "num_blocks": 4,
        "emb_dim": 128,
        "dropout": 0.1,
    },
    "digits_mlp_quarter": {
        "type": "mlp",
        "width": 126,
        "num_blocks": 4,
        "emb_dim": 96,
        "dropout": 0.1,
    },
    # The `digits` UNet at half the channels (89k parameters, 1/4 of its).
    "digits_half": {
        "type": "unet",
        "ch": 16,
        "emb_ch": 64,
        "ch_mult": (1, 1),
        "num_res_blocks": 1,
        "attn_resolutions": (4,),
        "num_heads": 1,
        "head_dim": None,
        "dropout": 0.1,
    },
    # UNet for MNIST 28x28x1 (28 -> 14 -> 7; 1.92M parameters).
    "mnist": {
        "type": "unet",
        "ch": 32,
        "emb_ch": 128,
        "ch_mult": (1, 2, 2),
        "num_res_blocks": 2,
        "attn_resolutions": (7,),
        "num_heads": 1,
        "head_dim": None,
        "dropout": 0.1,
    },
    # A CPU-sized MNIST UNet (16 channels at 28x28, 32 at 14x14 and 7x7, one residual
    # block per level; 0.35M parameters): about 1/8 of `mnist`'s FLOPs, for an hour's run
    # on 2 CPU cores.
    "mnist_small": {
        "type": "unet",
        "ch": 16,
        "emb_ch": 64,
        "ch_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "attn_resolutions": (7,),
        "num_heads": 1,
        "head_dim": None,
        "dropout": 0.1,
    },
    # Residual MLP for 2-D toy data (0.23M parameters).
    "toy2d": {
        "type": "mlp",
        "width": 128,
        "num_blocks": 3,
        "emb_dim": 64,
        "dropout": 0.0,
    },
}


def get_preset(preset):
    """Returns a copy of a preset's settings.

    Args:
        preset: str, a key of `PRESETS`.

    Returns:
        A dict (a deep copy, safe to modify).

    Raises:
        ValueError: naming the preset and listing the valid ones.
    """
    if preset not in PRESETS:
        raise ValueError(
            f"Unknown network preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}."
        )
    return copy.deepcopy(PRESETS[preset])


def make_network(preset, data_shape, out_channels, num_classes=None, dropout=None, build=True):
    """Creates (and builds) the network of a preset for a data shape.

    Args:
        preset: str, a key of `PRESETS`.
        data_shape: per-example data shape without the batch axis, e.g.
            (32, 32, 3) for images or (2,) for vectors.
        out_channels: int, size of the output's last axis (C, or 2C for the
            "both" parameterisation).
        num_classes: int or None, number of classes for class conditioning.
        dropout: float or None; overrides the preset's dropout when given.
        build: bool, build the layer for `(None,) + data_shape` so that its
            weights exist (and `count_params()` works) right away.

    Returns:
        A `UNet` or `MLPDenoiser` layer, called as `net(z, t, labels=None,
        training=None)`.

    Raises:
        ValueError: for an unknown preset, or a data shape the preset cannot
            handle (the message names the shape).
    """
    cfg = get_preset(preset)
    kind = cfg.pop("type")
    if dropout is not None:
        cfg["dropout"] = float(dropout)
    data_shape = tuple(data_shape)
    if kind == "unet":
        hw = check_unet_shape(data_shape, len(cfg["ch_mult"]))
        net = UNet(
            out_channels=out_channels,
            num_classes=num_classes,
            image_size=hw,
            name=f"unet_{preset}",
            **cfg,
        )
    else:
        if len(data_shape) < 1 or any(d is None or int(d) < 1 for d in data_shape):
            raise ValueError(
                f"Preset {preset!r} needs a fully known data shape; got data shape {data_shape}."
            )
        net = MLPDenoiser(
            out_dim=out_channels,
            num_classes=num_classes,
            name=f"mlp_{preset}",
            **cfg,
        )
    if build:
        net.build((None,) + data_shape, (None,))
    return net
