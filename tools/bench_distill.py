"""Distillation against teacher training: peak memory and update cost, per backend.

Usage:

    python tools/bench_distill.py --backends=jax,tensorflow,torch --presets=digits_mlp,digits \
        --repeats=3 --out=bench_distill.json

Two measurements, each in FRESH subprocesses (one backend per process, KERAS_BACKEND set;
torch with one intra-op thread, see docs/performance.md):

* memory: one process per (backend, preset, phase, repeat), the phases "teacher" (build the
  teacher, compile with the dataset's optimizer: Adam, warmup, EMA, clipping; fit `--mem_steps`
  updates) and "distill" (build the teacher, which is frozen and holds no optimizer state, copy
  it to a dropout-free student, compile the cascade's optimizer: Adam, linear decay, no EMA;
  fit the same number of updates). After imports, the data set and one tiny op on the backend,
  the worker resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`) and reads
  VmRSS (the baseline); after the fit it reads VmHWM (the peak since the reset). The figure is
  the growth, VmHWM - baseline: everything the phase allocated on the host, whatever the
  allocator (XLA's buffers and compiler, TensorFlow's, torch's), which tracemalloc or
  ru_maxrss alone would miss or blur with import-time peaks. It includes compilation, the
  weights, gradients, optimizer state and activations. Repeats of the two phases alternate
  (teacher, distill, teacher, ...) so the machine's load hits both alike.
* cost: one process per (backend, preset, repeat) that times teacher and distillation epochs
  INTERLEAVED: the teacher's single `fit` call (a second `fit` on a JAX model with an EMA
  optimizer fails in Keras 3.15) runs one distillation epoch (the distiller's own `fit`) at the
  end of each of its epochs; the first epoch of each is a warm-up (compilation). The ratio is
  median(distill ms/step) / median(teacher ms/step) of the process, in wall time and in process
  CPU time (on a machine shared with other jobs wall time also counts the wait for a core); the
  report gives the median over processes.

The analytic state (weights, gradients, optimizer slots) is reported beside the measurements:
teacher 5 x params (weights, gradients, Adam m and v, EMA) against distillation 5 x params
(frozen teacher weights, student weights, gradients, m and v).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

from bench_common import backend_env, digits_teacher, run_worker, teacher_optimizer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = {  # batch, timed steps per epoch (cost), updates of the memory phase
    "digits_mlp": dict(batch=128, steps=30, dsteps=30, mem_steps=20),
    "digits": dict(batch=128, steps=6, dsteps=4, mem_steps=6),
}


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    return float("nan")


def _setup(preset, seed=0):
    import keras

    _, data, cfg = digits_teacher(preset, SETTINGS[preset]["batch"], seed=seed, threads=1)
    keras.ops.convert_to_numpy(keras.ops.ones((2, 2)) + 1.0)  # backend runtime up
    return keras, data, cfg


def _teacher_model(cfg, data):
    from keras_pd.training import build_teacher

    model = build_teacher(cfg, data)
    model.compile(optimizer=teacher_optimizer(cfg))
    return model


def _distill_model(cfg, data, seed=0):
    from keras_pd.cascade import DistillConfig
    from keras_pd.distillation import DistillationModel, copy_model
    from keras_pd.runs import make_optimizer
    from keras_pd.training import build_teacher

    dcfg = DistillConfig()
    teacher = build_teacher(cfg, data)  # frozen: no optimizer, no gradients
    student = copy_model(teacher, dropout=0.0)
    model = DistillationModel(teacher, student, 64, dcfg.weighting, seed=seed)
    model.compile(optimizer=make_optimizer(dcfg.learning_rate, decay_steps=dcfg.updates_per_round,
                                           grad_clip=dcfg.grad_clip))
    return model


def worker_memory(preset, phase):
    keras, data, cfg = _setup(preset)
    from keras_pd.data import BatchStream

    s = SETTINGS[preset]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    t0 = time.perf_counter()
    model = _teacher_model(cfg, data) if phase == "teacher" else _distill_model(cfg, data)
    stream = BatchStream(data.x, None, s["batch"], seed=0)
    model.fit(stream.generator(), steps_per_epoch=s["mem_steps"], epochs=1, verbose=0)
    keras.ops.convert_to_numpy(model.trainable_variables[-1])
    params = sum(math.prod(v.shape) for v in model.trainable_variables)
    return {"base_mb": base, "peak_mb": _status("VmHWM"), "end_mb": _status("VmRSS"),
            "growth_mb": _status("VmHWM") - base, "trainable_params": params,
            "wall_s": time.perf_counter() - t0}


def worker_cost(preset):
    keras, data, cfg = _setup(preset)
    from keras_pd.data import BatchStream

    s = SETTINGS[preset]
    teacher = _teacher_model(cfg, data)
    distiller = _distill_model(cfg, data)
    dstream = BatchStream(data.x, None, s["batch"], seed=1000).generator()
    t_times, d_times, t_cpu, d_cpu = [], [], [], []

    class Interleave(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            keras.ops.convert_to_numpy(self.model.trainable_variables[-1])
            t_times.append((time.perf_counter() - self.t0) / s["steps"])
            t_cpu.append((time.process_time() - self.c0) / s["steps"])
            t0, c0 = time.perf_counter(), time.process_time()
            distiller.fit(dstream, steps_per_epoch=s["dsteps"], epochs=1, verbose=0)
            keras.ops.convert_to_numpy(distiller.trainable_variables[-1])
            d_times.append((time.perf_counter() - t0) / s["dsteps"])
            d_cpu.append((time.process_time() - c0) / s["dsteps"])

    stream = BatchStream(data.x, None, s["batch"], seed=0)
    teacher.fit(stream.generator(), steps_per_epoch=s["steps"], epochs=1 + ARGS.epochs,
                verbose=0, callbacks=[Interleave()])
    t_ms = 1000 * statistics.median(t_times[1:])
    d_ms = 1000 * statistics.median(d_times[1:])
    # CPU seconds per step (the process's, all threads): on a shared machine wall time also
    # counts waiting for a core, CPU time the work done; both ratios are reported.
    t_cpu_ms = 1000 * statistics.median(t_cpu[1:])
    d_cpu_ms = 1000 * statistics.median(d_cpu[1:])
    return {"teacher_ms": t_ms, "distill_ms": d_ms, "ratio": d_ms / t_ms,
            "teacher_cpu_ms": t_cpu_ms, "distill_cpu_ms": d_cpu_ms,
            "cpu_ratio": d_cpu_ms / t_cpu_ms,
            "teacher_all": [round(1000 * t, 2) for t in t_times],
            "distill_all": [round(1000 * t, 2) for t in d_times]}


def backend_worker(backend, argv, timeout):
    """Runs this script's worker on `backend` (torch at one intra-op thread)."""
    return run_worker([sys.executable, os.path.abspath(__file__), "--worker"] + argv,
                      backend_env(backend, 1), timeout)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="jax,tensorflow,torch")
    p.add_argument("--presets", default="digits_mlp,digits")
    p.add_argument("--what", default="memory,cost", help="memory, cost or both")
    p.add_argument("--repeats", type=int, default=3, help="processes per configuration")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per cost process")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="", help=argparse.SUPPRESS)
    p.add_argument("--phase", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    global ARGS
    ARGS = args = parse_args(argv)
    if args.worker:
        result = (worker_memory(args.preset, args.phase) if args.mode == "memory"
                  else worker_cost(args.preset))
        print("RESULT " + json.dumps(result), flush=True)
        return result
    report = {"loadavg_start": os.getloadavg(), "nproc": os.cpu_count(), "runs": [],
              "command": " ".join(["python"] + sys.argv)}
    backends = [b for b in args.backends.split(",") if b]
    presets = [p for p in args.presets.split(",") if p]
    what = args.what.split(",")
    start = time.perf_counter()

    def save():
        if args.out:
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(report, f, indent=1)
            os.replace(tmp, args.out)

    for rep in range(args.repeats):
        for preset in presets:
            for backend in backends:
                jobs = []
                if "memory" in what:
                    phases = ("teacher", "distill") if rep % 2 == 0 else ("distill", "teacher")
                    jobs += [("memory", ph) for ph in phases]
                if "cost" in what:
                    jobs.append(("cost", ""))
                for mode, phase in jobs:
                    r = backend_worker(backend, [f"--mode={mode}", f"--preset={preset}",
                                             f"--phase={phase}", f"--epochs={args.epochs}"],
                                   args.timeout)
                    r.update(backend=backend, preset=preset, mode=mode, phase=phase, repeat=rep,
                             loadavg=os.getloadavg()[0])
                    report["runs"].append(r)
                    print(f"[{time.perf_counter() - start:6.0f}s] {json.dumps(r)}", flush=True)
                    save()
    report["loadavg_end"] = os.getloadavg()
    summary = {}
    for backend in backends:
        for preset in presets:
            runs = [r for r in report["runs"] if r["backend"] == backend and r["preset"] == preset
                    and "error" not in r]
            row = {}
            for phase in ("teacher", "distill"):
                g = [r["growth_mb"] for r in runs if r["mode"] == "memory" and r["phase"] == phase]
                if g:
                    row[f"{phase}_growth_mb"] = statistics.median(g)
            if "teacher_growth_mb" in row and "distill_growth_mb" in row:
                row["memory_ratio"] = row["distill_growth_mb"] / row["teacher_growth_mb"]
            c = [r for r in runs if r["mode"] == "cost"]
            if c:
                row["teacher_ms"] = statistics.median(r["teacher_ms"] for r in c)
                row["distill_ms"] = statistics.median(r["distill_ms"] for r in c)
                row["cost_ratio"] = statistics.median(r["ratio"] for r in c)
                row["cost_ratios_all"] = [round(r["ratio"], 3) for r in c]
                cpu = [r["cpu_ratio"] for r in c if "cpu_ratio" in r]
                if cpu:
                    row["cpu_cost_ratio"] = statistics.median(cpu)
                    row["cpu_cost_ratios_all"] = [round(x, 3) for x in cpu]
            summary[f"{backend}/{preset}"] = row
            print(backend, preset, json.dumps(row))
    report["summary"] = summary
    save()
    return report


if __name__ == "__main__":
    main()
