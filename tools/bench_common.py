"""Helpers shared by the tools/bench_*.py scripts (run as scripts: `tools/` is on sys.path)."""

import json
import os
import statistics
import subprocess
import time


def write_report(path, report):
    """Writes a benchmark report as JSON, atomically (temporary name, then rename); no-op
    when path is empty."""
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(path + ".tmp", path)


def run_worker(argv, env, timeout):
    """Runs a measuring subprocess; returns the JSON of its last `RESULT ` line, or
    {"error": its last 3 lines of output}."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
    return json.loads(lines[-1][len("RESULT "):])


def fit_ms(model, stream, steps, epochs):
    """One `fit` call of 1 + epochs epochs of `steps` steps; returns (median wall ms per step,
    median process-CPU ms per step, every epoch's wall ms per step), the first epoch (warm-up,
    compilation) excluded from the medians."""
    import keras

    wall, cpu = [], []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            keras.ops.convert_to_numpy(self.model.trainable_variables[-1])
            wall.append((time.perf_counter() - self.t0) / steps)
            cpu.append((time.process_time() - self.c0) / steps)

    model.fit(stream, steps_per_epoch=steps, epochs=1 + epochs, verbose=0, callbacks=[Timer()])
    return (1000 * statistics.median(wall[1:]), 1000 * statistics.median(cpu[1:]),
            [1000 * t for t in wall])


def backend_env(backend, threads=None):
    """The environment of a worker subprocess on `backend`: KERAS_BACKEND set, and on torch
    OMP_NUM_THREADS=threads (when given), so that its intra-op pool matches the cores timed."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "torch" and threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def digits_teacher(preset, batch=128, dataset="digits", seed=0, threads=None):
    """The teacher `apps.train` builds for (dataset, preset), seeded and not yet compiled, with
    torch's intra-op threads set to `threads` (when given). Returns (model, data, config)."""
    import keras

    if threads and keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(threads)
    from keras_pd.data import load_dataset
    from keras_pd.training import TrainConfig, build_teacher

    keras.utils.set_random_seed(seed)
    data = load_dataset(dataset, seed=seed)
    cfg = TrainConfig(dataset=dataset, preset=preset, batch_size=batch, seed=seed).resolved()
    return build_teacher(cfg, data), data, cfg


def teacher_optimizer(cfg):
    """The optimizer teacher training uses for config `cfg` (Adam, warmup, EMA, clipping)."""
    from keras_pd.runs import make_optimizer

    return make_optimizer(cfg.learning_rate, cfg.warmup_steps, ema_decay=cfg.ema_decay,
                          grad_clip=cfg.grad_clip)


def batches(data, batch, seed=0):
    """An endless generator of training batches of `data` (the one `fit` gets in training)."""
    from keras_pd.data import BatchStream

    return BatchStream(data.x, None, batch, seed=seed).generator()


def serve_worker(worker, args):
    """The subprocess side of `run_worker`: pins this process to the first `args.cpus` cores,
    runs worker(args) and prints its JSON as the `RESULT ` line `run_worker` reads."""
    os.sched_setaffinity(0, set(range(args.cpus)))
    print("RESULT " + json.dumps(worker(args)), flush=True)
