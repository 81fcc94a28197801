"""Writes tests/data/parity.{keras,npz}: a small digits UNet with random weights and its outputs.

Run once (any backend); every backend's test suite then checks it reproduces these numbers.
    KERAS_BACKEND=jax python tools/make_parity_reference.py
"""

import os

import keras
import numpy as np

from keras_pd.diffusion import DiffusionModel
from keras_pd.networks import UNet

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data")


def main():
    keras.utils.set_random_seed(0)
    net = UNet(2, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=2)
    model = DiffusionModel(net, (8, 8, 1), parameterization="both", seed=0)
    rng = np.random.default_rng(0)
    # Zero-initialised output convs would make every output trivial: perturb all weights.
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype)
                       if w.dtype.kind == "f" else w for w in model.get_weights()])
    z = rng.standard_normal((4, 8, 8, 1)).astype("float32")
    logsnr = np.array([-15.0, -2.0, 3.0, 12.0], "float32")
    x_hat = keras.ops.convert_to_numpy(model.denoise(z, logsnr).x)
    noise = rng.standard_normal((4, 8, 8, 1)).astype("float32")
    samples = model.sample(noise, 8)
    os.makedirs(OUT, exist_ok=True)
    model.save(os.path.join(OUT, "parity.keras"))
    np.savez(os.path.join(OUT, "parity.npz"), z=z, logsnr=logsnr, x_hat=x_hat, noise=noise,
             samples=samples, backend=keras.backend.backend())
    print("wrote", OUT, "on", keras.backend.backend())


if __name__ == "__main__":
    main()
