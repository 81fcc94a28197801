"""The diffusion model: a denoising network plus the paper's parameterization, weighting and
schedule, trained with plain `compile()` + `fit()` on every backend (REFERENCE 1-3, 6).

Its training step is the shared objective (`objectives.Objective`): draw t ~ U[0, 1] and
eps ~ N(0, I) from the model's own SeedGenerator, form z_t = alpha_t x + sigma_t eps, denoise, and
weight the error against the true (x, eps, v).
"""

import keras
import numpy as np
from keras import ops

from keras_pd import distribute
from keras_pd.guidance import drop_labels, guided_prediction, null_labels
from keras_pd.objectives import Objective
from keras_pd.parameterization import Prediction, check_parameterization, predict, v_from_x_eps
from keras_pd.replicas import replica_rows, replicas_in_step
from keras_pd.schedules import (
    LOGSNR_MAX,
    LOGSNR_MIN,
    CosineSchedule,
    alpha_sigma,
    check_steps,
    expand_to,
    get_schedule,
    network_time,
)
from keras_pd.weighting import check_weighting


GUIDANCE_ERROR = ("guidance needs a class-conditional model trained with label_dropout > 0, or "
                  "a guided student (a plain distilled student learned no null label: distill "
                  "with --guided for one that takes guidance)")


@keras.saving.register_keras_serializable(package="keras_pd")
class DiffusionModel(Objective):
    """A denoiser x_hat(z_t, lambda_t) with its training objective.

    `fit(x)` or `fit((x, labels))` trains it (`objectives.Objective.compute_loss`, with the true
    x, eps and v as target). Use `denoise` for one prediction and `keras_pd.samplers.Sampler`
    to sample.

    Args:
        network: a Keras layer called as `network(z, s, labels, training=...)` with s the
            network time in [0, 1] (see `schedules.network_time`); outputs C channels
            (2C for the "both" parameterization).
        data_shape: shape of one example, e.g. (8, 8, 1) or (2,).
        parameterization: "eps", "x", "v", "both" or "flow" (the velocity eps - x).
        weighting: "snr", "truncated_snr", "snr_plus_one" or "constant".
        num_classes: number of classes for a class-conditional model, else None.
        flip: random horizontal flips of training images (a Keras RandomFlip layer).
        logsnr_min: lambda at t = 1 of the truncated cosine schedule (when `schedule` is None).
        logsnr_max: lambda at t = 0.
        schedule: the noise schedule (`schedules.get_schedule`: a Schedule, "cosine", "ddpm",
            "flow" or a config dict); None: the truncated cosine of logsnr_min/logsnr_max.
        seed: seed of the model's SeedGenerator (t and eps draws).
        label_dropout: probability of training on the null label (index `num_classes`) instead
            of the example's: > 0 makes the model usable with classifier-free guidance.
        data_mean, data_variance: per-channel mean and variance of pixels in [0, 1] when the
            model's data are standardized, m = (p - mean) / sqrt(variance) (a network trained
            that way elsewhere, like the keras.io DDIM example's `Normalization` layer); None:
            the data are images in [-1, 1]. Training batches and samples stay images in
            [-1, 1] (`to_model_space`, `to_images`); x_hat is clipped to the images' range.

    The network may instead take lambda itself (`takes_logsnr`, e.g. `networks.ForeignNetwork`,
    a model trained elsewhere): it then gets lambda clipped to the schedule's range.

    A network built with `guidance=True` takes the guidance weight w as an input (a guided
    student, `guided_distillation.guided_student`); `denoise(..., guidance=w)` then calls it once.
    Otherwise `guidance=w` on a class-conditional model runs classifier-free guidance: the
    network on the labels and on the null label, combined by `guidance.guided_prediction`.
    """

    def __init__(self, network, data_shape, parameterization="x", weighting="truncated_snr",
                 num_classes=None, flip=False, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX,
                 seed=None, label_dropout=0.0, schedule=None, data_mean=None,
                 data_variance=None, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.data_shape = tuple(int(d) for d in data_shape)
        self.parameterization = check_parameterization(parameterization)
        self.weighting = check_weighting(weighting)
        self.num_classes = int(num_classes) if num_classes else None
        self.flip = bool(flip)
        self.schedule = (CosineSchedule(logsnr_min, logsnr_max) if schedule is None
                         else get_schedule(schedule))
        self.logsnr_min = float(self.schedule.logsnr_min)
        self.logsnr_max = float(self.schedule.logsnr_max)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        if not 0.0 <= float(label_dropout) < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
        if label_dropout and not self.num_classes:
            raise ValueError("label_dropout needs a class-conditional model (num_classes)")
        self.label_dropout = float(label_dropout)
        self.data_mean, self.data_variance = check_data_scaling(data_mean, data_variance,
                                                                self.data_shape[-1])
        # x = scale m + offset between model space m and images x in [-1, 1] (numpy, per channel).
        self._scaling = None if self.data_mean is None else (
            2.0 * np.asarray(self.data_mean, "float32") - 1.0,
            2.0 * np.sqrt(np.asarray(self.data_variance, "float32")))
        self.takes_guidance = bool(getattr(network, "guidance", False))
        self.takes_logsnr = bool(getattr(network, "takes_logsnr", False))
        if self.takes_guidance and not self.num_classes:
            raise ValueError("a network taking guidance needs a class-conditional model")
        # float32 flips under mixed policies too: images are data, not activations.
        self.augment = (keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32")
                        if flip else None)
        # The network gets z and its time in float32 (a bfloat16 time would wreck the
        # sinusoidal embedding); its own layers cast to their compute dtype.
        self.network.autocast = False
        self._build_network()

    def _build_network(self):
        z = ops.zeros((1,) + self.data_shape)
        labels = ops.zeros((1,), "int32") if self.num_classes else None
        if self.takes_guidance:
            self.network(z, ops.zeros((1,)), labels, guidance=ops.zeros((1,)), training=False)
        else:
            self.network(z, ops.zeros((1,)), labels, training=False)
        if self.augment is not None:
            self.augment.build((None,) + self.data_shape)
        self.built = True

    def logsnr(self, t):
        """lambda(t) of this model's schedule."""
        return self.schedule.logsnr(t)

    def network_time(self, logsnr):
        """The network's time input for lambda, clipped to this model's schedule range: s
        (`schedules.network_time`), or lambda itself for a network that `takes_logsnr`."""
        if self.takes_logsnr:
            return ops.clip(ops.convert_to_tensor(logsnr, "float32"), self.logsnr_min,
                            self.logsnr_max)
        return network_time(logsnr, self.logsnr_min, self.logsnr_max)

    def to_model_space(self, images):
        """Images in [-1, 1] -> the model's data space (unchanged unless standardized)."""
        if self._scaling is None:
            return images
        offset, scale = self._scaling
        return (ops.convert_to_tensor(images, "float32") - offset) / scale

    def to_images(self, x):
        """The model's data space -> images in [-1, 1] (unchanged unless standardized)."""
        if self._scaling is None:
            return x
        offset, scale = self._scaling
        return ops.convert_to_tensor(x, "float32") * scale + offset

    def clip_range(self, clip=True):
        """What `parameterization.clip_x` takes for a clipped x_hat: True ([-1, 1]), or the
        per-channel range of images in [-1, 1] in a standardized model's space."""
        if not clip or self._scaling is None:
            return bool(clip)
        offset, scale = self._scaling
        return (-1.0 - offset) / scale, (1.0 - offset) / scale

    def check_input(self, z, name="z"):
        """Raises ValueError naming `name` when z is not [B, *data_shape]."""
        if tuple(z.shape[1:]) != self.data_shape:
            raise ValueError(
                f"{name} has shape {tuple(z.shape)}; this model was built for [batch, "
                f"{', '.join(map(str, self.data_shape))}]"
            )

    @property
    def guidable(self):
        """Whether `denoise` accepts a guidance weight (null-label training or a w input)."""
        return self.takes_guidance or (bool(self.num_classes) and self.label_dropout > 0)

    def denoise(self, z, logsnr, labels=None, training=False, clip=False, guidance=None):
        """Predicts x, eps and v from z_t at log-SNR lambda (REFERENCE 2).

        Args:
            z: z_t, [B, *data_shape].
            logsnr: lambda_t, [B].
            labels: int labels [B] for a class-conditional model, else None (the label
                `num_classes` is the null label).
            training: dropout on or off.
            clip: clip x_hat to the data range ([-1, 1], `clip_range`) and recompute eps_hat
                from it (sampling only).
            guidance: guidance weights w [B], or None: the network's input for a guided
                student (None there means w = 0), classifier-free guidance otherwise.

        Returns:
            A `Prediction(x, eps, v)`.
        """
        if guidance is not None and not self.takes_guidance:
            return self._classifier_free(z, logsnr, labels, guidance, training, clip)
        self.check_input(z)
        alpha, sigma = alpha_sigma(logsnr)
        if self.num_classes:
            if labels is None:
                raise ValueError("labels are required: this model is class-conditional")
            labels = ops.cast(labels, "int32")
        else:
            labels = None
        if self.takes_guidance:
            w = ops.zeros_like(logsnr) if guidance is None else ops.cast(guidance, "float32")
            w = ops.broadcast_to(ops.reshape(w, (-1,)), ops.shape(logsnr))
            output = self.network(z, self.network_time(logsnr), labels, guidance=w,
                                  training=training)
        else:
            output = self.network(z, self.network_time(logsnr), labels, training=training)
        output = ops.cast(output, "float32")  # mixed policies: the diffusion math in float32
        return predict(self.parameterization, output, z, expand_to(alpha, z), expand_to(sigma, z),
                       clip=self.clip_range(clip))

    def _classifier_free(self, z, logsnr, labels, guidance, training, clip):
        """Classifier-free guidance: one network call on [labels; null] stacked on the batch."""
        if not self.guidable:
            raise ValueError(GUIDANCE_ERROR)
        if labels is None:
            raise ValueError("labels are required: this model is class-conditional")
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        both = self.denoise(ops.concatenate([z, z], axis=0),
                            ops.concatenate([logsnr, logsnr], axis=0),
                            ops.concatenate([labels, null_labels(labels, self.num_classes)], 0),
                            training=training)
        batch = ops.shape(z)[0]
        cond, uncond = (type(both)(*(v[:batch] for v in both)),
                        type(both)(*(v[batch:] for v in both)))
        w = ops.broadcast_to(ops.reshape(ops.cast(guidance, "float32"), (-1,)), (batch,))
        alpha, sigma = alpha_sigma(logsnr)
        return guided_prediction(cond, uncond, w, z, expand_to(alpha, z), expand_to(sigma, z),
                                 clip=self.clip_range(clip))

    def denoiser(self):
        return self

    def forward_process(self, x, t, eps):
        """The forward process z_t = alpha_t x + sigma_t eps (REFERENCE 1).

        Returns:
            (z_t, lambda_t).
        """
        logsnr = self.logsnr(t)
        alpha, sigma = alpha_sigma(logsnr)
        return expand_to(alpha, x) * x + expand_to(sigma, x) * eps, logsnr

    def draw_conditioning(self, y, rows, training):
        """The batch's labels, each replaced by the null label with probability `label_dropout`
        in training (classifier-free guidance's unconditional model)."""
        labels = y if self.num_classes else None
        if self.label_dropout > 0 and training:
            u = replica_rows(keras.random.uniform((rows,), seed=self.seed_generator))
            labels = drop_labels(labels, self.num_classes, self.label_dropout, u)
        return labels, None

    def target(self, x, eps, z_t, t, logsnr, labels, guidance):
        """The true (x, eps, v) of the forward process (REFERENCE 2, 3)."""
        alpha, sigma = (expand_to(v, x) for v in alpha_sigma(logsnr))
        return Prediction(x, eps, v_from_x_eps(x, eps, alpha, sigma))

    def training_batch(self, x, training):
        """A training batch (images in [-1, 1]) as float32 in the model's data space, checked,
        flipped when the model flips; with the row count of the global batch. Every training
        draw (t, eps, flips, labels dropped, and the distillation draws) is made for the global
        batch: under tf.distribute each replica keeps its rows, so the step equals the
        one-device step.

        Returns:
            (x, rows).
        """
        x = ops.convert_to_tensor(x, "float32")
        self.check_input(x, "the training batch")
        if self.augment is not None and training:
            x = self.flip_batch(x)
        return self.to_model_space(x), ops.shape(x)[0] * replicas_in_step()

    def flip_batch(self, x):
        """Random horizontal flips of a training batch (global-batch draws, like t and eps)."""
        replicas = replicas_in_step()
        if replicas == 1:
            return self.augment(x, training=True)
        rows = ops.shape(x)[0] * replicas
        draw = self.augment.get_random_transformation(ops.zeros((rows, 1, 1, 1)), training=True)
        flips = replica_rows(draw["flips"])
        return self.augment.transform_images(x, {"flips": flips, "input_shape": ops.shape(x)})

    def sample(self, noise, num_steps, sampler="ddim", gamma=0.0, labels=None, clip=True,
               seed=None, guidance=None, jit_compile=None):
        """Samples with N steps from starting noise; compiled on JAX and TensorFlow.

        Args:
            noise: z_1, [B, *data_shape] standard normal.
            num_steps: N >= 1.
            sampler: "ddim" or "ancestral".
            gamma: ancestral variance interpolation.
            labels: int [B] for class-conditional models.
            guidance: the guidance weight w, a float or [B] floats (class-conditional models
                trained with label dropout, or guided students); None: unguided.
            clip: clip x_hat at each step.
            seed: the ancestral sampler's seed.
            jit_compile: how the sampler compiles (`samplers.sampler_jit_compile`): None for
                the backend's default for this call's samples x steps, True for torch.compile
                on PyTorch.

        Returns:
            numpy samples, the shape of `noise`.
        """
        from keras_pd.samplers import Sampler, check_gamma, sampler_jit_compile

        num_steps = check_steps(num_steps)
        gamma = check_gamma(gamma)  # the shared sampler takes g as an input, unchecked
        noise = ops.convert_to_tensor(noise, "float32")
        self.check_input(noise, "noise")
        batch = ops.shape(noise)[0]
        jit_compile = sampler_jit_compile(jit_compile, sampler, batch * num_steps)
        # One compiled sampler per (sampler, clip, guided, jit) serves every N and g; the
        # ancestral noise stream is kept per (N, g, seed), as if each had a sampler of its own.
        key = (sampler, bool(clip), guidance is not None, jit_compile)
        cache = self.__dict__.setdefault("_samplers", {})
        if key not in cache:
            cache[key] = Sampler(self, None, sampler, clip=clip, jit_compile=jit_compile)
        model = cache[key]
        inputs = {"noise": noise, "steps": ops.full((batch,), num_steps, "int32"),
                  "gamma": ops.full((batch,), gamma, "float32")}
        if self.num_classes:
            if labels is None:
                raise ValueError("labels are required: this model is class-conditional")
            inputs["labels"] = ops.convert_to_tensor(labels, "int32")
        if guidance is not None:
            if not self.guidable:
                raise ValueError(GUIDANCE_ERROR)
            inputs["guidance"] = ops.broadcast_to(
                ops.reshape(ops.convert_to_tensor(guidance, "float32"), (-1,)),
                (batch,))
        if model.seed_generator is None:
            return ops.convert_to_numpy(model.predict_on_batch(inputs))
        states = self.__dict__.setdefault("_seed_states", {})
        stream = (num_steps, gamma, seed)
        if stream not in states:
            states[stream] = ops.convert_to_numpy(keras.random.SeedGenerator(seed).state.value)
        model.seed_generator.state.assign(states[stream])
        out = ops.convert_to_numpy(model.predict_on_batch(inputs))
        states[stream] = ops.convert_to_numpy(model.seed_generator.state.value)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            data_shape=list(self.data_shape),
            parameterization=self.parameterization,
            weighting=self.weighting,
            num_classes=self.num_classes,
            flip=self.flip,
            logsnr_min=self.logsnr_min,
            logsnr_max=self.logsnr_max,
            schedule=self.schedule.to_config(),
            seed=self.seed,
            label_dropout=self.label_dropout,
        )
        if self.data_mean is not None:
            config.update(data_mean=self.data_mean, data_variance=self.data_variance)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def check_data_scaling(mean, variance, channels):
    """The per-channel (mean, variance) of a standardized model as lists of floats, or
    (None, None); ValueError naming the argument for a wrong length or a variance <= 0."""
    if mean is None and variance is None:
        return None, None
    if mean is None or variance is None:
        raise ValueError("data_mean and data_variance go together: give both or neither")
    out = []
    for name, values in (("data_mean", mean), ("data_variance", variance)):
        values = [float(v) for v in np.ravel(np.asarray(values, "float64"))]
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise ValueError(f"{name} has {len(values)} values; the data have {channels} "
                             "channels")
        out.append(values)
    if not all(v > 0 and np.isfinite(v) for v in out[1]):
        raise ValueError(f"data_variance must be positive, got {out[1]}")
    return out[0], out[1]


def rebuild(model, dtype_policy=None, network_updates=None, network=None, **updates):
    """A new DiffusionModel from `model`'s config, weights not copied.

    Args:
        model: a DiffusionModel.
        dtype_policy: build under this Keras dtype policy (variables stay float32 under every
            policy, so the weights carry over); None keeps the model's.
        network_updates: settings of the network's config to change, where it has them
            (e.g. {"dropout": 0.0}).
        network: another network layer instead of the model's (its config is used; a
            student of another architecture).
        **updates: the DiffusionModel's own arguments to change (e.g. label_dropout=0.0).

    Returns:
        The new DiffusionModel.
    """
    config = model.get_config()
    if network is not None:
        config["network"] = keras.saving.serialize_keras_object(network)
    settings = config["network"].setdefault("config", {})
    settings.update({k: v for k, v in (network_updates or {}).items() if k in settings})
    config.update(updates)
    if dtype_policy is None:
        return DiffusionModel.from_config(config)
    with distribute.dtype_policy(dtype_policy):
        return DiffusionModel.from_config(distribute.with_dtype_policy(config, dtype_policy))
