"""Guided distillation, stage one (Meng et al., "On Distillation of Guided Diffusion Models",
CVPR 2023): a student that takes the guidance weight w as input learns the classifier-free-guided
teacher (`guidance.py`) in one network call instead of two. Stage two is the ordinary cascade of
`distillation.py` with w passed through.
"""

import keras

from keras_pd.denoiser_distillation import DenoiserDistillationModel
from keras_pd.diffusion import rebuild
from keras_pd.guidance import check_guidance_range, sample_guidance
from keras_pd.replicas import replica_rows


def guided_student(teacher, dtype_policy=None):
    """A student taking the guidance weight w as input, initialised from a class-conditional
    teacher: the teacher's weights, plus a zero-initialised w embedding (so it starts as the
    teacher's conditional model for every w), dropout off."""
    if not teacher.num_classes:
        raise ValueError("guided distillation needs a class-conditional teacher")
    student = rebuild(teacher, dtype_policy, network_updates={"guidance": True, "dropout": 0.0},
                      label_dropout=0.0)
    if not student.takes_guidance:
        raise ValueError("the teacher's network has no guidance input: it cannot be distilled "
                         "into a guided student")
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
class GuidanceDistillationModel(DenoiserDistillationModel):
    """Guided distillation, stage one (Meng et al., CVPR 2023): one call instead of two.

    The student (`guided_student`) takes w as input and learns the teacher's classifier-free-
    guided prediction x_hat_w(z_t, c) = (1 + w) x_hat(z_t, c) - w x_hat(z_t, null) at
    t ~ U[0, 1], w ~ U[w_min, w_max], with the teacher's loss weighting on x_hat_w as target:
    denoiser distillation (`denoiser_distillation`) with w passed to teacher and student.

    Args:
        teacher: a class-conditional DiffusionModel trained with label dropout (frozen here).
        student: a DiffusionModel whose network takes guidance.
        guidance_range: (w_min, w_max).
        weighting: loss weighting.
        seed: seed of the t, eps and w draws.
    """

    def __init__(self, teacher, student, guidance_range=(0.0, 4.0), weighting="truncated_snr",
                 seed=None, **kwargs):
        if not student.takes_guidance:
            raise ValueError("the student must take guidance (see guided_student)")
        super().__init__(teacher, student, weighting, seed, **kwargs)
        self.guidance_range = check_guidance_range(*guidance_range)

    def draw_conditioning(self, y, rows, training):
        """The batch's labels and w ~ U[w_min, w_max] per example."""
        return y, replica_rows(sample_guidance(rows, *self.guidance_range,
                                               seed=self.seed_generator))

    def get_config(self):
        config = super().get_config()
        config.update(guidance_range=list(self.guidance_range))
        return config
