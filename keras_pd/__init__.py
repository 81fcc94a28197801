"""keras-pd: progressive distillation of diffusion models (Salimans & Ho, ICLR 2022) on Keras 3.

Importing the package registers every serializable class, so saved models load by name.
"""

from keras_pd import networks  # noqa: F401  (registers the network layers)
from keras_pd.diffusion import DiffusionModel
from keras_pd.parameterization import PARAMETERIZATIONS, Prediction
from keras_pd.samplers import SAMPLERS, Sampler
from keras_pd.weighting import WEIGHTINGS

__version__ = "0.1.0"

__all__ = ["DiffusionModel", "PARAMETERIZATIONS", "Prediction", "SAMPLERS", "Sampler",
           "WEIGHTINGS", "__version__"]
