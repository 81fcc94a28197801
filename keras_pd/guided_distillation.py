"""Guided distillation, stage one (Meng et al., "On Distillation of Guided Diffusion Models",
CVPR 2023): a student that takes the guidance weight w as input learns the classifier-free-guided
teacher (`guidance.py`) in one network call instead of two. Stage two is the ordinary cascade of
`distillation.py` with w passed through.
"""

import keras
from keras import ops

from keras_pd import distribute
from keras_pd.diffusion import DiffusionModel
from keras_pd.guidance import check_guidance_range, sample_guidance
from keras_pd.parameterization import prediction_from_x
from keras_pd.schedules import alpha_sigma, expand_to
from keras_pd.weighting import check_weighting, weighted_loss


def guided_student(teacher, dtype_policy=None):
    """A student taking the guidance weight w as input, initialised from a class-conditional
    teacher: the teacher's weights, plus a zero-initialised w embedding (so it starts as the
    teacher's conditional model for every w), dropout off."""
    if not teacher.num_classes:
        raise ValueError("guided distillation needs a class-conditional teacher")
    config = teacher.get_config()
    config["network"]["config"]["guidance"] = True
    if "dropout" in config["network"]["config"]:
        config["network"]["config"]["dropout"] = 0.0
    config["label_dropout"] = 0.0
    if dtype_policy is None:
        student = DiffusionModel.from_config(config)
    else:
        with distribute.dtype_policy(dtype_policy):
            student = DiffusionModel.from_config(distribute.with_dtype_policy(config, dtype_policy))
    # The w embedding is built last, so the teacher's weights are a prefix of the student's.
    extra = {id(v) for v in student.network.guidance_emb.weights}
    targets = [v for v in student.network.weights if id(v) not in extra]
    sources = teacher.network.weights
    if [tuple(v.shape) for v in targets] != [tuple(v.shape) for v in sources]:
        raise ValueError("the guided student's network does not extend the teacher's")
    for target, source in zip(targets, sources):  # through numpy: no shared JAX buffers
        target.assign(keras.ops.convert_to_numpy(source))
    return student


@keras.saving.register_keras_serializable(package="keras_pd")
def teacher_student_from_config(cls, config):
    """`cls(**config)` with its serialized `teacher` and `student` models deserialized (the
    `from_config` of both distillation models)."""
    config = dict(config)
    for key in ("teacher", "student"):
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return cls(**config)


class GuidanceDistillationModel(keras.Model):
    """Guided distillation, stage one (Meng et al., CVPR 2023): one call instead of two.

    The student (`guided_student`) takes w as input and learns the teacher's classifier-free-
    guided prediction x_hat_w(z_t, c) = (1 + w) x_hat(z_t, c) - w x_hat(z_t, null) at
    t ~ U[0, 1], w ~ U[w_min, w_max], with the teacher's loss weighting on x_hat_w as target.

    Args:
        teacher: a class-conditional DiffusionModel trained with label dropout (frozen here).
        student: a DiffusionModel whose network takes guidance.
        guidance_range: (w_min, w_max).
        weighting: loss weighting.
        seed: seed of the t, eps and w draws.
    """

    def __init__(self, teacher, student, guidance_range=(0.0, 4.0), weighting="truncated_snr",
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        if not student.takes_guidance:
            raise ValueError("the student must take guidance (see guided_student)")
        self.teacher = teacher
        self.teacher.trainable = True  # re-propagate the flag (see DistillationModel)
        self.teacher.trainable = False
        self.student = student
        self.guidance_range = check_guidance_range(*guidance_range)
        self.weighting = check_weighting(weighting)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, inputs, training=False):
        return inputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Weighted error between the student's x_hat(z_t, c, w) and the guided teacher's."""
        x, rows = self.student.training_batch(x, training)
        t = distribute.replica_rows(keras.random.uniform((rows,), seed=self.seed_generator))
        eps = distribute.replica_rows(
            keras.random.normal((rows,) + self.student.data_shape, seed=self.seed_generator))
        w = distribute.replica_rows(sample_guidance(rows, *self.guidance_range,
                                                    seed=self.seed_generator))
        z_t, logsnr = self.student.noise(x, t, eps)
        target = self.teacher.denoise(z_t, logsnr, labels=y, training=False, guidance=w)
        target = prediction_from_x(z_t, ops.stop_gradient(target.x),
                                   *(expand_to(v, x) for v in alpha_sigma(logsnr)))
        prediction = self.student.denoise(z_t, logsnr, labels=y, training=training, guidance=w)
        return distribute.scale_loss(ops.mean(weighted_loss(self.weighting, prediction, target)))

    def get_config(self):
        config = super().get_config()
        config.update(teacher=keras.saving.serialize_keras_object(self.teacher),
                      student=keras.saving.serialize_keras_object(self.student),
                      guidance_range=list(self.guidance_range), weighting=self.weighting,
                      seed=self.seed)
        return config

    @classmethod
    def from_config(cls, config):
        return teacher_student_from_config(cls, config)
