"""Samplers: DDIM and the ancestral sampler, as single steps and as N-step loops (REFERENCE 4).

The steps are pure functions of a `Prediction`; `sample_loop` runs one of them from t = 1 to 0
with a denoiser; `Sampler` wraps a `DiffusionModel` and a fixed step count as a Keras model, so
`predict_on_batch` compiles the whole loop (jax.jit on JAX, XLA on TensorFlow, torch.compile on
PyTorch when asked: see `sampler_jit_compile`) and export can save it as one function.
"""

import keras
from keras import ops

from keras_pd.schedules import alpha_sigma, check_steps, logsnr_cosine

SAMPLERS = ("ddim", "ancestral")


def check_sampler(name):
    """Raises ValueError naming `sampler` when `name` is not one of SAMPLERS."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return name


def check_gamma(gamma):
    """Raises ValueError naming `gamma` unless 0 <= gamma <= 1; returns it as a float."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    return float(gamma)


#: Samples x steps of one sampling job from which DDIM on TensorFlow compiles with XLA by
#: default (`sampler_jit_compile`): XLA's compilation costs seconds more than tracing the graph
#: and saves a fraction of a millisecond per sample-step, so smaller jobs finish sooner in graph
#: mode (break-even measured in docs/performance.md, "Sampler compilation per backend").
XLA_MIN_SAMPLE_STEPS = 50_000


def sampler_jit_compile(jit_compile=None, sampler="ddim", sample_steps=None):
    """The `compile(jit_compile=...)` setting of a `Sampler`: the user's choice, or the default.

    None picks the backend's fastest setting as measured in docs/performance.md ("Sampler
    compilation per backend"): on TensorFlow, True (XLA) for DDIM jobs of at least
    `XLA_MIN_SAMPLE_STEPS` sample-steps (or of unknown size), whose default graph runs the loop
    op by op while XLA fuses it (one compilation serves every step count); "auto" elsewhere,
    i.e. jax.jit on JAX and eager PyTorch, because torch.compile's first call is long on CPU.
    The ancestral sampler keeps graph mode on TensorFlow: under XLA, TensorFlow's stateless
    normal draws differ from the graph's for the same seed, and a seed should give the same
    samples by default. True on PyTorch opts into torch.compile: worth it for many samples.

    Args:
        jit_compile: None, True, False or "auto".
        sampler: "ddim" or "ancestral".
        sample_steps: the whole job's samples x steps (a job sampled in several calls
            resolves this once, for all of them); None: unknown.

    Returns:
        The value to pass to `Sampler.compile(jit_compile=...)`.
    """
    if jit_compile not in (None, True, False, "auto"):
        raise ValueError(f"jit_compile must be True, False, 'auto' or None, got {jit_compile!r}")
    if jit_compile is None:
        tensorflow = keras.backend.backend() == "tensorflow"
        large = sample_steps is None or sample_steps >= XLA_MIN_SAMPLE_STEPS
        return True if tensorflow and sampler == "ddim" and large else "auto"
    return jit_compile


def ddim_step(prediction, alpha_s, sigma_s):
    """Deterministic DDIM step from t to s < t (REFERENCE 4).

    z_s = alpha_s x_hat + sigma_s eps_hat, which equals
    alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t when eps_hat is derived from x_hat.

    Args:
        prediction: the denoiser's Prediction at (z_t, t).
        alpha_s: alpha at the target time, broadcastable to z.
        sigma_s: sigma at the target time, broadcastable to z.

    Returns:
        z_s.
    """
    alpha_s, sigma_s = ops.convert_to_tensor(alpha_s), ops.convert_to_tensor(sigma_s)
    return alpha_s * prediction.x + sigma_s * prediction.eps


def ancestral_step(prediction, z_t, logsnr_t, logsnr_s, noise, gamma):
    """Ancestral (stochastic) step from t to s < t with variance interpolation g (REFERENCE 4).

    r = exp(lambda_t - lambda_s);
    mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x_hat;
    var_small = (1 - r) sigma_s^2, var_large = (1 - r) sigma_t^2;
    z_s = mean + sqrt(var_small^(1 - g) var_large^g) * noise.

    Args:
        prediction: the denoiser's Prediction at (z_t, t).
        z_t: the current latent.
        logsnr_t: lambda_t, broadcastable to z.
        logsnr_s: lambda_s > lambda_t, broadcastable to z.
        noise: standard normal noise, the shape of z_t.
        gamma: g in [0, 1]: 0 uses the posterior's own (small) variance, 1 the large one.

    Returns:
        z_s.
    """
    z_t, noise = ops.convert_to_tensor(z_t, "float32"), ops.convert_to_tensor(noise, "float32")
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    r = ops.exp(logsnr_t - logsnr_s)
    mean = r * (alpha_s / alpha_t) * z_t + (1.0 - r) * alpha_s * prediction.x
    log_var = ops.log1p(-r) + 2.0 * ((1.0 - gamma) * ops.log(sigma_s) + gamma * ops.log(sigma_t))
    return mean + ops.exp(0.5 * log_var) * noise


def _normal_with_seed_state(seed_generator, seed_state, shape):
    """Draws N(0, 1) noise from `seed_generator` at an explicit state; returns (noise, next state).

    Loops (lax.fori_loop, tf.while_loop) must carry random state explicitly: a SeedGenerator
    assigned inside a traced loop body would leak the body's values.
    """
    with keras.StatelessScope(state_mapping=[(seed_generator.state, seed_state)]) as scope:
        noise = keras.random.normal(shape, seed=seed_generator)
        return noise, scope.get_current_value(seed_generator.state)


def sample_loop(denoise, noise, num_steps, sampler="ddim", gamma=0.0, seed_generator=None,
                logsnr_fn=logsnr_cosine, unroll=False):
    """Runs an N-step sampler from z_1 = noise down to t = 0 (REFERENCE 4).

    Steps go t_i = i / N -> t_{i-1} for i = N ... 2; the last step (t = 1/N) returns x_hat.

    Args:
        denoise: callable (z, logsnr [B]) -> Prediction, clipping already applied if wanted.
        noise: z_1, standard normal, [B, ...].
        num_steps: N >= 1: an integer (Python or numpy, checked by `schedules.check_steps`),
            or a scalar int backend tensor, so that one compiled loop (a while loop with a
            traced trip count) serves every N; a tensor is not checked.
        sampler: "ddim" or "ancestral".
        gamma: the ancestral sampler's variance interpolation g: a float, or a [B] tensor.
        seed_generator: a keras.random.SeedGenerator (ancestral sampler only).
        logsnr_fn: the schedule, t -> lambda.
        unroll: run the steps as a Python loop (constant times, no while loop) instead of
            ops.fori_loop; export uses it so that TFLite needs built-in ops only.

    Returns:
        Samples, the shape of `noise`.
    """
    # Only a backend tensor (traced or not) is a dynamic trip count; every other integral value
    # (Python or numpy integer, 0-d array, integral float: a step count read from a card) is
    # validated, so that N = 0 is an error instead of NaN samples.
    dynamic = ops.is_tensor(num_steps)
    if dynamic and unroll:
        raise ValueError("unroll needs a fixed (non-tensor) integer num_steps")
    n = num_steps if dynamic else check_steps(num_steps)
    n_float = ops.cast(n, "float32")
    check_sampler(sampler)
    if sampler == "ancestral" and seed_generator is None:
        raise ValueError("the ancestral sampler needs a seed_generator")
    batch = ops.shape(noise)[0]
    z = ops.convert_to_tensor(noise, "float32")

    def logsnr_at(i):  # lambda at t = i / N for a (possibly traced) step index i, as [B]
        t = ops.cast(i, "float32") / n_float
        return ops.broadcast_to(logsnr_fn(t), (batch,))

    def step(k, carry):  # k = 0 .. N-2: from t = (N-k)/N to s = (N-k-1)/N
        z, seed_state = carry
        logsnr_t, logsnr_s = logsnr_at(n - k), logsnr_at(n - k - 1)
        pred = denoise(z, logsnr_t)
        expand = (-1,) + (1,) * (len(z.shape) - 1)
        if sampler == "ddim":
            alpha_s, sigma_s = alpha_sigma(ops.reshape(logsnr_s, expand))
            return ddim_step(pred, alpha_s, sigma_s), seed_state
        step_noise, seed_state = _normal_with_seed_state(seed_generator, seed_state, ops.shape(z))
        g = gamma if isinstance(gamma, (int, float)) else ops.reshape(gamma, expand)
        z = ancestral_step(pred, z, ops.reshape(logsnr_t, expand), ops.reshape(logsnr_s, expand),
                           step_noise, g)
        return z, seed_state

    seed_state = seed_generator.state.value if seed_generator is not None else ops.zeros((2,))
    if unroll:
        for k in range(n - 1):
            z, seed_state = step(k, (z, seed_state))
    elif dynamic or n > 1:
        z, seed_state = ops.fori_loop(0, n - 1, step, (z, seed_state))
    if seed_generator is not None:
        seed_generator.state.assign(seed_state)
    return denoise(z, logsnr_at(1)).x


@keras.saving.register_keras_serializable(package="keras_pd")
class Sampler(keras.Model):
    """A fixed N-step sampler of a `DiffusionModel`, as one Keras model: noise in, samples out.

    `sampler.predict_on_batch(noise)` (or a dict with "noise", "labels" and "guidance": float
    w [B] for guided sampling) compiles the whole loop on JAX and TensorFlow; `keras_pd.export`
    saves the same function.

    With `num_steps=None` the step count and g are inputs too ("steps": int [B], "gamma":
    float [B], each holding one value), so one compiled function serves every N and g: the
    evaluation grid (8 step counts x 6 samplers for a 128-step teacher) compiles twice, not
    48 times.

    Args:
        diffusion: a `DiffusionModel`.
        num_steps: N >= 1, or None: given with the inputs.
        sampler: "ddim" or "ancestral".
        gamma: ancestral variance interpolation g in [0, 1] (ignored when num_steps is None).
        clip: clip x_hat to the data range at every step (eps_hat recomputed from it).
        seed: seed of the ancestral sampler's noise.
        unroll: unroll the step loop in Python (see `sample_loop`); used by export.
        jit_compile: how `predict_on_batch` compiles (`sampler_jit_compile`): None for the
            backend's default, True for torch.compile on PyTorch.
    """

    def __init__(self, diffusion, num_steps, sampler="ddim", gamma=0.0, clip=True, seed=None,
                 unroll=False, jit_compile=None, **kwargs):
        super().__init__(**kwargs)
        self.diffusion = diffusion
        self.num_steps = None if num_steps is None else check_steps(num_steps)
        self.sampler = check_sampler(sampler)
        self.gamma = check_gamma(gamma)
        self.clip = bool(clip)
        self.unroll = bool(unroll)
        self.seed_generator = keras.random.SeedGenerator(seed) if sampler == "ancestral" else None
        self.compile(jit_compile=sampler_jit_compile(jit_compile, sampler))

    def call(self, inputs):
        if isinstance(inputs, dict):
            noise, labels = inputs["noise"], inputs.get("labels")
            guidance = inputs.get("guidance")
        else:
            noise, labels, guidance = inputs, None, None
        num_steps, gamma = self.num_steps, self.gamma
        if num_steps is None:
            num_steps = ops.cast(inputs["steps"][0], "int32")
            gamma = ops.cast(inputs["gamma"], "float32") if "gamma" in inputs else 0.0
        if self.diffusion.num_classes and labels is None:
            raise ValueError("this model is class-conditional: pass labels with the noise")

        def denoise(z, logsnr):
            return self.diffusion.denoise(z, logsnr, labels=labels, clip=self.clip,
                                          guidance=guidance)

        samples = sample_loop(denoise, noise, num_steps, self.sampler, gamma,
                              self.seed_generator, self.diffusion.logsnr, self.unroll)
        return self.diffusion.to_images(samples)  # unchanged unless the model is standardized
