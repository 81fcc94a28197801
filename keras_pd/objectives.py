"""The training objective: one `compute_loss` for every model keras-pd trains (REFERENCE 3, 5, 6).

Each training step draws times t and noise eps for the global batch, forms
z_t = alpha_t x + sigma_t eps, asks its `target` hook for the Prediction the trained model
should make at (z_t, t), and returns the weighted error of that model's prediction:

| model | t | target |
|---|---|---|
| teacher (`diffusion.DiffusionModel`) | U[0, 1] | the true x, eps, v |
| a distillation round (`distillation.DistillationModel`) | i / N, i ~ U{1..N} | Algorithm 2's x_tilde |
| guided stage one (`guided_distillation.GuidanceDistillationModel`) | U[0, 1] | the guided teacher's x_hat_w |

Draws come from the model's own SeedGenerator in a fixed order (t, eps, then labels or w), so a
run restored with its seed states continues the same stream.
"""

import keras
from keras import ops

from keras_pd.replicas import replica_rows, scale_loss
from keras_pd.weighting import check_weighting, weighted_loss


class Objective(keras.Model):
    """Base of the training models: `fit(x)` or `fit((x, labels))` runs `compute_loss`.

    `call` passes its input through: Keras calls the model before `compute_loss`, where the
    random draws and the network run. Subclasses set `weighting` and `seed_generator` and
    define:

    * `denoiser()`: the `DiffusionModel` whose `denoise` is trained (the model itself for a
      teacher, the student in distillation);
    * `target(x, eps, z_t, t, logsnr, labels, guidance)`: the Prediction to match;

    and may override `draw_times` (default t ~ U[0, 1]) and `draw_conditioning` (default: the
    batch's labels, no guidance weight).
    """

    def denoiser(self):
        """The `DiffusionModel` whose `denoise` is trained (a method, not a property: Keras'
        saving walks properties, and a teacher's would return the model itself)."""
        raise NotImplementedError

    def call(self, inputs, training=False):
        return inputs

    def draw_times(self, rows):
        """t [rows] for the global batch: U[0, 1] (continuous time, REFERENCE 6)."""
        return replica_rows(keras.random.uniform((rows,), seed=self.seed_generator))

    def draw_conditioning(self, y, rows, training):
        """(labels, guidance weights) the trained model is called with."""
        return (y if self.denoiser().num_classes else None), None

    def target(self, x, eps, z_t, t, logsnr, labels, guidance):
        """The `Prediction` the denoiser should make at (z_t, t)."""
        raise NotImplementedError

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The weighted denoising loss (REFERENCE 3) for a batch x (labels y)."""
        model = self.denoiser()
        x, rows = model.training_batch(x, training)
        t = self.draw_times(rows)
        eps = replica_rows(keras.random.normal((rows,) + model.data_shape,
                                               seed=self.seed_generator))
        z_t, logsnr = model.forward_process(x, t, eps)
        labels, guidance = self.draw_conditioning(y, rows, training)
        target = self.target(x, eps, z_t, t, logsnr, labels, guidance)
        prediction = model.denoise(z_t, logsnr, labels=labels, training=training,
                                   guidance=guidance)
        loss = ops.mean(weighted_loss(self.weighting, prediction, target))
        if model.losses:
            loss = loss + ops.sum(model.losses)
        return scale_loss(loss)


def freeze(model):
    """Makes `model` non-trainable, sub-layers included, and returns it.

    True then False: a model deserialized with trainable=False can keep trainable sub-layers on
    the TensorFlow backend (REFERENCE 8); toggling re-propagates the flag.
    """
    model.trainable = True
    model.trainable = False
    return model


class TeacherStudentObjective(Objective):
    """Base of the two distillation models: a frozen teacher, a trained student.

    Args:
        teacher: a `DiffusionModel` (frozen here; called in inference mode, unclipped).
        student: the `DiffusionModel` being trained.
        weighting: loss weighting (truncated SNR by default, as the authors use).
        seed: seed of the model's draws.
    """

    def __init__(self, teacher, student, weighting="truncated_snr", seed=None, **kwargs):
        super().__init__(**kwargs)
        if tuple(teacher.data_shape) != tuple(student.data_shape):
            raise ValueError("teacher and student must have the same data shape")
        if teacher.num_classes != student.num_classes:
            raise ValueError("teacher and student must have the same classes")
        self.teacher = freeze(teacher)
        self.student = student
        self.weighting = check_weighting(weighting)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def denoiser(self):
        return self.student

    def get_config(self):
        config = super().get_config()
        config.update(teacher=keras.saving.serialize_keras_object(self.teacher),
                      student=keras.saving.serialize_keras_object(self.student),
                      weighting=self.weighting, seed=self.seed)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "student"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
