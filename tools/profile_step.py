"""Where a teacher's training step spends its time, per backend (docs/performance.md, issue 22).

    python tools/profile_step.py --presets=digits,digits_mlp --backends=torch,jax,tensorflow \
        --out=profile_step.json

Every (preset, backend) runs in its own subprocess, pinned to --cpus cores (default one, so all
backends get the same resources as the one-thread PyTorch peer of tools/bench_peer.py), and
trains through the library's real path (`build_teacher`, `fit` on a `BatchStream`, batch 128).
It reports the median ms per step (wall and process CPU) of `fit` with

* "full": the real optimizer (`make_optimizer`: Adam, warmup, EMA, global-norm clipping);
* "adam": plain Adam (no EMA, no clipping): full - adam is what EMA and clipping cost;
* "sgd": plain SGD: adam - sgd is what Adam's moments cost;

and on torch, interleaved in one process with the real optimizer: "fit" (the full step
again), "no_trainer" (the same update written as a plain loop: batch, loss, gradients, the
optimizer's `apply`; fit - no_trainer is Keras' trainer around the update), "forward_backward"
(the loss and its gradients on a fixed batch; no_trainer - forward_backward is the optimizer)
and "forward" (the loss alone); and a torch.profiler table of
--profile_steps full steps: the top operators by self CPU time per step, and the share of the
step that no operator accounts for (Python: Keras' layer calls, dispatch and variable access).
With the digits preset it first measures the peer of tools/bench_peer.py (diffusers'
UNet2DModel in a plain PyTorch loop; needs diffusers) the same way, so that the two tables
compare operator by operator (--peer=0 leaves it out).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from bench_common import (backend_env, batches, digits_teacher, fit_ms, run_worker,
                          serve_worker, teacher_optimizer, write_report)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BATCH = 128


def worker(args):
    if args.preset == "peer":
        return peer_worker(args)
    import keras

    from keras_pd.distribute import Engine

    cfg = digits_teacher(args.preset, BATCH, threads=args.cpus)[2]
    optimizers = {
        "full": lambda: teacher_optimizer(cfg),
        "adam": lambda: keras.optimizers.Adam(cfg.learning_rate),
        "sgd": lambda: keras.optimizers.SGD(cfg.learning_rate),
    }
    result = {"backend": keras.backend.backend(), "preset": args.preset, "cpus": args.cpus}
    for name, make in optimizers.items():  # a fresh model each (JAX keeps compiled state)
        model, data, _ = digits_teacher(args.preset, BATCH)
        result["params"] = int(model.count_params())
        model.compile(optimizer=make(), jit_compile=Engine("none").jit_compile())
        stream = batches(data, BATCH)

        result[name] = fit_ms(model, stream, args.steps, args.epochs)[:2]
    if result["backend"] == "torch":
        result.update(torch_parts(model, data, args))
    return result


def torch_parts(model, data, args):
    """Our step's parts, interleaved in one process (`_interleaved`), and a torch.profiler
    table of full steps."""
    import torch

    from keras_pd.runs import make_optimizer

    model.compile(optimizer=make_optimizer(1e-4, 100, ema_decay=0.9999, grad_clip=1.0))
    stream = batches(data, BATCH)
    model.fit(stream, steps_per_epoch=2, epochs=1, verbose=0)  # builds the optimizer
    weights = model.trainable_weights
    x = torch.as_tensor(next(stream)[0])

    def loss(batch):
        return model.compute_loss(x=batch, y=None, y_pred=None, training=True)

    def no_trainer(steps):  # fit's update as the plain loop: batch, loss, gradients, apply
        for _ in range(steps):
            grads = torch.autograd.grad(loss(torch.as_tensor(next(stream)[0])),
                                        [v.value for v in weights])
            with torch.no_grad():
                model.optimizer.apply(grads, weights)

    def fit(steps):
        model.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0)

    out = _interleaved({"fit": fit, "no_trainer": no_trainer,
                        **_loss_parts(loss, x, [v.value for v in weights])}, args)
    out["profile"] = _profile_table(fit, args)
    return out


def _loss_parts(loss, x, params):
    """"forward": loss(x) alone; "forward_backward": with its gradients (not accumulated)."""
    import torch

    def forward(steps):
        for _ in range(steps):
            loss(x)

    def forward_backward(steps):
        for _ in range(steps):
            torch.autograd.grad(loss(x), params)

    return {"forward": forward, "forward_backward": forward_backward}


def _interleaved(parts, args):
    """{name: fn(steps)} -> {name: [wall ms, CPU ms] per step}: after one warm-up call of each,
    --epochs rounds that run every part in turn, --steps steps a call; medians over rounds.
    Interleaving keeps the differences between parts (e.g. fit - no_trainer) clear of this
    machine's slow and fast phases, which one part timed after another would take in."""
    times = {name: ([], []) for name in parts}
    for fn in parts.values():
        fn(2)
    for _ in range(args.epochs):
        for name, fn in parts.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn(args.steps)
            times[name][0].append((time.perf_counter() - t0) / args.steps)
            times[name][1].append((time.process_time() - c0) / args.steps)
    return {name: [1000 * statistics.median(w), 1000 * statistics.median(c)]
            for name, (w, c) in times.items()}


def _profile_table(run, args):
    """torch.profiler over run(--profile_steps) steps: the top aten operators by self CPU time
    per step, and the share of the step's wall time that no aten operator accounts for."""
    import torch

    n = args.profile_steps
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(n)
    wall_ms = 1000 * (time.perf_counter() - t0) / n
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total_self = sum(e.self_cpu_time_total for e in events) / 1000 / n  # ms per step
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]
    return {"steps": n, "wall_ms_per_step_profiled": wall_ms,
            "aten_self_ms_per_step": total_self,
            "aten_calls_per_step": sum(e.count for e in events) / n,
            "outside_aten_share": max(0.0, 1 - total_self / wall_ms),
            "top": [{"op": e.key, "calls_per_step": e.count / n,
                     "self_ms_per_step": e.self_cpu_time_total / 1000 / n,
                     "share": e.self_cpu_time_total / 1000 / n / wall_ms} for e in top]}


def peer_worker(args):
    """The same parts for tools/bench_peer.py's peer: diffusers' UNet2DModel in a plain loop."""
    import torch
    from bench_peer import peer_training

    net, x_all, step, loss_fn = peer_training(args.cpus)
    x = x_all[torch.from_numpy(np.random.default_rng(0).integers(0, len(x_all), BATCH))]

    def full(steps):
        for _ in range(steps):
            loss = step()
        float(loss.detach())

    out = {"backend": "peer", "preset": "digits", "cpus": args.cpus,
           "params": sum(p.numel() for p in net.parameters())}
    out.update(_interleaved({"full": full, **_loss_parts(loss_fn, x, list(net.parameters()))},
                            args))
    out["profile"] = _profile_table(full, args)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="digits,digits_mlp")
    p.add_argument("--backends", default="torch,jax,tensorflow")
    p.add_argument("--cpus", type=int, default=1, help="cores each worker is pinned to")
    p.add_argument("--steps", type=int, default=10, help="timed steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (the median is kept)")
    p.add_argument("--profile_steps", type=int, default=5)
    p.add_argument("--top", type=int, default=15, help="operators in the torch table")
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--peer", type=int, default=1,
                   help="with the digits preset, also profile tools/bench_peer.py's peer "
                        "(needs diffusers)")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="digits", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        serve_worker(worker, args)
        return None
    report = {"loadavg_start": os.getloadavg(), "cpus": args.cpus, "batch": BATCH, "runs": []}
    configs = [(preset, backend) for preset in args.presets.split(",")
               for backend in args.backends.split(",")]
    if args.peer and "digits" in args.presets.split(","):
        configs.insert(0, ("peer", "torch"))
    for preset, backend in configs:
        argv = [sys.executable, os.path.abspath(__file__), "--worker", f"--preset={preset}",
                f"--cpus={args.cpus}", f"--steps={args.steps}", f"--epochs={args.epochs}",
                f"--profile_steps={args.profile_steps}", f"--top={args.top}"]
        res = run_worker(argv, backend_env(backend, args.cpus), args.timeout)
        res.setdefault("backend", backend)
        res.setdefault("preset", preset)
        report["runs"].append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "profile"}), flush=True)
        write_report(args.out, report)
    report["loadavg_end"] = os.getloadavg()
    for res in report["runs"]:
        if "profile" in res:
            prof = res["profile"]
            print(f"\n{res['preset']} on {res['backend']}: "
                  f"{prof['wall_ms_per_step_profiled']:.1f} ms/step profiled; {100 * prof['outside_aten_share']:.0f}% outside aten operators")
            for row in prof["top"]:
                print(f"  {row['op']:<40} {row['calls_per_step']:7.0f} calls "
                      f"{row['self_ms_per_step']:8.2f} ms {100 * row['share']:5.1f}%")
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
