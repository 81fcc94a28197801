"""Quality vs. sampling steps, like the paper's Figure 4: what `apps.evaluate` calls.

For a workdir holding a teacher and its students, every cell (row, steps) samples the same
starting noise and is scored with the dataset's metric:

- rows: the distilled student, the teacher with DDIM at the same steps, the teacher with the
  ancestral sampler at the best g for that step count, and the teacher at its full step count;
- digits / mnist5k / labelled tfds images: domain-classifier FID against the real data (lower is
  better), plus classifier score and class coverage;
- toy2d: negative mean log-likelihood under the true mixture (lower is better), mode coverage;
- `metric="inception"`: standard FID (Inception pool3, `keras_pd.metrics.inception`) for RGB or
  gray images, when its weights are installed.

Each cell is cached in results.json as soon as it is scored, so a killed evaluation resumes.
"""

import os
import shutil

import numpy as np

from keras_pd import checkpoint as ckpt
from keras_pd.data import load_dataset, toy2d_log_likelihood, toy2d_mode_coverage
from keras_pd.images import save_grid_png
from keras_pd.samplers import sampler_jit_compile

#: Real examples a streamed dataset's metric reference holds at most (the usual 50k of FID).
REFERENCE_LIMIT = 50000
ROWS = ("distilled", "ddim", "ancestral", "teacher_full")
ROW_LABELS = {"distilled": "distilled student (DDIM)", "ddim": "teacher, DDIM",
              "ancestral": "teacher, ancestral (best g)", "teacher_full": "teacher, full steps"}
GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0)
METRICS = ("domain", "inception")


def find_students(workdir):
    """{steps: directory} of the complete students in a workdir."""
    found = {}
    if os.path.isdir(workdir):
        for name in sorted(os.listdir(workdir)):
            path = os.path.join(workdir, name)
            if name.startswith("student_") and os.path.exists(os.path.join(path, ckpt.CARD_NAME)):
                card = ckpt.read_card(path)
                if card.get("complete"):
                    found[int(card["sampling_steps"])] = path
    return found


class Scorer:
    """The dataset's metric: callable(samples) -> dict with the primary value under "metric".

    Args:
        dataset: a loaded `keras_pd.data.Dataset`.
        workdir: where the domain classifier is cached.
        seed: the classifier's training seed.
        metric: "domain" (the dataset's own metric, above) or "inception" (standard FID).
        inception_weights: path of the Inception TorchScript file (None: the default place).
    """

    def __init__(self, dataset, workdir, seed=0, metric="domain", inception_weights=None):
        self.dataset = dataset
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
        self.inception = None
        if metric == "inception":
            from keras_pd.metrics.inception import InceptionFeatures

            if len(dataset.x.shape) != 4:
                raise ValueError(f"metric 'inception' needs images; {dataset.name!r} is not")
            self.inception = InceptionFeatures(inception_weights)  # MetricUnavailable if absent
            self.name = "FID (Inception)"
            self.info = {"metric": "standard FID: Inception pool3, 299x299 bilinear",
                         "reference": f"{dataset.name}: all {len(dataset.x)} real examples"}
            self._reference = None
        elif dataset.name == "toy2d":
            self.name = "negative log-likelihood (nats)"
            self.info = {"metric": "toy2d NLL under the true mixture", "reference": "analytic"}
            self.classifier = None
        else:
            if not dataset.num_classes:
                raise ValueError(f"dataset {dataset.name!r} has no labels for a domain classifier")
            from keras_pd.metrics import train_classifier

            self.classifier = train_classifier(dataset, workdir=workdir, seed=seed)
            self.name = "domain-classifier FID"
            self.info = {"metric": "FID on the domain classifier's penultimate features",
                         "reference": f"{dataset.name}: all {len(dataset.x)} real examples",
                         "classifier_test_accuracy": float(self.classifier.test_accuracy)}

    def __call__(self, samples):
        if self.inception is not None:
            from keras_pd.metrics import fid_from_features

            if self._reference is None:
                self._reference = self.inception(self.dataset.x)
            return {"metric": fid_from_features(self.inception(samples), self._reference)}
        if self.classifier is None:
            coverage, counts = toy2d_mode_coverage(samples)
            return {"metric": float(-toy2d_log_likelihood(samples).mean()),
                    "mode_coverage": float(coverage), "mode_counts": counts.tolist()}
        from keras_pd.metrics import evaluate_samples

        result = evaluate_samples(self.classifier, samples, self.dataset.x)
        result["metric"] = result["fid"]
        return result


def _sample(model, noise, steps, labels, sampler="ddim", gamma=0.0, seed=0, batch=500):
    jit_compile = sampler_jit_compile(None, sampler, len(noise) * steps)  # the whole cell's
    out = []
    for i in range(0, len(noise), batch):
        out.append(model.sample(noise[i:i + batch], steps, sampler=sampler, gamma=gamma,
                                labels=None if labels is None else labels[i:i + batch],
                                seed=seed, jit_compile=jit_compile))
    return np.concatenate(out)


def evaluate(workdir, teacher_dir=None, num_samples=1000, seed=0, gammas=GAMMAS, verbose=1,
             metric="domain", inception_weights=None):
    """Scores every (row, steps) cell and writes results.json, results.md, results.png, grids/.

    Args:
        workdir: holds the students (student_NNNN) and, by default, the teacher (teacher/).
        teacher_dir: the teacher's run directory (default: workdir/teacher).
        num_samples: samples per cell (the same starting noise for every cell).
        seed: seed of that noise and of the ancestral sampler.
        gammas: the ancestral sampler's g values searched per step count.
        verbose: print each cell as it is scored.
        metric: "domain" (domain-classifier FID, or NLL for toy2d) or "inception".
        inception_weights: the Inception TorchScript file for metric="inception".

    Returns:
        The results dict (also in workdir/results.json), plus the paths of the files written:
        "markdown_path" (results.md) and "plot_path" (results.png).
    """
    teacher_dir = teacher_dir or os.path.join(workdir, "teacher")
    teacher, card = ckpt.load_model(teacher_dir)
    full = int(card["sampling_steps"])
    students = find_students(workdir)
    dataset = load_dataset(card["dataset"], seed=card.get("seed", 0),
                           image_size=card.get("image_size")).in_memory(REFERENCE_LIMIT)
    scorer = Scorer(dataset, workdir, seed=seed, metric=metric,
                    inception_weights=inception_weights)
    steps_list = [2 ** k for k in range(full.bit_length()) if 2 ** k <= full]
    path = os.path.join(workdir, "results.json")
    results = ckpt.read_json(path) if os.path.exists(path) else {}
    if (results.get("num_samples"), results.get("seed"), results.get("metric")) != (
            num_samples, seed, scorer.name):
        results = {}
    results.update(dataset=card["dataset"], teacher=os.path.abspath(teacher_dir),
                   teacher_steps=full, num_samples=num_samples, seed=seed, metric=scorer.name,
                   steps=steps_list, **{k: v for k, v in scorer.info.items() if k != "metric"})
    cells = results.setdefault("cells", {})
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((num_samples,) + teacher.data_shape).astype("float32")
    labels = (np.arange(num_samples) % teacher.num_classes).astype("int32") \
        if teacher.num_classes else None
    grids = os.path.join(workdir, "grids")

    def score(key, make_samples):
        if key not in cells:
            samples = make_samples()
            cells[key] = scorer(samples)
            save_grid_png(samples[:64], os.path.join(grids, f"{key}.png"))
            ckpt.write_json(path, results)
            if verbose:
                print(f"  {key}: {scorer.name} = {cells[key]['metric']:.4g}")
        return cells[key]

    score(f"teacher_full_{full}", lambda: _sample(teacher, noise, full, labels))
    for steps in steps_list:
        if steps in students:
            student, _ = ckpt.load_model(students[steps])
            score(f"distilled_{steps}", lambda: _sample(student, noise, steps, labels))
        if steps == full and f"ddim_{steps}" not in cells:  # the same samples as teacher_full
            cells[f"ddim_{steps}"] = cells[f"teacher_full_{full}"]
            grid = os.path.join(grids, f"teacher_full_{full}.png")
            if os.path.exists(grid):
                shutil.copyfile(grid, os.path.join(grids, f"ddim_{steps}.png"))
        score(f"ddim_{steps}", lambda: _sample(teacher, noise, steps, labels))
        for g in gammas:
            score(f"ancestral_{steps}_g{g:g}",
                  lambda: _sample(teacher, noise, steps, labels, "ancestral", g, seed))
    results["table"] = table(results, gammas)
    ckpt.write_json(path, results)
    markdown_path = os.path.join(workdir, "results.md")
    plot_path = os.path.join(workdir, "results.png")
    write_markdown(markdown_path, results)
    plot(plot_path, results)
    return dict(results, markdown_path=markdown_path, plot_path=plot_path)


def table(results, gammas=GAMMAS):
    """{row: {steps: value}} with the best g picked per step count for the ancestral row."""
    cells, full = results["cells"], results["teacher_steps"]
    rows = {row: {} for row in ROWS}
    best_g = {}
    for steps in results["steps"]:
        if f"distilled_{steps}" in cells:
            rows["distilled"][steps] = cells[f"distilled_{steps}"]["metric"]
        rows["ddim"][steps] = cells[f"ddim_{steps}"]["metric"]
        options = {g: cells[f"ancestral_{steps}_g{g:g}"]["metric"] for g in gammas
                   if f"ancestral_{steps}_g{g:g}" in cells}
        if options:
            g = min(options, key=options.get)
            rows["ancestral"][steps], best_g[steps] = options[g], g
        rows["teacher_full"][steps] = cells[f"teacher_full_{full}"]["metric"]
    return {"rows": rows, "best_gamma": best_g}


def write_markdown(path, results):
    """results.md: the metric-vs-steps table with its provenance."""
    tab, steps = results["table"], results["steps"]
    head = "| row | " + " | ".join(str(s) for s in steps) + " |"
    lines = [f"# {results['metric']} vs. sampling steps ({results['dataset']})", "",
             f"Teacher: {results['teacher']} (meant for {results['teacher_steps']} steps). "
             f"{results['num_samples']} samples per cell from the same noise (seed "
             f"{results['seed']}); reference: {results.get('reference', 'n/a')}."
             + (f" Classifier test accuracy {results['classifier_test_accuracy']:.3f}."
                if "classifier_test_accuracy" in results else ""), "",
             head, "|---" * (len(steps) + 1) + "|"]
    for row in ROWS:
        values = tab["rows"][row]
        cells = [f"{values[s]:.3g}" if s in values else "-" for s in steps]
        label = ROW_LABELS[row] if row != "teacher_full" else \
            f"teacher, {results['teacher_steps']} steps"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Best ancestral g per step count: " + ", ".join(
        f"{s}: {g:g}" for s, g in sorted(tab["best_gamma"].items(), key=lambda kv: int(kv[0])))]
    ckpt.atomic_write(path, lambda tmp: open(tmp, "w").write("\n".join(lines) + "\n"))


def plot(path, results):
    """results.png: metric vs. steps on a log2 axis, one line per row (the paper's Figure 4)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot()
    for row in ROWS:
        values = results["table"]["rows"][row]
        if values:
            xs = sorted(int(s) for s in values)
            ax.plot(xs, [values[s] if s in values else values[str(s)] for s in xs],
                    "--" if row == "teacher_full" else "-o", label=ROW_LABELS[row], ms=4)
    ax.set_xscale("log", base=2)
    values = [v for row in ROWS for v in results["table"]["rows"][row].values()]
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(results["metric"])
    ax.set_title(f"{results['dataset']}: quality vs. steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ckpt.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


GUIDANCE_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)


def evaluate_guided(workdir, teacher_dir=None, guided_dir=None, ws=GUIDANCE_WEIGHTS,
                    num_samples=1000, seed=0, verbose=1):
    """Guided sampling quality vs. w: the teacher (two calls per step) at its full steps and
    each guided student (one call per step) at its steps.

    Every cell samples the same noise with labels cycling 0..K-1 and reports the domain-
    classifier FID against all real data and the label accuracy (the classifier's class equals
    the requested label). Cells are cached in guided_results.json; writes guided_results.md.

    Args:
        workdir: holds the guided cascade's students (student_NNNN, taking w).
        teacher_dir: the class-conditional teacher (default: workdir/teacher).
        guided_dir: the stage-one student (default: the workdir's guided_NNNN), also scored.
        ws: the guidance weights.
        num_samples: samples per cell.
        seed: seed of the noise.

    Returns:
        The results dict (also in guided_results.json), plus "markdown_path", the path of
        guided_results.md.
    """
    teacher_dir = teacher_dir or os.path.join(workdir, "teacher")
    teacher, card = ckpt.load_model(teacher_dir)
    if not teacher.guidable:
        raise ValueError(f"{teacher_dir} is not a class-conditional teacher trained with "
                         "label dropout")
    full = int(card["sampling_steps"])
    dataset = load_dataset(card["dataset"], seed=card.get("seed", 0),
                           image_size=card.get("image_size")).in_memory(REFERENCE_LIMIT)
    scorer = Scorer(dataset, workdir, seed=seed)
    models = {f"teacher_{full}": (teacher_dir, full)}
    if guided_dir is None:
        found = sorted(n for n in os.listdir(workdir) if n.startswith("guided_"))
        guided_dir = os.path.join(workdir, found[0]) if found else None
    if guided_dir and os.path.exists(os.path.join(guided_dir, ckpt.CARD_NAME)):
        models[f"guided_{full}"] = (guided_dir, full)
    for steps, path in sorted(find_students(workdir).items(), reverse=True):
        models[f"student_{steps}"] = (path, steps)
    path = os.path.join(workdir, "guided_results.json")
    results = ckpt.read_json(path) if os.path.exists(path) else {}
    if (results.get("num_samples"), results.get("seed")) != (num_samples, seed):
        results = {}
    results.update(dataset=card["dataset"], teacher=os.path.abspath(teacher_dir),
                   num_samples=num_samples, seed=seed, ws=list(ws), metric=scorer.name,
                   rows=list(models), **{k: v for k, v in scorer.info.items() if k != "metric"})
    cells = results.setdefault("cells", {})
    noise = np.random.default_rng(seed).standard_normal(
        (num_samples,) + teacher.data_shape).astype("float32")
    labels = (np.arange(num_samples) % teacher.num_classes).astype("int32")
    for name, (directory, steps) in models.items():
        model = None
        for w in ws:
            key = f"{name}_w{w:g}"
            if key in cells:
                continue
            model = model or ckpt.load_model(directory)[0]
            jit_compile = sampler_jit_compile(None, "ddim", num_samples * steps)
            samples = np.concatenate([
                model.sample(noise[i:i + 500], steps, labels=labels[i:i + 500], guidance=w,
                             jit_compile=jit_compile) for i in range(0, num_samples, 500)])
            cell = scorer(samples)
            predicted = scorer.classifier.probabilities(samples).argmax(-1)
            cell["label_accuracy"] = float(np.mean(predicted == labels))
            cells[key] = cell
            save_grid_png(samples[:64], os.path.join(workdir, "grids", f"{key}.png"))
            ckpt.write_json(path, results)
            if verbose:
                print(f"  {key}: FID {cell['metric']:.3g}, label accuracy "
                      f"{cell['label_accuracy']:.3f}", flush=True)
    ckpt.write_json(path, results)
    markdown_path = os.path.join(workdir, "guided_results.md")
    write_guided_markdown(markdown_path, results)
    return dict(results, markdown_path=markdown_path)


def write_guided_markdown(path, results):
    """guided_results.md: FID and label accuracy per (model, w)."""
    ws = results["ws"]
    lines = [f"# Guided sampling on {results['dataset']}: {results['metric']} / label accuracy "
             "vs. guidance weight w", "",
             f"{results['num_samples']} samples per cell, labels cycling over the classes, the "
             f"same noise (seed {results['seed']}) in every cell; reference: "
             f"{results.get('reference', 'n/a')}. Classifier test accuracy "
             f"{results.get('classifier_test_accuracy', float('nan')):.3f}.", "",
             "| model (steps) | " + " | ".join(f"w = {w:g}" for w in ws) + " |",
             "|---" * (len(ws) + 1) + "|"]
    for name in results["rows"]:
        kind, steps = name.rsplit("_", 1)
        label = {"teacher": "teacher, 2 calls/step", "guided": "w-input student (stage one)",
                 "student": "guided student"}[kind] + f" ({steps})"
        row = [results["cells"].get(f"{name}_w{w:g}") for w in ws]
        lines.append(f"| {label} | " + " | ".join(
            f"{c['metric']:.2f} / {c['label_accuracy']:.2f}" if c else "-" for c in row) + " |")
    ckpt.atomic_write(path, lambda tmp: open(tmp, "w").write("\n".join(lines) + "\n"))
