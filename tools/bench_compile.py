"""What compiling the training step costs and what it saves, per backend (docs/performance.md).

    python tools/bench_compile.py --presets=digits_mlp,digits --backends=tensorflow,torch \
        --out=bench_compile.json

For every (preset, backend, jit_compile in --modes) a fresh subprocess pinned to --cpus cores
builds the teacher of `apps.train` (batch 128, the real optimizer: Adam, EMA, clipping), compiles
it with that `jit_compile` and runs `fit` for 1 + --epochs epochs of --steps updates, with the
updates per compiled call that training uses. It reports the first epoch's extra time over a
steady one (tracing and compiling: `start_s`) and the median steady ms per update. Between two
modes, the break-even run length is the extra start-up time divided by the time saved per
update: runs longer than that finish sooner compiled (`distribute.Engine.jit_compile`).
"""

import argparse
import json
import os
import sys

from bench_common import (backend_env, batches, digits_teacher, fit_ms, run_worker,
                          serve_worker, teacher_optimizer, write_report)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BATCH = 128


def worker(args):
    import keras

    from keras_pd.replicas import MAX_STEPS_PER_EXECUTION

    model, data, cfg = digits_teacher(args.preset, BATCH, threads=args.cpus)
    backend = keras.backend.backend()
    jit = {"auto": "auto", "true": True, "false": False}[args.mode]
    model.compile(optimizer=teacher_optimizer(cfg), jit_compile=jit)
    if backend != "torch":
        model.steps_per_execution = min(MAX_STEPS_PER_EXECUTION, args.steps)
    stream = batches(data, BATCH)
    wall, cpu, epochs = fit_ms(model, stream, args.steps, args.epochs)
    return {"backend": backend, "preset": args.preset, "mode": args.mode, "cpus": args.cpus,
            "steps": args.steps, "ms_per_update": wall, "cpu_ms_per_update": cpu,
            "start_s": (epochs[0] - wall) * args.steps / 1000, "epochs_ms": epochs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="digits_mlp,digits")
    p.add_argument("--backends", default="tensorflow,torch")
    p.add_argument("--modes", default="false,true", help="jit_compile values compared")
    p.add_argument("--cpus", type=int, default=1, help="cores each worker is pinned to")
    p.add_argument("--steps", type=int, default=20, help="updates per epoch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after the first")
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="digits_mlp", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="false", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        serve_worker(worker, args)
        return None
    report = {"loadavg_start": os.getloadavg(), "cpus": args.cpus, "batch": BATCH, "runs": []}
    modes = args.modes.split(",")
    for preset in args.presets.split(","):
        for backend in args.backends.split(","):
            rows = {}
            for mode in modes:
                argv = [sys.executable, os.path.abspath(__file__), "--worker",
                        f"--preset={preset}", f"--mode={mode}", f"--cpus={args.cpus}",
                        f"--steps={args.steps}", f"--epochs={args.epochs}"]
                res = run_worker(argv, backend_env(backend, args.cpus), args.timeout)
                res.update(backend=backend, preset=preset, mode=mode)
                rows[mode] = res
                report["runs"].append(res)
                print(json.dumps({k: v for k, v in res.items() if k != "epochs_ms"}), flush=True)
                write_report(args.out, report)
            if len(modes) < 2:
                continue
            base, other = rows[modes[0]], rows[modes[1]]
            if "error" not in base and "error" not in other:
                saved = base["ms_per_update"] - other["ms_per_update"]
                extra = other["start_s"] - base["start_s"]
                other["break_even_updates"] = (round(1000 * extra / saved) if saved > 0
                                               else None)
                print(f"{preset} {backend}: {modes[1]} starts {extra:+.1f} s later and saves "
                      f"{saved:.2f} ms an update: break-even "
                      f"{other['break_even_updates']} updates", flush=True)
    report["loadavg_end"] = os.getloadavg()
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
