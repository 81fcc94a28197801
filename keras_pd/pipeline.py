"""The main job: data -> teacher -> students down to 1 step -> evaluation -> export -> report.

Every stage resumes: rerunning the same command picks up inside whichever stage was
interrupted (training and each distillation round are step-granular; evaluation caches cells).
"""

import dataclasses
import json
import os
import time

from keras_pd import checkpoint as ckpt
from keras_pd.cascade import FINAL_ROUNDS_FACTOR, DistillConfig, distill
from keras_pd.evaluation import evaluate, evaluate_guided, find_students
from keras_pd.training import TrainConfig, train


_DISTILL = DistillConfig()


@dataclasses.dataclass
class PipelineConfig:
    """Sizes of the main job; None takes the dataset's training defaults.

    Attributes:
        dataset: training data.
        preset: the teacher's network preset (None: the dataset's default).
        image_size: folder:PATH datasets: the square every image is resized and cropped to.
        seed: seed of every stage.
        train_steps: teacher updates.
        teacher_steps: DDIM steps the teacher is meant for (the cascade's start).
        end_steps: the last student's steps.
        updates_per_round: distillation updates per round.
        final_rounds_factor: extra updates for the rounds to 2 and 1 steps.
        distill_learning_rate: each round's initial learning rate.
        distill_data: what the students train on (`DistillConfig.distill_data`).
        teacher_samples: how many teacher samples for "teacher" and "mix".
        num_samples: samples per evaluation cell.
        checkpoint_every: updates between checkpoints, in every stage.
        export_max_steps: students with at most this many steps are exported (LiteRT, or ONNX
            on torch) to workdir/exports and their latency measured; 0 exports none.
        guided: the guided job instead: a class-conditional teacher trained with label dropout,
            guided distillation (a w-input student, then the cascade), guided evaluation.
        label_dropout: the guided teacher's null-label probability.
        guidance_max: guided distillation trains w ~ U[0, guidance_max].
        guided_updates: updates of the w-input stage.
    """

    dataset: str = "digits"
    preset: str | None = None
    image_size: int | None = None
    seed: int = 0
    train_steps: int | None = None
    teacher_steps: int | None = None
    end_steps: int = 1
    updates_per_round: int = 2000
    final_rounds_factor: int = FINAL_ROUNDS_FACTOR
    distill_learning_rate: float = 3e-4
    distill_data: str = _DISTILL.distill_data
    teacher_samples: int = _DISTILL.teacher_samples
    num_samples: int = 1000
    checkpoint_every: int = 1000
    batch_size: int | None = None
    export_max_steps: int = 8
    guided: bool = False
    label_dropout: float = 0.1
    guidance_max: float = 4.0
    guided_updates: int = 4000


REPORT_NAME = "report.md"

QUICK = dict(train_steps=200, teacher_steps=8, updates_per_round=20, num_samples=200,
             checkpoint_every=100, guided_updates=20, teacher_samples=512)


def default_workdir(config):
    """runs/DATASET (':' as '_'), with a "_guided" suffix for the guided job."""
    return f"runs/{config.dataset.replace(':', '_')}" + ("_guided" if config.guided else "")


def run_pipeline(workdir, config=None, verbose=1):
    """Runs (or resumes) the whole job in `workdir`.

    Writes workdir/teacher, workdir/student_NNNN, results.{md,json,png}, grids/ and report.md.
    A second pipeline on the same workdir is refused (a lock) while this one runs.

    Returns:
        The evaluation results (`evaluation.evaluate`, or `evaluate_guided` for the guided
        job), plus "report_path", the path of report.md.
    """
    config = config or PipelineConfig()
    _train_config(config).resolved()  # a bad dataset or preset fails before the workdir exists
    with ckpt.workdir_lock(workdir):
        return _run_pipeline(workdir, config, verbose)


def _train_config(cfg):
    """The teacher's TrainConfig for a PipelineConfig."""
    return TrainConfig(dataset=cfg.dataset, preset=cfg.preset, image_size=cfg.image_size,
                       seed=cfg.seed,
                       train_steps=cfg.train_steps, sampling_steps=cfg.teacher_steps,
                       batch_size=cfg.batch_size, checkpoint_every=cfg.checkpoint_every,
                       sample_every=10 * cfg.checkpoint_every, class_conditional=cfg.guided,
                       label_dropout=cfg.label_dropout if cfg.guided else 0.0)


def distill_config(cfg):
    """The cascade's DistillConfig for a PipelineConfig."""
    return DistillConfig(end_steps=cfg.end_steps, updates_per_round=cfg.updates_per_round,
                         final_rounds_factor=cfg.final_rounds_factor,
                         learning_rate=cfg.distill_learning_rate, seed=cfg.seed,
                         distill_data=cfg.distill_data, teacher_samples=cfg.teacher_samples,
                         batch_size=cfg.batch_size or _train_config(cfg).resolved().batch_size,
                         checkpoint_every=min(cfg.checkpoint_every, cfg.updates_per_round),
                         guided=cfg.guided, guidance_max=cfg.guidance_max,
                         guided_updates=cfg.guided_updates)


def _run_pipeline(workdir, cfg, verbose):
    timings_path = os.path.join(workdir, "timings.json")
    timings = ckpt.read_json(timings_path) if os.path.exists(timings_path) else {}

    def stage(name, fn):
        if verbose:
            print(f"== {name}", flush=True)
        t0 = time.time()
        out = fn()
        timings[name] = round(timings.get(name, 0.0) + time.time() - t0, 1)
        ckpt.write_json(timings_path, timings)
        return out

    teacher_dir = os.path.join(workdir, "teacher")
    train_cfg = _train_config(cfg)
    stage("train teacher", lambda: train(train_cfg, teacher_dir, verbose=2 if verbose else 0))
    distill_cfg = distill_config(cfg)
    stage("distill", lambda: distill(teacher_dir, workdir, distill_cfg,
                                     verbose=2 if verbose else 0))
    if cfg.guided:
        results = stage("evaluate", lambda: evaluate_guided(
            workdir, teacher_dir, num_samples=cfg.num_samples, seed=cfg.seed, verbose=verbose))
    else:
        results = stage("evaluate", lambda: evaluate(workdir, teacher_dir, cfg.num_samples,
                                                     cfg.seed, verbose=verbose))
    exports = stage("export", lambda: export_students(workdir, cfg.export_max_steps, verbose))
    report_path = (write_guided_report if cfg.guided else write_report)(
        workdir, cfg, results, timings, exports)
    return dict(results, report_path=report_path)


def export_students(workdir, max_steps=8, verbose=1):
    """Exports each student with <= max_steps steps (float32, batch 1) to workdir/exports.

    LiteRT on TensorFlow and JAX, ONNX on torch (when installed); a file already exported is
    kept (resume). Each file's latency is measured under its bare runtime, 2 threads.

    Returns:
        A list of {"steps", "path", "bytes", "median_ms", "p10_ms", "p90_ms"}, or a string saying
        why nothing was exported.
    """
    from keras_pd import export

    fmt, reason = export.runtime_format()
    if not max_steps:
        return "export_max_steps=0"
    if fmt is None:
        if verbose:
            print(f"not exported: {reason}", flush=True)
        return reason
    rows = []
    for steps, student in sorted(find_students(workdir).items()):
        if steps > max_steps:
            continue
        path = os.path.join(workdir, "exports",
                            f"student_{steps:04d}.{'tflite' if fmt == 'litert' else 'onnx'}")
        meta_path = export.metadata_path(path)
        if not (os.path.exists(path) and os.path.exists(meta_path)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            export.export_sampler(student, path, steps=steps, format=fmt)
        meta = ckpt.read_json(meta_path)
        latency = export.measure_latency(path)
        if verbose:
            print(f"exported {path}: {meta['bytes'] / 1e6:.2f} MB, "
                  f"{latency['median_ms']:.2f} ms per sample", flush=True)
        rows.append(dict(steps=steps, path=os.path.relpath(path, workdir), bytes=meta["bytes"],
                         **latency))
    return rows


def targets(results, workdir):
    """Issue 5's quality and cost targets, each with its measured ratio."""
    rows = results["table"]["rows"]
    get = lambda row, s: rows[row].get(s, rows[row].get(str(s)))  # noqa: E731
    full = get("teacher_full", 1)
    out = []
    if "FID" in results["metric"] and get("distilled", 4) is not None:
        out.append(("distilled 4-step <= 1.25 x teacher full", get("distilled", 4) / full, 1.25))
        out.append(("teacher DDIM 4-step >= 3 x distilled 4-step",
                    get("ddim", 4) / get("distilled", 4), 3.0))
    if "FID" in results["metric"] and get("distilled", 1) is not None:
        out.append(("distilled 1-step <= 4 x teacher full", get("distilled", 1) / full, 4.0))
    teacher = ckpt.read_card(os.path.join(workdir, "teacher"))
    updates = sum(ckpt.read_card(p)["updates"] for s, p in find_students(workdir).items() if s >= 4)
    out.append(("student updates to 4 steps <= teacher updates",
                updates / teacher["steps_trained"], 1.0))
    return [(name, value, bound, value >= bound if ">=" in name else value <= bound)
            for name, value, bound in out]


def guided_targets(results):
    """Issue 10's target per w: the 4-step guided student's FID within 1.25 x the teacher's,
    and its label accuracy against the teacher's."""
    cells, out = results["cells"], []
    teacher = next(r for r in results["rows"] if r.startswith("teacher_"))
    for w in results["ws"]:
        t, s = cells.get(f"{teacher}_w{w:g}"), cells.get(f"student_4_w{w:g}")
        if t and s:
            out.append((w, s["metric"] / t["metric"], s["label_accuracy"], t["label_accuracy"]))
    return out


def write_guided_report(workdir, cfg, results, timings, exports=None):
    """report.md of the guided job: the guided table, the 4-step targets, exports, timings.

    `results` is `evaluate_guided`'s; returns the path of report.md.
    """
    lines = [_read(results["markdown_path"]), "## 4-step targets", "",
             "| w | student FID / teacher FID (<= 1.25) | student label acc. | teacher label acc. |",
             "|---|---|---|---|"]
    lines += [f"| {w:g} | {ratio:.2f} ({'met' if ratio <= 1.25 else 'missed'}) | {acc:.3f} | "
              f"{tacc:.3f} |" for w, ratio, acc, tacc in guided_targets(results)]
    return _write_tail(workdir, cfg, lines, timings, exports, "")


def write_report(workdir, cfg, results, timings, exports=None):
    """report.md: the results table, the targets, the exported students, timings, provenance.

    `results` is `evaluate`'s; returns the path of report.md.
    """
    lines = [_read(results["markdown_path"]), "## Targets", "",
             "| target | measured | bound | met |", "|---|---|---|---|"]
    for name, value, bound, ok in targets(results, workdir):
        lines.append(f"| {name} | {value:.3g} | {bound:g} | {'yes' if ok else 'NO'} |")
    figure = os.path.relpath(results["plot_path"], workdir)
    return _write_tail(workdir, cfg, lines, timings, exports, f"![quality vs steps]({figure})")


def _read(path):
    with open(path) as f:
        return f.read()


def _write_tail(workdir, cfg, lines, timings, exports, figure):
    """Appends the exported files, the wall times and the provenance; writes report.md.

    Returns:
        The path of report.md.
    """
    import keras

    if exports is not None:
        lines += ["", "## Exported students", ""]
        if isinstance(exports, str):
            lines.append(f"None: {exports}.")
        else:
            lines += ["Float32, batch 1; latency per sample under the bare runtime, 2 threads, "
                      "median (p10-p90) of 50 calls.", "",
                      "| steps | file | size | latency |", "|---|---|---|---|"]
            lines += [f"| {r['steps']} | `{r['path']}` | {r['bytes'] / 1e6:.2f} MB | "
                      f"{r['median_ms']:.2f} ms ({r['p10_ms']:.2f}-{r['p90_ms']:.2f}) |"
                      for r in exports]
    total = sum(timings.values())
    lines += ["", "## Wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()] + [f"| total | {total:.0f} |"]
    lines += ["", f"Backend {keras.backend.backend()}, keras {keras.__version__}; config "
              f"`{json.dumps(dataclasses.asdict(cfg))}`."] + (["", figure] if figure else [])
    path = os.path.join(workdir, REPORT_NAME)
    ckpt.atomic_write(path, lambda tmp: open(tmp, "w").write("\n".join(lines) + "\n"))
    return path
