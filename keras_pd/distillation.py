"""Progressive distillation's round: the paper's Algorithm 2 (REFERENCE 5).

`distillation_target` is the equation; `distilled_student` is the student a round starts from
(a copy of its teacher); `DistillationModel` is one round's training step, a single
`compute_loss` override on every backend. The cascade of rounds N0 -> N_end, each student
written to its own run directory and resumed there, is `cascade.py`.

Guided distillation (Meng et al., CVPR 2023): its stage one lives in `guided_distillation.py`;
stage two is this round with w drawn per example and passed to teacher and student.
"""

import keras
from keras import ops

from keras_pd.diffusion import rebuild
from keras_pd.guidance import check_guidance_range, sample_guidance
from keras_pd.objectives import TeacherStudentObjective
from keras_pd.parameterization import prediction_from_x
from keras_pd.replicas import replica_rows
from keras_pd.samplers import ddim_step
from keras_pd.schedules import alpha_sigma, check_steps, expand_to


def distillation_target(teacher_denoise, z_t, t, num_student_steps, logsnr_fn):
    """The student's x target from two teacher DDIM steps (REFERENCE 5, Algorithm 2).

    From z_t the teacher steps t -> t' = t - 0.5/N -> t'' = t - 1/N (unclipped). The target
        x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)
    is the x for which one student DDIM step t -> t'' lands on the teacher's z_t''. At the last
    step (t'' = 0) the sampler returns x_hat, so the target is the teacher's x_hat at t'.

    Args:
        teacher_denoise: callable (z, logsnr [B]) -> Prediction, unclipped, inference mode.
        z_t: [B, ...] noisy inputs at times t.
        t: [B] student grid times i / N, i in 1..N.
        num_student_steps: N.
        logsnr_fn: the schedule t -> lambda.

    Returns:
        (x_tilde, z_t''), where z_t'' is the teacher's two-step result (its x_hat at the last step).
    """
    n = float(num_student_steps)
    t_prime, t_dprime = t - 0.5 / n, t - 1.0 / n
    lam_t, lam_prime, lam_dprime = logsnr_fn(t), logsnr_fn(t_prime), logsnr_fn(t_dprime)
    alpha_t, sigma_t = (expand_to(v, z_t) for v in alpha_sigma(lam_t))
    alpha_prime, sigma_prime = (expand_to(v, z_t) for v in alpha_sigma(lam_prime))
    alpha_dprime, sigma_dprime = (expand_to(v, z_t) for v in alpha_sigma(lam_dprime))
    z_prime = ddim_step(teacher_denoise(z_t, lam_t), alpha_prime, sigma_prime)  # z_t'
    pred_prime = teacher_denoise(z_prime, lam_prime)
    z_dprime = ddim_step(pred_prime, alpha_dprime, sigma_dprime)  # z_t''
    ratio = sigma_dprime / sigma_t
    x_tilde = (z_dprime - ratio * z_t) / (alpha_dprime - ratio * alpha_t)
    # A select, not a blend: a NaN or Inf in the unused branch must not reach the target.
    last = ops.reshape(ops.less_equal(t_dprime, 0.0), (-1,) + (1,) * (len(z_t.shape) - 1))
    x_tilde = ops.where(last, pred_prime.x, x_tilde)
    z_dprime = ops.where(last, pred_prime.x, z_dprime)
    return ops.stop_gradient(x_tilde), ops.stop_gradient(z_dprime)


def copy_model(model, dropout=None, dtype_policy=None, label_dropout=None):
    """A DiffusionModel with the same config and weights (dropout, dtype policy and label
    dropout overridden where given)."""
    updates = {} if label_dropout is None else {"label_dropout": label_dropout}
    copy = rebuild(model, dtype_policy,
                   network_updates=None if dropout is None else {"dropout": dropout}, **updates)
    copy.set_weights(model.get_weights())
    return copy


def distilled_student(teacher, dtype_policy=None):
    """The student of a round, initialised as a copy of its teacher (Algorithm 2, step 1).

    Dropout is off (REFERENCE 5). Label dropout is off too: a round distils the conditional
    predictions only, so the student has no distilled null-label prediction, and classifier-
    free guidance, which mixes the two, is refused on it (`DiffusionModel.guidable`). A student
    that samples with guidance comes from guided distillation, which distils the guided
    prediction itself (`guided_distillation`).
    """
    return copy_model(teacher, dropout=0.0, dtype_policy=dtype_policy, label_dropout=0.0)


@keras.saving.register_keras_serializable(package="keras_pd")
class DistillationModel(TeacherStudentObjective):
    """One distillation round: a frozen teacher for 2N steps, a trainable student for N steps.

    Trained with `compile()` + `fit(x)` (or `fit((x, labels))` when class-conditional);
    `compute_loss` draws i ~ U{1..N}, eps, forms z_t, computes the teacher's target and weighs
    the student's error (REFERENCE 5).

    Args:
        teacher: the DiffusionModel sampling well in 2N DDIM steps (frozen here).
        student: the DiffusionModel being trained (initialised as a copy of the teacher).
        student_steps: N, the student's step count.
        weighting: loss weighting (truncated SNR by default, as the authors use).
        seed: seed of the i and eps draws.
        guidance_range: (w_min, w_max) for guided students (teacher and student take w):
            each example draws w ~ U[w_min, w_max], passed to both (guided distillation,
            stage two).
    """

    def __init__(self, teacher, student, student_steps, weighting="truncated_snr", seed=None,
                 guidance_range=None, **kwargs):
        super().__init__(teacher, student, weighting, seed, **kwargs)
        self.student_steps = check_steps(student_steps, "student_steps")
        if student.takes_guidance != teacher.takes_guidance:
            raise ValueError("teacher and student must both take guidance, or neither")
        if student.takes_guidance and guidance_range is None:
            raise ValueError("guided students need a guidance_range")
        self.guidance_range = (check_guidance_range(*guidance_range)
                               if student.takes_guidance else None)

    def draw_times(self, rows):
        """The student's grid times t = i / N, i ~ U{1, ..., N} (Algorithm 2)."""
        n = self.student_steps
        i = replica_rows(keras.random.randint((rows,), 1, n + 1, seed=self.seed_generator))
        return ops.cast(i, "float32") / float(n)

    def draw_conditioning(self, y, rows, training):
        """The batch's labels, and for guided students w ~ U[w_min, w_max] per example."""
        labels = y if self.student.num_classes else None
        if self.guidance_range is None:
            return labels, None
        return labels, replica_rows(sample_guidance(rows, *self.guidance_range,
                                                    seed=self.seed_generator))

    def target(self, x, eps, z_t, t, logsnr, labels, guidance):
        """Algorithm 2's x_tilde from two teacher DDIM steps, with eps and v derived from it."""

        def teacher_denoise(z, lam):
            return self.teacher.denoise(z, lam, labels=labels, training=False, clip=False,
                                        guidance=guidance)

        x_tilde, _ = distillation_target(teacher_denoise, z_t, t, self.student_steps,
                                         self.student.logsnr)
        return prediction_from_x(z_t, x_tilde, *(expand_to(v, x) for v in alpha_sigma(logsnr)))

    def get_config(self):
        config = super().get_config()
        config.update(student_steps=self.student_steps,
                      guidance_range=(None if self.guidance_range is None
                                      else list(self.guidance_range)))
        return config
