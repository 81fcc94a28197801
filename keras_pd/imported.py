"""A teacher trained elsewhere: a plain Keras model made a keras-pd teacher run directory.

`import_teacher` wraps the model in `networks.ForeignNetwork` (its schedule, noise-level input
and conditioning), checks that it runs and that its output fits the data, and writes the
teacher's run directory (model.keras and a card naming the source file and its SHA-256). From
there the cascade, sampling, evaluation and export treat it as any keras-pd teacher, and its
students are ordinary keras-pd students (copies of the wrapped model, trained by Algorithm 2).
"""

import os

from keras import ops

from keras_pd import checkpoint as ckpt
from keras_pd.checks import one_line
from keras_pd.diffusion import DiffusionModel
from keras_pd.networks.foreign import ForeignNetwork, data_shape_of
from keras_pd.parameterization import check_parameterization, output_channels
from keras_pd.schedules import check_steps, get_schedule


def load_teacher_model(path):
    """The Keras model in a `.keras` file, uncompiled, in safe mode unless the user opted out
    (`checkpoint.load_keras_file`); ValueError for another kind of file."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"teacher_model must be a .keras file (Keras 3's format), got {path}")
    return ckpt.load_keras_file(path)


def foreign_teacher(model, schedule, parameterization, noise_input, call_style="list",
                    conditioning="none", num_classes=None, noise_rank=None, reverse_time=False,
                    data_shape=None, data_mean=None, data_variance=None):
    """A `DiffusionModel` around a model trained elsewhere, checked by calling it once.

    Args:
        model: the Keras model (an object; `load_teacher_model` for a file).
        schedule: the schedule it was trained on (`schedules.get_schedule` spec).
        parameterization: what it predicts: "eps", "x", "v" (variance-preserving schedules
            only), "both" or "flow" (the velocity eps - x).
        noise_input, call_style, conditioning, noise_rank, reverse_time: how it is called
            (`networks.ForeignNetwork`).
        num_classes: classes of a model taking labels (conditioning="labels").
        data_shape: shape of one example; None: the model's first input's.
        data_mean, data_variance: per-channel statistics of pixels in [0, 1] when the model was
            trained on standardized data (`DiffusionModel`).

    Returns:
        The DiffusionModel.

    Raises:
        ValueError: one line naming the argument or the mismatch.
    """
    schedule = get_schedule(schedule)
    check_parameterization(parameterization)
    if parameterization == "v" and not schedule.variance_preserving:
        raise ValueError(f"parameterization 'v' is defined here for variance-preserving "
                         f"schedules only; the {schedule.name!r} schedule is not (its models "
                         "predict the velocity: use parameterization 'flow')")
    if (conditioning == "labels") != bool(num_classes):
        raise ValueError("conditioning='labels' and num_classes go together: a model taking "
                         "labels needs num_classes, and num_classes needs conditioning='labels'")
    network = ForeignNetwork(model, schedule, noise_input, call_style=call_style,
                             conditioning=conditioning, noise_rank=noise_rank,
                             reverse_time=reverse_time)
    shape = tuple(data_shape) if data_shape else data_shape_of(model)
    if not shape:
        raise ValueError("the model's input shape is not known before a call: give data_shape")
    z = ops.zeros((2,) + tuple(int(d) for d in shape))
    labels = ops.zeros((2,), "int32") if num_classes else None
    try:
        out = network(z, ops.zeros((2,)), labels, training=False)
    except Exception as e:  # any failure of the user's model on this call convention
        detail = one_line(e, limit=300)
        raise ValueError(f"calling the model as {call_style} [noisy data, {noise_input}"
                         f"{', labels' if num_classes else ''}] failed: {type(e).__name__}: "
                         f"{detail}") from None
    want = tuple(shape[:-1]) + (output_channels(parameterization, shape[-1]),)
    if tuple(out.shape[1:]) != want:
        raise ValueError(f"the model outputs shape {tuple(out.shape[1:])} for data of shape "
                         f"{tuple(shape)}; parameterization {parameterization!r} needs {want}")
    return DiffusionModel(network, shape, parameterization=parameterization,
                          num_classes=num_classes, schedule=schedule, data_mean=data_mean,
                          data_variance=data_variance)


def import_teacher(model_path, teacher_dir, sampling_steps, dataset=None, **conventions):
    """Writes (or finds) the keras-pd teacher run directory of a `.keras` model trained elsewhere.

    Args:
        model_path: the `.keras` file.
        teacher_dir: the run directory to write (WORKDIR/teacher in `apps.distill`).
        sampling_steps: N0, the DDIM steps the teacher samples well with.
        dataset: the data it was trained on (kept in the card for evaluation and for
            distillation on data), or None.
        **conventions: `foreign_teacher`'s arguments after the model.

    Returns:
        The teacher's card.

    Raises:
        ValueError: a bad file or convention, or a teacher directory holding another model;
            nothing is written then.
    """
    sampling_steps = check_steps(sampling_steps, "teacher_steps")
    source = os.path.abspath(model_path)
    if os.path.exists(os.path.join(teacher_dir, ckpt.CARD_NAME)):
        card = ckpt.read_card(teacher_dir)
        if card.get("imported_from") != source or (
                card.get("imported_sha256") != ckpt.file_sha256(source)):
            raise ckpt.CheckpointError(
                f"{teacher_dir} holds a teacher imported from {card.get('imported_from')}, not "
                f"from this version of {source}: use another --workdir")
        return card
    teacher = foreign_teacher(load_teacher_model(model_path), **conventions)
    if dataset is not None:
        from keras_pd.data import load_dataset

        data = load_dataset(dataset)
        if tuple(data.data_shape) != teacher.data_shape:
            raise ValueError(f"dataset {dataset!r} has examples of shape "
                             f"{tuple(data.data_shape)}; the model takes {teacher.data_shape}")
    card = dict(kind="teacher", dataset=dataset, data_shape=list(teacher.data_shape),
                num_classes=teacher.num_classes, preset=None,
                parameterization=teacher.parameterization,
                schedule=teacher.schedule.to_config(), sampling_steps=sampling_steps,
                imported_from=source, imported_sha256=ckpt.file_sha256(source),
                conventions={k: v for k, v in teacher.network.get_config().items()
                             if k in ("noise_input", "call_style", "conditioning", "noise_rank",
                                      "reverse_time")},
                data_mean=teacher.data_mean, data_variance=teacher.data_variance,
                complete=True, keras_pd_trained=False)
    ckpt.check_finite_weights(teacher, source)
    return ckpt.save_model(teacher_dir, teacher, card)


def distill_imported(model_path, workdir, config, teacher_steps, dataset=None, verbose=1,
                     **conventions):
    """`apps.distill --teacher_model`: imports the model as WORKDIR/teacher, then runs the
    cascade on it (`cascade.distill`), resuming where it stopped.

    The cascade's settings are checked before anything is written, the model's conventions
    before the teacher directory is (`import_teacher`).

    Returns:
        `distill`'s list of (steps, student directory).
    """
    from keras_pd.cascade import distill, plan

    plan(config, {"sampling_steps": teacher_steps})
    teacher_dir = os.path.join(workdir, "teacher")
    card = import_teacher(model_path, teacher_dir, teacher_steps, dataset=dataset,
                          **conventions)
    if verbose:
        print(f"teacher: {teacher_dir} (from {card['imported_from']}, "
              f"{card['parameterization']} on the {card['schedule']['name']} schedule)",
              flush=True)
    return distill(teacher_dir, workdir, config, verbose=verbose)
