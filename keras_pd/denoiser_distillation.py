"""Denoiser distillation: a student learns its teacher's one-call prediction x_hat(z_t, t).

Algorithm 2 starts every student as a copy of its teacher (REFERENCE 5). A student that cannot
be a copy needs a start of its own; this objective gives it one, by regressing the student's
x_hat onto the teacher's (unclipped) x_hat at t ~ U[0, 1] under the cascade's loss weighting:

| student | why it cannot be a copy | where |
|---|---|---|
| another parameterization (an x- or v-student of an eps teacher) | the same weights read as v are another function | `converted_student`, `cascade.distill`'s initial round |
| another network (a smaller one, `student_preset`) | other weights | the same |
| a guided student (takes w) | a new input | `guided_distillation` (stage one, w passed to both) |

Why not an output head that converts exactly (v_hat = (eps_hat - sigma z) / alpha, say)? Such a
student is the same function of the same weights, with the same gradients of every x-space
loss: an eps student under another name, as ill-conditioned at alpha -> 0 as its teacher. A
student that gains from x or v must read its output with bounded coefficients, so it starts
from the teacher's weights (its features) and learns the new reading here, for a round.
"""

import keras
from keras import ops

from keras_pd.diffusion import rebuild
from keras_pd.objectives import TeacherStudentObjective
from keras_pd.parameterization import check_parameterization, output_channels, prediction_from_x
from keras_pd.schedules import alpha_sigma, expand_to


def converted_student(teacher, parameterization=None, preset=None, dtype_policy=None,
                      seed=None):
    """A student unlike its teacher: predicting `parameterization`, or with the network of
    `preset` (a smaller one, say), or both.

    With the teacher's network it starts from the teacher's weights, read the new way; with
    another preset's network, from that network's own initialisation (seeded by `seed`).
    Dropout and label dropout are off, as for every student. Either way it is not yet the
    teacher's function: `DenoiserDistillationModel` trains it.

    Raises:
        ValueError naming `student_parameterization` when it needs another number of output
        channels than the teacher's network has ("both" against a single prediction), or
        `student_preset` for a preset that does not fit the data; and when nothing changes.
    """
    from keras_pd.networks.presets import make_network

    parameterization = check_parameterization(parameterization or teacher.parameterization)
    if parameterization == teacher.parameterization and preset is None:
        raise ValueError(f"student_parameterization {parameterization!r} is the teacher's: "
                         "its student is a copy, with no initial round")
    channels = teacher.data_shape[-1]
    if preset is None and output_channels(parameterization, channels) != output_channels(
            teacher.parameterization, channels):
        raise ValueError(f"student_parameterization {parameterization!r} needs "
                         f"{output_channels(parameterization, channels)} output channels; the "
                         f"teacher's network ({teacher.parameterization}) has "
                         f"{output_channels(teacher.parameterization, channels)}")
    if preset is None:
        student = rebuild(teacher, dtype_policy, network_updates={"dropout": 0.0},
                          parameterization=parameterization, label_dropout=0.0)
        student.set_weights(teacher.get_weights())
        return student
    if seed is not None:
        keras.utils.set_random_seed(seed)
    try:
        network = make_network(preset, teacher.data_shape,
                               output_channels(parameterization, channels),
                               num_classes=teacher.num_classes, dropout=0.0)
    except (KeyError, ValueError) as e:
        raise ValueError(f"student_preset {preset!r}: {str(e).strip(chr(39))}") from None
    return rebuild(teacher, dtype_policy, network=network, parameterization=parameterization,
                   label_dropout=0.0)


@keras.saving.register_keras_serializable(package="keras_pd")
class DenoiserDistillationModel(TeacherStudentObjective):
    """The student's x_hat learns the teacher's at t ~ U[0, 1] (one teacher call per example).

    Trained with `compile()` + `fit(x)` (or `fit((x, labels))`), the student's loss weighting
    applied to the teacher's x_hat as target. A guided student subclasses it
    (`guided_distillation.GuidanceDistillationModel`), drawing w for both models.

    Args:
        teacher: the DiffusionModel to learn (frozen here; inference mode, unclipped).
        student: the DiffusionModel being trained.
        weighting: loss weighting.
        seed: seed of the t and eps draws.
    """

    def target(self, x, eps, z_t, t, logsnr, labels, guidance):
        """The teacher's x_hat at (z_t, t), with eps and v derived from it."""
        taught = self.teacher.denoise(z_t, logsnr, labels=labels, training=False,
                                      guidance=guidance)
        return prediction_from_x(z_t, ops.stop_gradient(taught.x),
                                 *(expand_to(v, x) for v in alpha_sigma(logsnr)))
