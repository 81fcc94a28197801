"""What to distill on: the dataset, the teacher's own samples, or both (docs/results.md).

For each seed, the main job (`apps.pipeline`'s defaults, the cascade to 1 step) runs once on
the variant named first; every other variant copies that run's teacher and runs the cascade
down to --end_steps with the same evaluation (same seed, classifier and noise). Each variant's
results.json and report.md stay in WORKDIR/VARIANT_sSEED; one JSON line per run is appended to
WORKDIR/study.jsonl and a table is printed. Rerun to resume: finished stages are skipped.

    KERAS_BACKEND=jax python tools/distill_data_study.py --workdir=runs/study --seeds=0,2

Variants: NAME=SOURCE[:COUNT][:each], e.g. teacher20k=teacher:20000, data=data,
mix20k=mix:20000, each20k=teacher:20000:each (every round samples its own teacher).
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_VARIANTS = "teacher20k=teacher:20000,data=data,mix20k=mix:20000"


def parse_variant(text):
    name, _, spec = text.partition("=")
    parts = spec.split(":")
    return name, dict(distill_data=parts[0],
                      teacher_samples=int(parts[1]) if len(parts) > 1 and parts[1] else 20000,
                      each="each" in parts[2:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,2")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--end_steps", type=int, default=4, help="cascade end of the other variants")
    args = p.parse_args(argv)

    import keras

    from keras_pd import pipeline
    from keras_pd.cascade import distill
    from keras_pd.pipeline import PipelineConfig, run_pipeline

    variants = [parse_variant(v) for v in args.variants.split(",")]
    for seed in (int(s) for s in args.seeds.split(",")):
        first_dir = None
        for k, (name, v) in enumerate(variants):
            workdir = os.path.join(args.workdir, f"{name}_s{seed}")
            cfg = PipelineConfig(seed=seed, distill_data=v["distill_data"],
                                 teacher_samples=v["teacher_samples"],
                                 end_steps=1 if k == 0 else args.end_steps)
            if k == 0:
                first_dir = workdir
            elif not os.path.exists(os.path.join(workdir, "teacher")):
                shutil.copytree(os.path.join(first_dir, "teacher"),
                                os.path.join(workdir, "teacher"))
            t0 = time.time()
            if v["each"]:  # the cascade with resampling first, then the job finds it done
                distill(os.path.join(workdir, "teacher"), workdir, dataclasses.replace(
                    pipeline.distill_config(cfg), resample_each_round=True), verbose=0)
            results = run_pipeline(workdir, cfg, verbose=0)
            rows = results["table"]["rows"]
            get = lambda row, s: rows[row].get(s, rows[row].get(str(s)))  # noqa: E731
            timings = json.load(open(os.path.join(workdir, "timings.json")))
            line = dict(seed=seed, variant=name, **v, backend=keras.backend.backend(),
                        metric=results["metric"], teacher=get("teacher_full", 1),
                        distilled={s: get("distilled", s) for s in (64, 32, 16, 8, 4, 2, 1)},
                        ddim4=get("ddim", 4), timings=timings,
                        wall_this_call_s=round(time.time() - t0, 1))
            with open(os.path.join(args.workdir, "study.jsonl"), "a") as f:
                f.write(json.dumps(line) + "\n")
            d4 = line["distilled"][4]
            print(f"seed {seed} {name}: teacher {line['teacher']:.2f}, 4-step {d4:.2f} "
                  f"({d4 / line['teacher']:.2f}x), DDIM-4 / 4-step {line['ddim4'] / d4:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
