"""A Keras model trained elsewhere, as a keras-pd network (`ForeignNetwork`).

keras-pd calls a network as `network(z, level, labels)` with z in the variance-preserving
coordinates of the schedule's lambda (`schedules` module docstring). A model trained elsewhere
was trained on its schedule's own z_t = a_t x + s_t eps and fed the noise level its own way.
The adapter converts both and returns the model's raw output, which `DiffusionModel` reads with
the model's own parameterization (eps, x and the flow velocity eps - x are the same in both
coordinates, so the output needs no conversion):

    (a_t, s_t) = schedule.coefficients_at(lambda)
    z_own = c_t z,  c_t = sqrt(a_t^2 + s_t^2)       (c_t = 1 for a variance-preserving schedule)

| noise_input | the level the model is fed |
|---|---|
| network_time | keras-pd's s = arctan(exp(-lambda / 2)) / (pi / 2) (`schedules.network_time`) |
| logsnr | lambda |
| noise_variance | s_t^2 (the keras.io DDIM example's `noise_rates ** 2`) |
| noise_rate | s_t |
| ddpm_step | k = t T - 1, the 0-based DDPM step (fractional between grid points; rounded for a model whose level input is an integer) |
| flow_time | the schedule's own time t (rectified flow's t in z_t = (1 - t) x + t eps) |

A flow model whose time runs the other way (t = 1 at the data, predicting x - eps) takes
`reverse_time=True`: it is fed 1 - t and its output negated into eps - x.
"""

import keras
import numpy as np
from keras import ops

from keras_pd.schedules import expand_to, get_schedule, network_time

NOISE_INPUTS = ("network_time", "logsnr", "noise_variance", "noise_rate", "ddpm_step",
                "flow_time")
CONDITIONING = ("none", "labels")
CALL_STYLES = ("list", "positional")


def _check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")
    return value


def _functional_inputs(model):
    """The model's symbolic inputs (a functional or sequential model), else None."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(inputs) if inputs else None


@keras.saving.register_keras_serializable(package="keras_pd")
class ForeignNetwork(keras.layers.Layer):
    """Makes a Keras model trained elsewhere a keras-pd network (module docstring).

    Args:
        model: the Keras model (its weights are this layer's weights).
        schedule: the schedule the model was trained on (`schedules.get_schedule` spec); the
            `DiffusionModel` around this layer must use the same one.
        noise_input: how the model takes the noise level (NOISE_INPUTS).
        call_style: "list" (`model([z, level(, labels)])`, the keras.io functional models) or
            "positional" (`model(z, level(, labels))`).
        conditioning: "none" or "labels" (int class labels, the model's third input).
        noise_rank: rank of the level input: 1 for [B], 2 for [B, 1], 4 for [B, 1, 1, 1];
            None: read from a functional model's second input (1 otherwise).
        reverse_time: the model's flow time runs from data (t = 1) to noise (t = 0): fed
            1 - t, its velocity x - eps negated (`noise_input="flow_time"` only).
        **kwargs: base Layer arguments.
    """

    takes_logsnr = True

    def __init__(self, model, schedule, noise_input, call_style="list", conditioning="none",
                 noise_rank=None, reverse_time=False, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.schedule = get_schedule(schedule)
        self.noise_input = _check_choice(noise_input, NOISE_INPUTS, "noise_input")
        self.call_style = _check_choice(call_style, CALL_STYLES, "call_style")
        self.conditioning = _check_choice(conditioning, CONDITIONING, "conditioning")
        if noise_input == "ddpm_step" and self.schedule.name != "ddpm":
            raise ValueError(f"noise_input 'ddpm_step' needs the ddpm schedule, not "
                             f"{self.schedule.name!r}")
        self.reverse_time = bool(reverse_time)
        if self.reverse_time and noise_input != "flow_time":
            raise ValueError(f"reverse_time needs noise_input 'flow_time', not {noise_input!r}")
        inputs = _functional_inputs(model)
        want = 3 if conditioning == "labels" else 2
        if inputs is not None and len(inputs) != want:
            raise ValueError(
                f"the model takes {len(inputs)} inputs; conditioning={conditioning!r} needs "
                f"{want} (noisy data, noise level{', labels' if want == 3 else ''})")
        if noise_rank is None:
            noise_rank = len(inputs[1].shape) if inputs is not None else 1
        self.noise_rank = int(noise_rank)
        if self.noise_rank < 1:
            raise ValueError(f"noise_rank must be at least 1, got {noise_rank}")
        self.integer_level = bool(inputs is not None and "int" in str(inputs[1].dtype))

    def build(self, *shapes):
        self.built = True  # the wrapped model is built already; its variables are ours

    def noise_level(self, logsnr):
        """The level the model is fed for lambda [B], shaped [B, 1, ...] to `noise_rank`."""
        schedule = self.schedule
        if self.noise_input == "logsnr":
            level = logsnr
        elif self.noise_input == "network_time":
            level = network_time(logsnr, schedule.logsnr_min, schedule.logsnr_max)
        elif self.noise_input in ("noise_variance", "noise_rate"):
            level = schedule.coefficients_at(logsnr)[1]
            level = level * level if self.noise_input == "noise_variance" else level
        else:
            t = schedule.time(logsnr)
            if self.noise_input == "ddpm_step":
                level = t * float(schedule.num_timesteps) - 1.0
                if self.integer_level:
                    level = ops.round(level)
            else:
                level = 1.0 - t if self.reverse_time else t
        level = ops.reshape(level, (-1,) + (1,) * (self.noise_rank - 1))
        return ops.cast(level, "int32") if self.integer_level else level

    def call(self, z, logsnr, labels=None, training=None):
        """The model's output for the variance-preserving z at log-SNR lambda [B]."""
        a, s = self.schedule.coefficients_at(logsnr)
        z_own = z * expand_to(ops.sqrt(a * a + s * s), z)
        args = [z_own, self.noise_level(logsnr)]
        if self.conditioning == "labels":
            if labels is None:
                raise ValueError("this model takes class labels: the DiffusionModel needs "
                                 "num_classes")
            args.append(labels)
        if self.call_style == "list":
            out = self.model(args, training=training)
        else:
            out = self.model(*args, training=training)
        return -out if self.reverse_time else out

    def compute_output_shape(self, z_shape, *args):
        return z_shape

    def get_config(self):
        config = super().get_config()
        config.update(model=keras.saving.serialize_keras_object(self.model),
                      schedule=self.schedule.to_config(), noise_input=self.noise_input,
                      call_style=self.call_style, conditioning=self.conditioning,
                      noise_rank=self.noise_rank, reverse_time=self.reverse_time)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def data_shape_of(model):
    """The data shape a functional model takes (its first input, batch dimension dropped), or
    None when it is not known before a call."""
    inputs = _functional_inputs(model)
    if inputs is None:
        return None
    shape = tuple(inputs[0].shape[1:])
    return shape if all(isinstance(d, (int, np.integer)) for d in shape) else None
