"""Benchmark of the streamed input path on image folders (docs/performance.md, "Streamed input").

    KERAS_BACKEND=jax python tools/bench_input.py --sizes=10000,200000 --workdir=runs/bench_input \
        --out=runs/bench_input/report.json

For each folder size N (32x32x3 PNG files in 10 class folders, generated once into WORKDIR;
the smaller folders are hard links to the first files of the largest):

* the training process: `python -m apps.train --dataset=folder:PATH --image_size=32` with the
  cifar10 preset (batch 8, 2 updates, a checkpoint after each), run as a child process: its
  peak RSS (`os.wait4`), and the wall time from launch to its first checkpoint (start-up, the
  folder scan, compilation and one update) and between its two checkpoints (one update and one
  checkpoint write);
* the input alone, in this process: batches of 128 (the cifar10 preset's batch) per second from
  `Engine.input` (Grain, `input_workers` threads), warm-up batches excluded, the median of
  three timed runs, for 0 and the default number of threads.

The ratio of the input's examples/s to the training step's (one update of batch 8 between the
checkpoints) says how far ahead of the model the input runs. Every figure comes from this one run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_folder(path, count, seed=0):
    """`count` 32x32x3 PNGs in 10 class folders (smooth random images, so they compress as
    photos do rather than as noise); kept when already there."""
    from PIL import Image

    done = os.path.join(path, ".complete")
    if os.path.exists(done) and int(open(done).read()) >= count:
        return
    rng = np.random.default_rng(seed)
    for c in range(10):
        os.makedirs(os.path.join(path, f"class_{c}"), exist_ok=True)
    coarse = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    for i in range(count):
        image = Image.fromarray(coarse[i]).resize((32, 32), Image.BILINEAR)
        image.save(os.path.join(path, f"class_{i % 10}", f"{i:07d}.png"))
    with open(done, "w") as f:
        f.write(str(count))


def link_subset(source, path, count):
    """A folder of the first `count` images of `source`, as hard links."""
    done = os.path.join(path, ".complete")
    if os.path.exists(done):
        return
    for c in range(10):
        os.makedirs(os.path.join(path, f"class_{c}"), exist_ok=True)
    for i in range(count):
        name = os.path.join(f"class_{i % 10}", f"{i:07d}.png")
        target = os.path.join(path, name)
        if not os.path.exists(target):
            os.link(os.path.join(source, name), target)
    with open(done, "w") as f:
        f.write(str(count))


def train_process(folder, workdir):
    """Peak RSS (MiB) and checkpoint times of a 2-update apps.train run on the folder."""
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "apps.train", f"--dataset=folder:{folder}", "--image_size=32",
           "--preset=cifar10", "--batch_size=8", "--train_steps=2", "--checkpoint_every=1",
           "--sample_every=0", "--warmup_steps=1", f"--workdir={workdir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    seen, times = set(), {}
    checkpoints = os.path.join(workdir, "checkpoints")
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps it, keeping its rusage
        if os.path.isdir(checkpoints):
            for name in os.listdir(checkpoints):
                if name.endswith(".json") and name not in seen:
                    seen.add(name)
                    times[name] = time.perf_counter() - t0
        if pid:
            break
        time.sleep(0.05)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(proc.stderr.read().decode()[-2000:])
    marks = sorted(times.values())
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "first_checkpoint_s": round(marks[0], 2) if marks else None,
            "second_update_s": round(marks[1] - marks[0], 2) if len(marks) > 1 else None,
            "wall_s": round(time.perf_counter() - t0, 2)}


def input_rate(folder, workers, batches=60, warmup=5, repeats=3, batch_size=128):
    """Batches per second from `Engine.input` on the folder (median of `repeats`)."""
    from keras_pd import distribute
    from keras_pd.data import BatchStream, load_dataset

    ds = load_dataset(f"folder:{folder}", image_size=32)
    engine = distribute.setup("none")
    rates = []
    for r in range(repeats):
        stream = BatchStream(ds.source(labels=False), None, batch_size, seed=r)
        it = iter(engine.input(stream, workers=workers))
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        rates.append(batches / (time.perf_counter() - t0))
    return round(statistics.median(rates), 2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,200000")
    p.add_argument("--workdir", default="runs/bench_input")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import keras

    from keras_pd.distribute import input_workers
    from keras_pd.sources import FolderSource

    sizes = sorted(int(s) for s in args.sizes.split(","))
    largest = os.path.join(args.workdir, f"images_{sizes[-1]}")
    t0 = time.perf_counter()
    make_folder(largest, sizes[-1])
    report = {"backend": keras.backend.backend(), "cpus": os.cpu_count(),
              "load_avg_start": os.getloadavg(), "folder_generation_s":
              round(time.perf_counter() - t0, 1), "sizes": {}}
    for n in sizes:
        folder = largest if n == sizes[-1] else os.path.join(args.workdir, f"images_{n}")
        if folder != largest:
            link_subset(largest, folder, n)
        t = time.perf_counter()
        FolderSource(folder, 32)
        row = {"scan_s": round(time.perf_counter() - t, 3)}
        row.update(train_process(folder, os.path.join(args.workdir, f"train_{n}")))
        row["input_batches_per_s"] = {str(w): input_rate(folder, w)
                                      for w in (0, input_workers(FolderSource(folder, 32)))}
        report["sizes"][str(n)] = row
        print(n, json.dumps(row), flush=True)
    small, big = (report["sizes"][str(s)] for s in (sizes[0], sizes[-1]))
    report["peak_rss_ratio"] = round(big["peak_rss_mib"] / small["peak_rss_mib"], 3)
    best = max(big["input_batches_per_s"].values()) * 128
    if big["second_update_s"]:
        report["input_vs_training_examples_per_s"] = round(best / (8 / big["second_update_s"]), 1)
    report["load_avg_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in report.items() if k != "sizes"}))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
