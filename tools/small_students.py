"""Students smaller than their teacher, measured on digits (docs/results.md, "Smaller students").

    KERAS_BACKEND=jax python tools/small_students.py --seed=0 --workdir=runs/small \
        --variants=same,half=digits_mlp_half:8000,quarter=digits_mlp_quarter:8000

One `digits_mlp` teacher (apps.train, the dataset's defaults), then for each variant
NAME[=PRESET:INITIAL_UPDATES[:INITIAL_LEARNING_RATE]] the cascade to 1 step (apps.distill, its defaults: 20,000 teacher
samples, 2,000 updates a round, 4,000 for the rounds to 2 and 1 step), the project's metric
(apps.evaluate: domain-classifier FID, 1,000 samples, noise seed = the seed) and the LiteRT
export of every student of 8 steps or fewer with its batch-1 latency under the bare runtime
(`pipeline.export_students`). "same" is the ordinary cascade (students copy the teacher).
`--train_flags`, `--distill_flags` and `--evaluate_flags` pass more flags to the three apps (the
convolutional cascade: `--train_flags="--preset=digits --train_steps=6000"`). Writes
WORKDIR/sSEED/summary.json and, with --plot, a quality-against-latency figure. Every
stage resumes when the same command is run again.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(cmd, env):
    print("$", " ".join("python" if c == sys.executable else c for c in cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return round(time.time() - t0, 1)


def parse_variants(text):
    out = []
    for item in text.split(","):
        name, _, spec = item.partition("=")
        preset, _, rest = spec.partition(":")
        updates, _, rate = rest.partition(":")
        out.append((name, preset or None, int(updates) if updates else None,
                    float(rate) if rate else None))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/small")
    p.add_argument("--variants", default="same,half=digits_mlp_half:8000,"
                                         "quarter=digits_mlp_quarter:8000")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--plot", default=None, help="write the quality/latency figure here")
    p.add_argument("--remeasure", type=int, default=0,
                   help="rounds of interleaved latency measurement of every export (0: none)")
    p.add_argument("--train_flags", default="", help="more apps.train flags (the teacher)")
    p.add_argument("--distill_flags", default="", help="more apps.distill flags (every variant)")
    p.add_argument("--evaluate_flags", default="", help="more apps.evaluate flags")
    p.add_argument("--no_export", action="store_true", help="no LiteRT exports or latencies")
    args = p.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    base = os.path.join(args.workdir, f"s{args.seed}")
    teacher = os.path.join(base, "teacher")
    summary_path = os.path.join(base, "summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    if "teacher_s" not in summary:
        summary["teacher_s"] = run([sys.executable, "-m", "apps.train", "--dataset=digits",
                                    f"--seed={args.seed}", f"--workdir={teacher}",
                                    *args.train_flags.split()], env)
        summary["train_flags"] = args.train_flags
    from keras_pd import checkpoint as ckpt
    from keras_pd.pipeline import export_students

    for name, preset, updates, rate in parse_variants(args.variants):
        if name in summary.get("variants", {}):
            continue
        out = os.path.join(base, name)
        flags = [f"--student_preset={preset}"] if preset else []
        flags += [f"--initial_updates={updates}"] if updates else []
        flags += [f"--initial_learning_rate={rate}"] if rate else []
        row = {"preset": preset or ckpt.read_card(teacher)["preset"], "initial_updates": updates,
               "initial_learning_rate": rate, "distill_flags": args.distill_flags,
               "evaluate_flags": args.evaluate_flags}
        row["distill_s"] = run([sys.executable, "-m", "apps.distill", f"--teacher={teacher}",
                                f"--workdir={out}", "--end_steps=1", f"--seed={args.seed}",
                                *flags, *args.distill_flags.split()], env)
        row["evaluate_s"] = run([sys.executable, "-m", "apps.evaluate", f"--workdir={out}",
                                 f"--teacher={teacher}", f"--num_samples={args.num_samples}",
                                 f"--seed={args.seed}", *args.evaluate_flags.split()], env)
        results = json.load(open(os.path.join(out, "results.json")))
        row["table"] = results["table"]["rows"]
        row["parameters"] = ckpt.read_card(os.path.join(out, "student_0001"))["parameters"]
        row["exports"] = [] if args.no_export else export_students(out, 8, verbose=0)
        summary.setdefault("variants", {})[name] = row
        with open(summary_path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(summary_path + ".tmp", summary_path)
        print(name, json.dumps({k: row[k] for k in ("parameters", "distill_s")}), flush=True)
    if args.remeasure:
        remeasure(summary, base, args.remeasure)
        with open(summary_path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(summary_path + ".tmp", summary_path)
    if args.plot:
        plot(summary, args.plot, args.seed)


def remeasure(summary, base, rounds):
    """Every exported student's batch-1 latency again, the files interleaved round by round
    (1 thread, 200 calls a round), the median over rounds: one run under one load, so sizes
    compare fairly on a shared machine."""
    import statistics

    from keras_pd.export import measure_latency

    files = [(name, e) for name, row in summary["variants"].items()
             for e in row["exports"] if isinstance(row["exports"], list)]
    times = {id(e): [] for _, e in files}
    for _ in range(rounds):
        for name, e in files:
            path = os.path.join(base, name, e["path"])
            times[id(e)].append(measure_latency(path, runs=200, threads=1)["median_ms"])
    for _, e in files:
        e["interleaved_median_ms"] = round(statistics.median(times[id(e)]), 4)
        e["interleaved_rounds"] = rounds
        e["interleaved_threads"] = 1


def plot(summary, path, seed):
    """FID against batch-1 latency, one line per student size, a point per step count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in summary["variants"].items():
        points = []
        for e in row["exports"] if isinstance(row["exports"], list) else []:
            fid = row["table"]["distilled"].get(str(e["steps"]))
            if fid is not None:
                points.append((e.get("interleaved_median_ms", e["median_ms"]), fid,
                               e["steps"]))
        points.sort()
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-",
                    label=f"{name} ({row['parameters'] / 1e6:.2f}M)")
            for x, y, s in points:
                ax.annotate(str(s), (x, y), textcoords="offset points", xytext=(3, 3),
                            fontsize=7)
    ax.set_xlabel("LiteRT latency per sample, batch 1, 1 thread (ms)")
    ax.set_ylabel("domain-classifier FID (1,000 samples)")
    ax.set_yscale("log")
    ax.set_title(f"digits students by size, seed {seed} (labels: steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    os.replace(path + ".tmp.png", path)


if __name__ == "__main__":
    main()
