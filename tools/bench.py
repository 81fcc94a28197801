"""Benchmark of keras-pd on the current Keras backend: training, distillation and sampling speed.

Usage (one backend per process; the backend comes from KERAS_BACKEND):

    KERAS_BACKEND=jax python tools/bench.py --presets=digits_mlp,digits --out=bench_jax.json
    KERAS_BACKEND=jax python tools/bench.py --presets=cifar10 --out=bench_jax_cifar10.json

What it measures (warm-up excluded, the MEDIAN of several repeats):

* this machine's float32 matmul peak: NumPy n x n @ n x n (GFLOP/s), at the start and the end of
  the run (the machine may be shared), and the same matmul through `keras.ops` on this backend;
* per preset: forward FLOPs per example, counted analytically from the built network's layers
  (Conv2D 2*Ho*Wo*k*k*Cin*Cout, Dense 2*in*out per position, attention 2*2*L^2*C; elementwise
  work ignored), and training FLOPs per example (3x forward);
* teacher training: `DiffusionModel.fit` on a `BatchStream` generator through the real code path
  (`build_teacher`, `make_optimizer` with the dataset's defaults: warmup, EMA, clipping); one
  `fit` call runs a warm-up epoch (which compiles the step), then `--repeats` timed epochs of
  `steps_per_epoch` steps; ms/step, examples/s, achieved GFLOP/s and model-FLOP utilisation
  (MFU) against the better of the start and end NumPy peaks;
* one distillation update (`DistillationModel`, frozen teacher, student copy, same batch size)
  and its cost relative to one teacher update (ideal 5/3: two teacher forwards plus the
  student's forward and backward against the teacher's forward and backward);
* sampling: samples/s of `DiffusionModel.sample` for 1, 4 and 64 DDIM steps (first call, which
  compiles, reported separately), and the per-call overhead ratio
  time(N steps) / (N * time(1 step)) for the largest N: ~1 when the sampling loop adds nothing to
  the network calls, below 1 when a fixed per-call cost dominates the 1-step sampler;
* peak and current RSS after each phase, and the process's CPU seconds per wall second during
  the timed epochs (at most the core count; lower when other jobs hold the cores).

The cifar10 preset (60M parameters) trains on synthetic 32x32x3 data (no download), with batch 8,
single-step epochs and a small sampling batch; it takes minutes on a CPU. Numbers on a shared
machine are noisy: the load average at the start and end is recorded with them. `--threads=1`
limits the backend's intra-op threads (on an oversubscribed machine torch's 2 OpenMP threads can
be many times slower than 1). The JSON is rewritten after each phase, so a killed run keeps what
it measured.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_flops import count_forward_flops  # noqa: E402
from bench_machine import (backend_matmul, backend_versions, cpu_model, device_name,  # noqa: E402
                           numpy_matmul_peak, rss_mb, set_threads)

# Per-preset settings: the dataset (digits is built in; cifar10 uses synthetic data of the right
# shape), the training batch size, timed steps per epoch, and the sampling batch and step counts.
PRESET_SETTINGS = {
    "digits_mlp": dict(dataset="digits", batch_size=128, train_steps=40, distill_steps=40,
                       sample_batch=64, sample_steps=(1, 4, 64)),
    "digits": dict(dataset="digits", batch_size=128, train_steps=8, distill_steps=6,
                   sample_batch=64, sample_steps=(1, 4, 64)),
    "mnist": dict(dataset="synthetic:28x28x1", batch_size=64, train_steps=4, distill_steps=3,
                  sample_batch=16, sample_steps=(1, 4, 64)),
    "toy2d": dict(dataset="toy2d", batch_size=256, train_steps=40, distill_steps=40,
                  sample_batch=256, sample_steps=(1, 4, 64)),
    "cifar10": dict(dataset="synthetic:32x32x3", batch_size=8, train_steps=1, distill_steps=1,
                    sample_batch=2, sample_steps=(1, 4)),
}


# ---------------------------------------------------------------------------
# Timing.


def time_calls(fn, repeats, min_time=0.25):
    """Times fn(): the first call (compilation) alone, a second warm-up call, then `repeats`
    timings of `inner` back-to-back calls (inner chosen so a timing lasts >= min_time).

    Returns:
        dict: first_call_s, median_s (per call), all_s (per call), inner.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    estimate = time.perf_counter() - t0
    inner = max(1, math.ceil(min_time / max(estimate, 1e-6)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return {"first_call_s": first, "median_s": statistics.median(times), "all_s": times,
            "inner": inner}


def _epoch_timer():
    import keras
    from keras import ops

    class EpochTimer(keras.callbacks.Callback):
        """Wall time of each epoch, blocking on the weights (JAX dispatches asynchronously)."""

        def __init__(self):
            super().__init__()
            self.times, self.cpu_times, self.losses = [], [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            ops.convert_to_numpy(self.model.trainable_variables[-1])
            loss = float(logs["loss"]) if logs and "loss" in logs else float("nan")
            self.times.append(time.perf_counter() - self._t0)
            self.cpu_times.append(time.process_time() - self._c0)
            self.losses.append(loss)

    return EpochTimer()


def time_fit(model, stream, steps, repeats, batch_size):
    """Times one `model.fit` on a generator: a warm-up epoch (compiles), then `repeats` epochs.

    A single fit call, as the training apps make: on JAX a second `fit` of a model whose
    optimizer keeps an EMA fails in Keras 3.15 ("Attempt to donate the same buffer twice").
    """
    timer = _epoch_timer()
    model.fit(stream.generator(), steps_per_epoch=steps, epochs=1 + repeats, verbose=0,
              shuffle=False, callbacks=[timer])
    per_step = [t / steps for t in timer.times[1:]]
    ms = 1000.0 * statistics.median(per_step)
    return {"warmup_epoch_s": timer.times[0], "steps_per_epoch": steps, "epochs": repeats,
            "ms_per_step": ms, "ms_per_step_all": [round(1000.0 * t, 2) for t in per_step],
            "examples_per_s": batch_size / (ms / 1000.0), "final_loss": timer.losses[-1],
            # CPU seconds of this process per wall second over the timed epochs: at most the
            # core count; lower when the machine's other jobs take the cores.
            "cpu_per_wall": sum(timer.cpu_times[1:]) / sum(timer.times[1:]),
            "jit_compile": getattr(model, "jit_compile", None)}


# ---------------------------------------------------------------------------
# One preset.


def load_data(name, seed):
    from keras_pd.data import Dataset, load_dataset

    if name.startswith("synthetic:"):
        h, w, c = (int(d) for d in name.split(":", 1)[1].split("x"))
        rng = np.random.default_rng(seed)
        x = rng.uniform(-1.0, 1.0, size=(256, h, w, c)).astype(np.float32)
        return Dataset(name=name, x=x, y=None, num_classes=None, flip=c == 3)
    return load_dataset(name, seed=seed)


def bench_preset(preset, args, peak_gflops, log, save=lambda result: None):
    import keras

    from keras_pd.data import BatchStream
    from keras_pd.cascade import DistillConfig
    from keras_pd.distillation import DistillationModel, copy_model
    from keras_pd.distribute import Engine
    from keras_pd.runs import make_optimizer
    from keras_pd.training import TrainConfig, build_teacher

    settings = dict(PRESET_SETTINGS.get(preset, PRESET_SETTINGS["digits"]))
    for key in ("batch_size", "train_steps", "distill_steps", "sample_batch"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    if args.sample_steps:
        settings["sample_steps"] = tuple(int(s) for s in args.sample_steps.split(","))
    batch = settings["batch_size"]
    result = {"settings": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in settings.items()}}
    rss = {}

    keras.utils.set_random_seed(args.seed)
    dataset = load_data(settings["dataset"], args.seed)
    # Synthetic data take the training defaults (learning rate, EMA, ...) of the real dataset.
    defaults_from = {"synthetic:32x32x3": "tfds:cifar10", "synthetic:28x28x1": "mnist5k"}
    cfg = TrainConfig(dataset=defaults_from.get(settings["dataset"], dataset.name),
                      preset=preset, batch_size=batch, seed=args.seed).resolved()
    t0 = time.perf_counter()
    model = build_teacher(cfg, dataset)
    result["build_s"] = time.perf_counter() - t0
    flops = count_forward_flops(model.network)
    fwd = flops["total"]
    result.update(dataset=dataset.name, data_shape=list(dataset.data_shape),
                  params=int(model.count_params()), fwd_flops_per_example=fwd,
                  fwd_flops_breakdown={k: flops[k] for k in ("conv", "dense", "attention")},
                  uncounted_layers=flops["uncounted"], train_flops_per_example=3 * fwd,
                  distill_flops_per_example=5 * fwd)
    rss["built"] = rss_mb()
    log(f"[{preset}] {result['params'] / 1e6:.2f}M params, {fwd / 1e6:.2f} MFLOP/example "
        f"forward, batch {batch}")

    # Teacher training through the real path.
    model.compile(optimizer=make_optimizer(cfg.learning_rate, cfg.warmup_steps,
                                           ema_decay=cfg.ema_decay,
                                           weight_decay=cfg.weight_decay,
                                           grad_clip=cfg.grad_clip),
                  jit_compile=Engine("none").jit_compile())  # as training runs compile it
    stream = BatchStream(dataset.x, None, batch, seed=args.seed)
    train = time_fit(model, stream, settings["train_steps"], args.repeats, batch)
    train["achieved_gflops"] = train["examples_per_s"] * 3 * fwd / 1e9
    train["mfu"] = train["achieved_gflops"] / peak_gflops
    result["train"] = train
    rss["train"] = rss_mb()
    result["rss_mb"] = rss
    save(result)
    log(f"[{preset}] train: {train['ms_per_step']:.1f} ms/step, "
        f"{train['examples_per_s']:.1f} examples/s, MFU {100 * train['mfu']:.2f}% of the start "
        f"peak "
        f"(warm-up epoch {train['warmup_epoch_s']:.1f} s, model build {result['build_s']:.1f} s, "
        f"CPU/wall {train['cpu_per_wall']:.2f})")

    # Sampling (the trained-for-a-few-steps teacher; speed does not depend on the weights).
    if not args.no_sampling:
        rng = np.random.default_rng(args.seed)
        noise = rng.standard_normal((settings["sample_batch"],) + dataset.data_shape)
        noise = noise.astype(np.float32)
        sampling = {"batch": settings["sample_batch"], "steps": {}}
        for n in settings["sample_steps"]:
            timing = time_calls(lambda n=n: model.sample(noise, n), args.repeats,
                                min_time=args.min_time)
            timing["samples_per_s"] = settings["sample_batch"] / timing["median_s"]
            timing["network_calls_per_s"] = n * timing["samples_per_s"]
            timing["achieved_gflops"] = timing["network_calls_per_s"] * fwd / 1e9
            sampling["steps"][str(n)] = timing
            log(f"[{preset}] sample {n:3d} steps: {timing['samples_per_s']:.1f} samples/s "
                f"({1000 * timing['median_s']:.1f} ms/call, first call "
                f"{timing['first_call_s']:.1f} s)")
        steps = sorted(int(k) for k in sampling["steps"])
        if 1 in steps and steps[-1] > 1:
            big = steps[-1]
            one = sampling["steps"]["1"]["median_s"]
            sampling["overhead_ratio_steps"] = big
            sampling["overhead_ratio"] = sampling["steps"][str(big)]["median_s"] / (big * one)
        result["sampling"] = sampling
        rss["sampling"] = rss_mb()
        save(result)

    # Distillation: frozen teacher, student copy without dropout, the cascade's optimizer.
    if not args.no_distill:
        dcfg = DistillConfig()
        student = copy_model(model, dropout=0.0)
        distiller = DistillationModel(model, student, args.student_steps, dcfg.weighting,
                                      seed=args.seed)
        distiller.compile(optimizer=make_optimizer(dcfg.learning_rate,
                                                   decay_steps=dcfg.updates_per_round,
                                                   grad_clip=dcfg.grad_clip))
        stream = BatchStream(dataset.x, None, batch, seed=args.seed + 1000)
        distill = time_fit(distiller, stream, settings["distill_steps"], args.repeats, batch)
        distill["achieved_gflops"] = distill["examples_per_s"] * 5 * fwd / 1e9
        distill["mfu"] = distill["achieved_gflops"] / peak_gflops
        distill["ratio_to_teacher"] = distill["ms_per_step"] / train["ms_per_step"]
        distill["student_steps"] = args.student_steps
        result["distill"] = distill
        rss["distill"] = rss_mb()
        log(f"[{preset}] distill: {distill['ms_per_step']:.1f} ms/step, ratio to teacher "
            f"{distill['ratio_to_teacher']:.2f} (ideal 1.67)")

    save(result)
    return result


# ---------------------------------------------------------------------------
# Report.


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def finalize_mfu(report):
    """Recomputes every MFU against the better of the start and end NumPy peaks.

    On a shared machine a peak measured while other jobs run is too low (MFU could exceed 1);
    the best of the two medians is the closer estimate of the uncontended peak.
    """
    peaks = report["matmul_peak"]
    if report.get("mfu_peak") == "backend":  # an accelerator: the chip's measured peak
        peak = peaks["backend_ops"]["gflops"]
    else:
        peak = max(peaks["numpy_start"]["gflops"], peaks.get("numpy_end", {}).get("gflops", 0.0))
    peaks["used_for_mfu_gflops"] = peak
    for result in report["presets"].values():
        for phase in ("train", "distill"):
            if phase in result:
                result[phase]["mfu"] = result[phase]["achieved_gflops"] / peak
    return peak


def table(report):
    head = ["preset", "params", "fwd MFLOP/ex", "ms/step", "ex/s", "GFLOP/s", "MFU%",
            "distill ms", "ratio", "smp/s N=1", "N=4", "N=64", "ovh"]
    rows = [head]
    for name, r in report["presets"].items():
        t, d, s = r["train"], r.get("distill", {}), r.get("sampling", {}).get("steps", {})
        rows.append([
            name, f"{r['params'] / 1e6:.2f}M", f"{r['fwd_flops_per_example'] / 1e6:.1f}",
            f"{t['ms_per_step']:.1f}", f"{t['examples_per_s']:.1f}",
            f"{t['achieved_gflops']:.2f}", f"{100 * t['mfu']:.2f}",
            _fmt(d.get("ms_per_step"), ".1f"), _fmt(d.get("ratio_to_teacher"), ".2f"),
            *(_fmt(s.get(k, {}).get("samples_per_s"), ".1f") for k in ("1", "4", "64")),
            _fmt(r.get("sampling", {}).get("overhead_ratio"), ".2f"),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="digits_mlp,digits",
                   help="comma-separated network presets (cifar10 is slow on a CPU)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is kept)")
    p.add_argument("--batch_size", type=int, default=0, help="override the preset's batch size")
    p.add_argument("--train_steps", type=int, default=0, help="override timed steps per epoch")
    p.add_argument("--distill_steps", type=int, default=0,
                   help="override timed distillation steps per epoch")
    p.add_argument("--sample_batch", type=int, default=0, help="override the sampling batch")
    p.add_argument("--sample_steps", default="",
                   help="override the DDIM step counts, e.g. 1,4,64")
    p.add_argument("--student_steps", type=int, default=64,
                   help="N of the distillation round (teacher 2N)")
    p.add_argument("--min_time", type=float, default=0.25,
                   help="seconds each sampling timing lasts at least (calls are repeated)")
    p.add_argument("--peak_size", type=int, default=2048, help="n of the n x n matmul peak")
    p.add_argument("--mfu_peak", default="numpy", choices=("numpy", "backend"),
                   help="MFU against the NumPy float32 peak (CPU) or the backend's own matmul "
                        "in --peak_dtype (an accelerator: e.g. bfloat16 on a GPU)")
    p.add_argument("--peak_dtype", default="float32", help="dtype of the backend matmul peak")
    p.add_argument("--no_distill", action="store_true")
    p.add_argument("--no_sampling", action="store_true")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads of the backend (torch, tensorflow; jax: only 1); "
                        "0 keeps the backend's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype_policy", default="float32",
                   help="Keras dtype policy of the models (float32, mixed_bfloat16, mixed_float16)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def log(msg):
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

    start = time.perf_counter()
    if args.threads and os.environ.get("KERAS_BACKEND", "") == "jax":
        flags = "--xla_cpu_multi_thread_eigen=false" if args.threads == 1 else ""
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    load_start = os.getloadavg()
    peak_start = numpy_matmul_peak(args.peak_size, 5)
    log(f"numpy matmul peak {peak_start['gflops']:.1f} GFLOP/s (load {load_start})")

    import keras

    backend = keras.backend.backend()
    set_threads(backend, args.threads)
    keras.config.set_dtype_policy(args.dtype_policy)  # models built from here on use it
    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([f"KERAS_BACKEND={backend}", "python"] + sys.argv),
        "backend": backend,
        "versions": backend_versions(backend),
        "python": platform.python_version(),
        "threads": args.threads or "default",
        "dtype_policy": args.dtype_policy,
        "machine": {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "cpu_model": cpu_model(), "platform": platform.platform(),
                    "loadavg_start": [round(v, 2) for v in load_start]},
        "matmul_peak": {"numpy_start": peak_start},
        "presets": {},
    }
    report["mfu_peak"] = args.mfu_peak
    report["matmul_peak"]["backend_ops"] = backend_matmul(
        args.peak_size, 5, args.peak_dtype, inner=10 if args.mfu_peak == "backend" else 1)
    log(f"{backend} keras.ops.matmul {args.peak_dtype} "
        f"{report['matmul_peak']['backend_ops']['gflops']:.1f} GFLOP/s")
    report["device"] = device_name(backend)
    peak = (report["matmul_peak"]["backend_ops"]["gflops"] if args.mfu_peak == "backend"
            else peak_start["gflops"])
    report["matmul_peak"]["used_for_mfu_gflops"] = peak

    def save(preset, result=None):  # the report so far: a killed run keeps finished phases
        if result is not None:
            report["presets"][preset] = result
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1, default=float)

    for preset in [p for p in args.presets.split(",") if p]:
        bench_preset(preset, args, peak, log, lambda result, preset=preset: save(preset, result))
    peak_end = numpy_matmul_peak(args.peak_size, 5)
    report["matmul_peak"]["numpy_end"] = peak_end
    report["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["wall_s"] = time.perf_counter() - start
    log(f"numpy matmul peak at the end {peak_end['gflops']:.1f} GFLOP/s "
        f"(load {report['machine']['loadavg_end']})")
    peak = finalize_mfu(report)
    print()
    print(f"backend {backend}, keras {report['versions']['keras']}, "
          f"{report['machine']['nproc']} CPUs ({report['machine']['cpu_model']}), numpy peak "
          f"{peak_start['gflops']:.1f} (start) / {peak_end['gflops']:.1f} (end) GFLOP/s; MFU "
          f"against {peak:.1f}")
    print(table(report))
    save(None)
    if args.out:
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
