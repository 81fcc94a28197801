"""Denoising networks: the official UNet, a residual MLP, presets, and models trained elsewhere."""

from keras_pd.networks.foreign import ForeignNetwork
from keras_pd.networks.blocks import AttentionBlock, ResBlock
from keras_pd.networks.layers import timestep_embedding
from keras_pd.networks.mlp import MLPDenoiser
from keras_pd.networks.presets import PRESETS, get_preset, make_network
from keras_pd.networks.unet import UNet

__all__ = [
    "AttentionBlock",
    "ForeignNetwork",
    "MLPDenoiser",
    "PRESETS",
    "ResBlock",
    "UNet",
    "get_preset",
    "make_network",
    "timestep_embedding",
]
