"""keras-pd against the peer a user would pick instead: a plain PyTorch training loop of diffusers'
`UNet2DModel` with matched widths, on the same data size and batch.

Needs `pip install diffusers` (benchmarks only; not a dependency of keras-pd).

    python tools/bench_peer.py --rounds=3 --out=bench_peer.json

The keras-pd side is the `digits` preset UNet (8x8x1; 32 channels at 8x8 and 4x4, one residual
block per level, BigGAN-style resampling residual blocks, scale/shift conditioning, attention
at 4x4 and in the middle) trained through the library's real path (`build_teacher`,
`make_optimizer`: Adam with warmup, EMA, global-norm clipping; `fit` on a `BatchStream`), on
each backend in --backends. The peer is `diffusers.UNet2DModel` configured to the same
structure (block_out_channels (32, 32), layers_per_block 1, DownBlock2D + AttnDownBlock2D,
AttnUpBlock2D + UpBlock2D, resnet down/upsampling, scale_shift time conditioning, a 128-wide
time embedding, dropout 0.1), trained by the loop a PyTorch user writes: eps-prediction MSE at
t ~ U[0, 1] on the cosine schedule, `torch.optim.Adam`, `clip_grad_norm_`, an EMA of the
weights with `torch._foreach_lerp_`, the same 1,797 digits and batch 128.

FLOPs per example (forward) are counted for both sides by `torch.utils.flop_counter`
(FlopCounterMode: matmuls, convolutions, attention) on torch: the peer directly, keras-pd by
running its network under the torch backend in a subprocess. keras-pd's own analytic count
(`tools/bench_flops.py`'s `count_forward_flops`) is reported beside it.

Every configuration runs in its own subprocess (torch with one intra-op thread, see
docs/performance.md); the rounds alternate the configurations so load changes hit all alike. Each
process times --epochs epochs of --steps steps after a warm-up epoch and reports the median wall
and process-CPU ms per step (on a shared machine the wall time also counts waiting for a core;
JAX and TensorFlow use both cores, so their CPU time sums two threads, unless --cpus pins every
worker to that many cores).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

from bench_common import (backend_env, batches, digits_teacher, fit_ms, run_worker,
                          teacher_optimizer, write_report)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

BATCH = 128


def peer_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        downsample_type="resnet", upsample_type="resnet",
        resnet_time_scale_shift="scale_shift", time_embedding_dim=128,
        attention_head_dim=32, norm_num_groups=8, dropout=0.1)


def torch_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _digits():
    from keras_pd.data import load_dataset

    return load_dataset("digits").x  # [1797, 8, 8, 1] in [-1, 1]


def peer_training(threads):
    """The peer's network and one training step of the loop a PyTorch user writes.

    Returns (net, x_all, step, loss_fn): x_all the digits as NCHW, step() one update returning
    the loss, loss_fn(x) the loss of batch x alone (forward only; for profiling its parts).
    """
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x_all = torch.from_numpy(np.ascontiguousarray(_digits().transpose(0, 3, 1, 2)))  # NCHW
    net = peer_unet()
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-8)
    gen = np.random.default_rng(0)

    def loss_fn(x):
        t = torch.rand(x.shape[0])
        logsnr = -2 * torch.log(torch.tan(math.pi * t * 0.5).clamp_min(1e-6))
        alpha = torch.sigmoid(logsnr).sqrt().view(-1, 1, 1, 1)
        sigma = torch.sigmoid(-logsnr).sqrt().view(-1, 1, 1, 1)
        eps = torch.randn_like(x)
        z = alpha * x + sigma * eps
        out = net(z, t * 1000).sample
        return torch.mean((out - eps) ** 2)

    def step():
        idx = torch.from_numpy(gen.integers(0, x_all.shape[0], BATCH))
        loss = loss_fn(x_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(net.parameters()), 1 - 0.999)
        return loss

    return net, x_all, step, loss_fn


def worker_peer(args):
    import torch

    net, x_all, step, _ = peer_training(args.threads)
    params = sum(p.numel() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        flops = torch_flops(lambda: net(x_all[:1], torch.zeros(1)))
    net.train()

    times, cpu = [], []
    for epoch in range(1 + args.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            loss = step()
        float(loss.detach())
        times.append((time.perf_counter() - t0) / args.steps)
        cpu.append((time.process_time() - c0) / args.steps)
    ms = 1000 * statistics.median(times[1:])
    return {"ms_per_step": ms, "examples_per_s": BATCH / ms * 1000, "params": params,
            "cpu_ms_per_step": 1000 * statistics.median(cpu[1:]),
            "fwd_flops_per_example": flops, "ms_all": [1000 * t for t in times],
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def worker_keras(args):
    import keras

    from keras_pd.distribute import Engine
    from tools.bench_flops import count_forward_flops

    model, data, cfg = digits_teacher("digits", BATCH, threads=args.threads)
    result = {"params": int(model.count_params()),
              "fwd_flops_analytic": count_forward_flops(model.network)["total"]}
    if args.count_only:  # FLOPs on torch, counted like the peer's
        import torch

        z = keras.ops.convert_to_tensor(data.x[:1])
        with torch.no_grad():
            result["fwd_flops_per_example"] = torch_flops(
                lambda: model.network(z, keras.ops.zeros((1,)), None, training=False))
        return result
    model.compile(optimizer=teacher_optimizer(cfg),
                  jit_compile=Engine("none").jit_compile())  # as training runs compile it
    ms, cpu_ms, ms_all = fit_ms(model, batches(data, BATCH), args.steps, args.epochs)
    result.update(ms_per_step=ms, examples_per_s=BATCH / ms * 1000, cpu_ms_per_step=cpu_ms,
                  ms_all=ms_all, keras=keras.__version__)
    return result


def run(config, args):
    kind, backend = config.split(":") if ":" in config else (config, "torch")
    env = backend_env(backend)
    argv = [sys.executable, os.path.abspath(__file__), f"--worker={kind}",
            f"--steps={args.steps}", f"--epochs={args.epochs}", f"--threads={args.threads}",
            f"--cpus={args.cpus}"]
    if kind == "count":
        argv[2] = "--worker=keras"
        argv.append("--count_only")
    return run_worker(argv, env, args.timeout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="jax,tensorflow,torch",
                   help="keras-pd backends to time against the peer")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="timed steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per process")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--cpus", type=int, default=0,
                   help="pin every worker to this many cores (0: JAX and TensorFlow use all)")
    p.add_argument("--timeout", type=int, default=1200)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--count_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        if args.cpus:  # before the backend starts its thread pools
            os.sched_setaffinity(0, set(range(args.cpus)))
        result = worker_peer(args) if args.worker == "peer" else worker_keras(args)
        print("RESULT " + json.dumps(result), flush=True)
        return result

    report = {"loadavg_start": os.getloadavg(), "batch": BATCH, "cpus": args.cpus,
              "torch_threads": args.threads, "rounds": []}
    start = time.perf_counter()
    flops = run("count:torch", args)
    report["keras_pd_flops"] = flops
    print(f"[{time.perf_counter() - start:5.0f}s] keras-pd FLOPs {json.dumps(flops)}", flush=True)
    configs = ["peer"] + [f"keras:{b}" for b in args.backends.split(",") if b]
    for r in range(args.rounds):
        for config in (configs if r % 2 == 0 else configs[::-1]):
            res = run(config, args)
            res.update(config=config, round=r, loadavg=os.getloadavg()[0])
            report["rounds"].append(res)
            print(f"[{time.perf_counter() - start:5.0f}s] {json.dumps(res)}", flush=True)
            if args.out:
                with open(args.out + ".tmp", "w") as f:
                    json.dump(report, f, indent=1)
                os.replace(args.out + ".tmp", args.out)
    summary = {}
    for config in configs:
        ok = [x for x in report["rounds"] if x["config"] == config and "error" not in x]
        if ok:
            summary[config] = {"ms_per_step": statistics.median(x["ms_per_step"] for x in ok),
                               "examples_per_s": statistics.median(x["examples_per_s"]
                                                                   for x in ok),
                               "cpu_ms_per_step": statistics.median(x["cpu_ms_per_step"]
                                                                    for x in ok),
                               "params": ok[0]["params"]}
    peer = summary.get("peer")
    for config, row in summary.items():
        if peer:
            row["vs_peer"] = row["examples_per_s"] / peer["examples_per_s"]
            # examples per CPU second against the peer's (the work, without the wait for a core)
            row["vs_peer_cpu"] = peer["cpu_ms_per_step"] / row["cpu_ms_per_step"]
        print(config, json.dumps(row))
    report["summary"] = summary
    report["loadavg_end"] = os.getloadavg()
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
