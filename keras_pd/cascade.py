"""The distillation cascade: rounds N0 -> N0/2 -> ... -> N_end, resumable (REFERENCE 5).

Each round trains the N-step student of the previous one (`distillation.DistillationModel`)
in its own run directory, WORKDIR/student_NNNN, through the run orchestration shared with
teacher training (`runs.resume_and_fit`: checkpoints, card, resume). Two stages may come
first: guided distillation's stage one (`guided_distillation.py`) and, for a student of another
parameterization or network than the teacher's, an initial round of denoiser distillation
(`denoiser_distillation.py`), whose student the first round then trains on the original
teacher's targets.
"""

import dataclasses
import os
import time

from keras_pd import checkpoint as ckpt
from keras_pd import distribute
from keras_pd.checks import check_positive_int
from keras_pd.denoiser_distillation import DenoiserDistillationModel, converted_student
from keras_pd.distillation import DistillationModel, copy_model, distilled_student
from keras_pd.guidance import check_guidance_range
from keras_pd.guided_distillation import GuidanceDistillationModel, guided_student
from keras_pd.parameterization import check_parameterization
from keras_pd.runs import make_optimizer, resume_and_fit
from keras_pd.schedules import check_steps
from keras_pd.teacher_samples import (SAMPLES_DIR, check_data_shape, check_distill_data,
                                      distillation_data)
from keras_pd.weighting import check_weighting

#: The paper's recipe: the rounds to 2 and 1 step get twice the updates of the others
#: (REFERENCE 5: 100k instead of 50k).
FINAL_ROUNDS_FACTOR = 2
#: A student of another network starts from scratch: its initial round gets this many rounds'
#: updates at the teacher's own training rate (measured in docs/results.md, "Smaller students").
NEW_NETWORK_INITIAL_FACTOR = 24
NEW_NETWORK_INITIAL_RATE = 1e-3


def check_power_of_two(n, name):
    """Raises ValueError naming `name` unless n is a power of two (1, 2, 4, ...)."""
    n = check_steps(n, name)
    if n & (n - 1):
        raise ValueError(f"{name} must be a power of two, got {n}")
    return n



@dataclasses.dataclass
class DistillConfig(distribute.ScaleOutConfig):
    """Settings of a distillation cascade; attributes mirror `apps.distill`'s flags.

    Attributes:
        teacher_steps: N0, the teacher's step count (None: its card's `sampling_steps`).
        end_steps: the last student's step count (None: one round, N0 / 2).
        updates_per_round: optimizer updates in each round.
        final_rounds_factor: multiplies the updates of the rounds to 2 and 1 steps (the
            paper's 2 by default).
        learning_rate: Adam's rate at the start of each round, decayed linearly to 0.
        batch_size: examples per update.
        weighting: loss weighting.
        distill_data: what the student is trained on: "teacher" (the default: the teacher's
            own DDIM samples, generated once into WORKDIR/teacher_samples; no dataset needed),
            "data" (the dataset, the paper's choice) or "mix" (both); measured in
            docs/results.md.
        teacher_samples: how many teacher samples ("teacher" and "mix").
        teacher_sample_steps: the DDIM steps they are drawn with (None: the teacher's N0).
        resample_each_round: each round distils on samples of its own teacher (the previous
            round's student, at its 2N steps) instead of the first teacher's.
        dataset: training data (None: the teacher's).
        seed: seed of data order and draws; round r uses seed + r.
        checkpoint_every: updates between checkpoints.
        grad_clip: clipping by global norm.
        skip_nonfinite: skip updates with non-finite gradients instead of stopping the run.
        guided: guided distillation: first a student taking w as input is trained to match the
            classifier-free-guided teacher (`guided_updates` updates, w ~ U[guidance_min,
            guidance_max]), then the cascade distils it with w passed through.
        student_parameterization: what the students predict (None: the teacher's).
        student_preset: the students' network preset (None: the teacher's network), e.g. a
            smaller one. Another parameterization or network than the teacher's adds an
            initial round (`initial_updates` updates, None: those of a round) in which the
            student learns the teacher's denoiser (WORKDIR/initial_student), starting from the
            teacher's weights when the network is the teacher's; the cascade starts from it.
            For another network, None is `NEW_NETWORK_INITIAL_FACTOR` rounds' updates.
        initial_learning_rate: that round's initial rate (None: `learning_rate`; for another
            network, the teacher's training rate from its card, else
            `NEW_NETWORK_INITIAL_RATE`).
    """

    teacher_steps: int | None = None
    end_steps: int | None = None
    updates_per_round: int = 2000
    final_rounds_factor: int = FINAL_ROUNDS_FACTOR
    learning_rate: float = 3e-4
    batch_size: int = 128
    weighting: str = "truncated_snr"
    distill_data: str = "teacher"
    teacher_samples: int = 20000
    teacher_sample_steps: int | None = None
    resample_each_round: bool = False
    dataset: str | None = None
    seed: int = 0
    checkpoint_every: int = 500
    grad_clip: float = 1.0
    data_dir: str | None = None
    skip_nonfinite: bool = False
    guided: bool = False
    guidance_min: float = 0.0
    guidance_max: float = 4.0
    guided_updates: int = 2000
    student_parameterization: str | None = None
    student_preset: str | None = None
    initial_updates: int | None = None
    initial_learning_rate: float | None = None


INITIAL_DIR = "initial_student"


def student_dir(workdir, steps):
    """Where the N-step student of a cascade lives."""
    return os.path.join(workdir, f"student_{steps:04d}")


def converts(cfg, teacher_card):
    """Whether the students differ from the teacher (another parameterization or network), and
    so the cascade starts with an initial round."""
    wanted = cfg.student_parameterization
    return (bool(wanted) and wanted != teacher_card.get("parameterization")) or bool(
        cfg.student_preset)


def round_updates(cfg, steps):
    """Updates for the round producing an N-step student."""
    return cfg.updates_per_round * (cfg.final_rounds_factor if steps <= 2 else 1)


def plan(cfg, teacher_card):
    """The cascade's student step counts, N0/2 ... N_end, validated."""
    n0 = check_power_of_two(cfg.teacher_steps or teacher_card.get("sampling_steps"),
                            "teacher_steps")
    if n0 < 2:
        raise ValueError("teacher_steps must be at least 2 to distill")
    distribute.check_distribution(cfg.distribution)
    distribute.check_dtype_policy(cfg.dtype_policy)
    end = check_power_of_two(cfg.end_steps if cfg.end_steps else n0 // 2, "end_steps")
    if end >= n0:
        raise ValueError(f"end_steps ({end}) must be below the teacher's steps ({n0})")
    for name in ("updates_per_round", "batch_size", "checkpoint_every", "final_rounds_factor",
                 "teacher_samples"):
        check_positive_int(getattr(cfg, name), name)
    check_distill_data(cfg.distill_data)
    if cfg.dataset and cfg.distill_data == "teacher":
        raise ValueError(f"dataset {cfg.dataset!r} is not used when distilling on the teacher's "
                         "own samples (distill_data=teacher): drop it, or distill on "
                         "distill_data=data or mix")
    if cfg.teacher_sample_steps is not None:
        check_positive_int(cfg.teacher_sample_steps, "teacher_sample_steps")
    if cfg.student_parameterization is not None:
        try:
            check_parameterization(cfg.student_parameterization)
        except ValueError as e:
            raise ValueError(f"student_parameterization: {e}") from None
        pair = (cfg.student_parameterization, teacher_card.get("parameterization"))
        if converts(cfg, teacher_card) and "both" in pair and not cfg.student_preset:
            raise ValueError(f"student_parameterization {pair[0]!r} needs another number of "
                             f"output channels than the {pair[1]} teacher's network has")
    if cfg.guided and converts(cfg, teacher_card):
        raise ValueError("student_parameterization and student_preset cannot change with "
                         "guided distillation")
    if cfg.student_preset is not None:
        from keras_pd.networks.presets import get_preset

        try:
            get_preset(cfg.student_preset)
        except ValueError as e:
            raise ValueError(f"student_preset: {e}") from None
    if cfg.initial_updates is not None:
        check_positive_int(cfg.initial_updates, "initial_updates")
    if cfg.initial_learning_rate is not None and cfg.initial_learning_rate <= 0:
        raise ValueError(f"initial_learning_rate must be positive, got "
                         f"{cfg.initial_learning_rate}")
    if cfg.learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {cfg.learning_rate}")
    check_weighting(cfg.weighting)
    steps, out = n0 // 2, []
    while steps >= end:
        out.append(steps)
        steps //= 2
    return n0, out


def check_student_dir(out_dir, teacher_dir, student_steps):
    """The card already in `out_dir` (None when there is none), refused when it belongs to
    another cascade (another teacher or step count)."""
    if not os.path.exists(os.path.join(out_dir, ckpt.CARD_NAME)):
        return None
    card = ckpt.read_card(out_dir)
    if card.get("teacher") != os.path.abspath(teacher_dir) or (
            card.get("sampling_steps") != student_steps):
        raise ckpt.CheckpointError(
            f"{out_dir} holds a {card.get('sampling_steps')}-step student of "
            f"{card.get('teacher')}, not a {student_steps}-step student of "
            f"{os.path.abspath(teacher_dir)}: use another --workdir")
    return card


ROUND, GUIDED, INITIAL = "round", "guided", "initial"
#: The card's `kind` of each stage's student.
KINDS = {ROUND: "student", GUIDED: "guided_student", INITIAL: "initial_student"}


def stage_updates(cfg, stage, student_steps):
    """Optimizer updates of one stage: a round's (`round_updates`), guided stage one's, or the
    initial round's (None in the config: a round's, `NEW_NETWORK_INITIAL_FACTOR` rounds' for
    another network)."""
    if stage == GUIDED:
        return cfg.guided_updates
    if stage == INITIAL:
        factor = NEW_NETWORK_INITIAL_FACTOR if cfg.student_preset else 1
        return cfg.initial_updates or cfg.updates_per_round * factor
    return round_updates(cfg, student_steps)


def stage_learning_rate(cfg, stage, teacher_card):
    """A stage's initial learning rate: `cfg.learning_rate`, except for the initial round
    (`initial_learning_rate`; for another network the teacher's own training rate from its
    card, else `NEW_NETWORK_INITIAL_RATE`)."""
    if stage != INITIAL:
        return cfg.learning_rate
    if cfg.initial_learning_rate:
        return cfg.initial_learning_rate
    if cfg.student_preset:
        return (teacher_card.get("config") or {}).get("learning_rate") or NEW_NETWORK_INITIAL_RATE
    return cfg.learning_rate


def stage_models(stage, teacher, cfg, student_steps, seed, start=None, guidance_range=None):
    """The student a stage trains and the Keras model whose `compute_loss` trains it.

    Returns:
        (student, model, description): `description` names the stage for the run's title.
    """
    if stage == GUIDED:
        student = guided_student(teacher, dtype_policy=cfg.dtype_policy)
        model = GuidanceDistillationModel(teacher, student, guidance_range, cfg.weighting,
                                          seed=seed)
        return student, model, (f"guided stage one: {student_steps} steps, w in "
                                f"[{guidance_range[0]:g}, {guidance_range[1]:g}]")
    if stage == INITIAL:
        student = converted_student(teacher, cfg.student_parameterization, cfg.student_preset,
                                    dtype_policy=cfg.dtype_policy, seed=seed)
        model = DenoiserDistillationModel(teacher, student, cfg.weighting, seed=seed)
        return student, model, (
            f"the {cfg.student_preset or 'same-network'} {student.parameterization} student "
            f"({student.count_params():,} parameters) learns the {teacher.parameterization} "
            f"teacher's denoiser ({teacher.count_params():,})")
    first = teacher if start is None else ckpt.load_model(start)[0]
    student = distilled_student(first, dtype_policy=cfg.dtype_policy)
    model = DistillationModel(teacher, student, student_steps, cfg.weighting, seed=seed,
                              guidance_range=guidance_range if teacher.takes_guidance else None)
    return student, model, f"{2 * student_steps} -> {student_steps} steps"


def student_card(stage, cfg, teacher_dir, teacher_card, teacher, student, student_steps,
                 round_index, updates, provenance=None, start=None, guidance_range=None):
    """A fresh stage's card: the dataset and schedule of its teacher, both networks, the
    training settings and where its data came from."""
    card = {k: teacher_card[k] for k in ("dataset", "image_size", "data_shape", "num_classes",
                                         "preset", "parameterization", "schedule")
            if k in teacher_card}
    preset = (cfg.student_preset or teacher_card.get("preset") if stage == INITIAL
              else ckpt.read_card(start).get("preset") if start is not None
              else teacher_card.get("preset"))
    card.update(kind=KINDS[stage], preset=preset, parameters=int(student.count_params()),
                teacher_preset=teacher_card.get("preset"),
                teacher_parameters=int(teacher.count_params()),
                parameterization=student.parameterization, weighting=cfg.weighting,
                sampling_steps=student_steps, teacher=os.path.abspath(teacher_dir),
                teacher_steps=student_steps if stage != ROUND else 2 * student_steps,
                round=round_index, updates=updates, steps_trained=0, wall_time_s=0.0,
                complete=False, seed=cfg.seed, config=dataclasses.asdict(cfg),
                **(provenance or {}))
    if student.takes_guidance:
        card["guidance_range"] = list(guidance_range)
    if start is not None:
        card["initialized_from"] = os.path.abspath(start)
    return card


def distill_round(teacher_dir, out_dir, student_steps, cfg, round_index, dataset, verbose=1,
                  stage=ROUND, provenance=None, start=None):
    """Trains (or resumes, or skips when complete) the N-step student of `teacher_dir`.

    `stage` is ROUND (Algorithm 2: the student, a copy of the teacher or of the model in
    `start`, matches two teacher steps with one), GUIDED (guided distillation's stage one: a
    student taking w matches the classifier-free-guided teacher at the teacher's own step
    count) or INITIAL (a student of another parameterization or network learns the teacher's
    denoiser, at the teacher's step count). `dataset` is what it trains on
    (`teacher_samples.distillation_data`), `provenance` where that came from (written into
    the student's card).

    Returns:
        The student's card.
    """
    teacher_card = ckpt.read_card(teacher_dir)
    card = check_student_dir(out_dir, teacher_dir, student_steps)
    if card is not None and card.get("complete"):
        return card
    engine = distribute.from_config(cfg)
    engine.check_batch_size(cfg.batch_size)
    check_data_shape(teacher_card, dataset)
    updates = stage_updates(cfg, stage, student_steps)
    guidance_range = ((cfg.guidance_min, cfg.guidance_max) if stage == GUIDED
                      else teacher_card.get("guidance_range"))
    seed = cfg.seed + round_index
    # Load, build, compile and fit under the engine; both models take the run's dtype policy.
    with ckpt.workdir_lock(out_dir), engine.scope():
        teacher = copy_model(ckpt.load_model(teacher_dir)[0], dtype_policy=cfg.dtype_policy)
        if stage == GUIDED and not teacher.guidable:
            raise ValueError(f"guided distillation needs a class-conditional teacher trained "
                             f"with label dropout; {teacher_dir} was not")
        student, model, description = stage_models(stage, teacher, cfg, student_steps, seed,
                                                   start, guidance_range)
        optimizer = make_optimizer(stage_learning_rate(cfg, stage, teacher_card),
                                   decay_steps=updates, grad_clip=cfg.grad_clip,
                                   skip_nonfinite=cfg.skip_nonfinite)
        card = student_card(stage, cfg, teacher_dir, teacher_card, teacher, student,
                            student_steps, round_index, updates, provenance, start,
                            guidance_range)
        card, _ = resume_and_fit(
            model, optimizer, out_dir, card, updates, engine=engine,
            source=dataset.source(labels=bool(student.num_classes)), batch_size=cfg.batch_size,
            data_seed=cfg.seed + 1000 * round_index, checkpoint_every=cfg.checkpoint_every,
            sample_every=updates, sample_steps=student_steps, sample_seed=cfg.seed,
            artifact=student, skip_nonfinite=cfg.skip_nonfinite,
            title=f"round {round_index}: {description}, {updates} updates", verbose=verbose)
        card["complete"] = True
        return ckpt.save_model(out_dir, student, card)


def distill(teacher_dir, workdir, config=None, verbose=1):
    """Runs the cascade from a teacher down to `config.end_steps`, resuming where it stopped.

    Args:
        teacher_dir: the teacher's run directory (its card gives N0 unless overridden).
        workdir: where students go: workdir/student_NNNN for each step count.
        config: a DistillConfig.
        verbose: Keras progress level.

    Returns:
        List of (steps, student directory) for every round of the cascade.
    """
    cfg = config or DistillConfig()
    teacher_card = ckpt.read_card(teacher_dir)
    n0, rounds = plan(cfg, teacher_card)
    # Every round's directory is checked before anything is written (the sample set included).
    # The initial round's student is not a teacher: the first round's teacher stays the original.
    initial = os.path.join(workdir, INITIAL_DIR) if converts(cfg, teacher_card) else None
    chain = [(os.path.join(workdir, f"guided_{n0:04d}"), teacher_dir, n0)] if cfg.guided else []
    for steps in rounds:
        chain.append((student_dir(workdir, steps), chain[-1][0] if chain else teacher_dir, steps))
    for out, teacher, steps in chain + ([(initial, teacher_dir, n0)] if initial else []):
        check_student_dir(out, teacher, steps)

    def data_of(teacher, directory):
        return distillation_data(
            cfg.distill_data, teacher, directory, count=cfg.teacher_samples,
            steps=cfg.teacher_sample_steps if teacher == teacher_dir else None, seed=cfg.seed,
            dataset=cfg.dataset, data_dir=cfg.data_dir,
            guidance_range=ckpt.read_card(teacher).get("guidance_range"), verbose=verbose)

    dataset, provenance = data_of(teacher_dir, os.path.join(workdir, SAMPLES_DIR))
    previous, done = teacher_dir, []
    first_round = int(teacher_card.get("round", 0)) + 1
    if cfg.guided:
        check_guidance_range(cfg.guidance_min, cfg.guidance_max)
        check_positive_int(cfg.guided_updates, "guided_updates")
        previous = os.path.join(workdir, f"guided_{n0:04d}")
        card = distill_round(teacher_dir, previous, n0, cfg, first_round, dataset, verbose,
                             stage=GUIDED, provenance=provenance)
        if verbose:
            print(f"guided {n0}-step student (takes w): {previous} ({card['updates']} updates)")
        first_round += 1
    if initial:
        card = distill_round(teacher_dir, initial, n0, cfg, first_round, dataset, verbose,
                             stage=INITIAL, provenance=provenance)
        if verbose:
            print(f"initial {card['parameterization']} student: {initial} "
                  f"({card['updates']} updates)")
        first_round += 1
    for k, steps in enumerate(rounds):
        out = student_dir(workdir, steps)
        t0 = time.time()
        if cfg.resample_each_round and cfg.distill_data != "data" and previous != teacher_dir:
            # The previous student's own samples at its 2N steps, kept in its run directory.
            dataset, provenance = data_of(previous, os.path.join(previous, SAMPLES_DIR))
        card = distill_round(previous, out, steps, cfg, first_round + k, dataset, verbose,
                             provenance=provenance, start=initial if k == 0 else None)
        if verbose:
            print(f"{steps}-step student: {out} ({card['updates']} updates, "
                  f"{time.time() - t0:.0f} s this call)")
        done.append((steps, out))
        previous = out
    return done
