"""Fault injection: kill -9 the apps at random moments, rerun the same command, check nothing is lost.

For each of `apps.train`, `apps.distill --end_steps=1` and `apps.pipeline`:

1. a reference run, uninterrupted (its wall time sets the kill window);
2. a chaos run in a fresh directory: launch the same command, SIGKILL it after a random delay,
   relaunch the very same command, ... at least --kills times, then let it finish;
3. checks: every launch after a kill resumed from the newest complete checkpoint present at the
   kill (so a kill costs at most one checkpoint interval of updates), the run ends with the
   requested number of updates in every run directory, the final model loads (safe mode) and
   samples finite values in [-1, 1], and its weights equal the reference run's (bit for bit, or
   the largest difference is reported).

    KERAS_BACKEND=jax python tools/chaos.py --workdir=/tmp/chaos --kills=5 --seed=0

Prints a Markdown summary (docs/reliability.md quotes it) and writes WORKDIR/chaos.json.
"""

import argparse
import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small sizes: a few minutes per app on 2 CPU cores.
TRAIN = ["--dataset=digits", "--train_steps=800", "--checkpoint_every=50", "--batch_size=64",
         "--warmup_steps=100", "--sample_every=100000", "--sampling_steps=8"]
TRAIN_INTERVAL = 50
DISTILL = ["--end_steps=1", "--updates_per_round=120", "--checkpoint_every=20",
           "--batch_size=64"]
DISTILL_INTERVAL = 20
PIPELINE = ["--quick", "--dataset=digits"]


def newest_checkpoints(workdir):
    """{run directory: newest complete checkpoint step} under workdir (index JSON readable)."""
    out = {}
    for index in glob.glob(os.path.join(workdir, "**", "checkpoints", "ckpt-*.json"),
                           recursive=True):
        run = os.path.dirname(os.path.dirname(index))
        try:
            with open(index) as f:
                step = int(json.load(f)["step"])
            weights = os.path.join(os.path.dirname(index), f"ckpt-{step:08d}.weights.h5")
            if not os.path.exists(weights):
                continue
        except (OSError, ValueError, KeyError):
            continue
        out[os.path.relpath(run, workdir)] = max(step, out.get(os.path.relpath(run, workdir), 0))
    return out


def complete_runs(workdir):
    """Run directories whose card says the run is complete (students) or trained (teachers)."""
    done = {}
    for card_path in glob.glob(os.path.join(workdir, "**", "card.json"), recursive=True):
        try:
            with open(card_path) as f:
                card = json.load(f)
        except (OSError, ValueError):
            continue
        done[os.path.relpath(os.path.dirname(card_path), workdir)] = card
    return done


def temp_files(workdir):
    return [p for p in glob.glob(os.path.join(workdir, "**", ".tmp-*"), recursive=True)]


def launch(cmd, log_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    log = open(log_path, "a")
    log.write(f"\n=== launch {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n")
    log.flush()
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log


def run_to_end(cmd, log_path):
    t0 = time.time()
    proc, log = launch(cmd, log_path)
    rc = proc.wait()
    log.close()
    if rc != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({rc}); see {log_path}")
    return time.time() - t0


RESUME_PATTERNS = [
    # Every resumed run (keras_pd.runs.resume_and_fit: a teacher or a distillation round):
    # "<dir>: resuming from the checkpoint of step N"
    re.compile(r"^(?P<dir>\S+): resuming from the checkpoint of step (?P<step>\d+)"),
]


def resumes_in(text, workdir):
    """[(run directory relative to workdir, step)] of every resume line in a launch's output."""
    out = []
    for line in text.splitlines():
        for pattern in RESUME_PATTERNS:
            m = pattern.match(line.strip())
            if not m:
                continue
            out.append((os.path.relpath(m.group("dir"), workdir), int(m.group("step"))))
    return out


# A checkpoint interval completed (fit verbose=2 prints one line each), or a pipeline stage.
PROGRESS = re.compile(r"^(\d+/\d+ - |== evaluate|== export)", re.M)


def wait_for_progress(proc, log_path, offset, limit=120.0):
    """Waits until a launch has written its first checkpoint (or reached evaluation), or ends."""
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < limit:
        with open(log_path) as f:
            f.seek(offset)
            if PROGRESS.search(f.read()):
                return
        time.sleep(0.2)


def chaos_run(name, cmd, workdir, window, kills, rng, log_path):
    """Kills `cmd` `kills` times: the first kill at a random moment of the start-up, the others
    a random delay in `window` = (lo, hi) seconds after the launch starts training."""
    events = []
    launches = 0
    t_start = time.time()
    open(log_path, "a").close()
    first_offset = os.path.getsize(log_path)
    while True:
        launches += 1
        offset = os.path.getsize(log_path)
        proc, log = launch(cmd, log_path)
        t0 = time.time()
        delay = None
        if len(events) == 0:
            delay = rng.uniform(1.0, 8.0)  # during imports or compilation
        elif len(events) < kills:
            wait_for_progress(proc, log_path, offset)
            delay = rng.uniform(*window)
        try:
            rc = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            before = newest_checkpoints(workdir)
            tmp = temp_files(workdir)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            log.close()
            events.append(dict(at_s=round(time.time() - t0, 1), newest=before,
                               mid_write=bool(tmp), launch=launches))
            continue
        log.close()
        if rc != 0:
            raise SystemExit(f"error: {name} launch {launches} exited {rc}; see {log_path}")
        break
    total = time.time() - t_start
    # Each relaunch's resume lines: it must resume every run directory from the newest complete
    # checkpoint that existed when the previous launch was killed. Launch headers are counted
    # from this run's first one (the log may hold earlier runs).
    with open(log_path) as f:
        text = f.read()
    text = text[first_offset:]
    for event in events:
        begin = _launch_offset(text, event["launch"] + 1)
        end = _launch_offset(text, event["launch"] + 2)
        event["resumed"] = resumes_in(text[begin:end] if begin is not None else "", workdir)
    return events, launches, total


def _launch_offset(text, n):
    """Character offset of the n-th (1-based) '=== launch' header in a log, or None."""
    pos = -1
    for _ in range(n):
        pos = text.find("\n=== launch ", pos + 1)
        if pos < 0:
            return None
    return pos


def check_resumes(events, interval):
    """Per kill: resumed from the newest checkpoint at the kill? Updates redone (upper bound)."""
    rows = []
    for e in events:
        resumed = dict(e["resumed"])
        ok = True
        for run, step in resumed.items():
            newest = e["newest"].get(run, 0)
            if step != newest:
                ok = False
        rows.append(dict(at_s=e["at_s"], newest=e["newest"], resumed=resumed, ok=ok,
                         verified=bool(resumed),
                         mid_write=e["mid_write"], lost_at_most=interval))
    return rows


def load_and_sample(run_dir, num=16):
    """Loads a run directory (safe mode, card checked) and samples; returns (weights, samples)."""
    import numpy as np

    from keras_pd import checkpoint as ckpt

    model, card = ckpt.load_model(run_dir)
    noise = np.random.default_rng(0).standard_normal((num,) + model.data_shape).astype("float32")
    samples = model.sample(noise, card["sampling_steps"])
    if not (np.all(np.isfinite(samples)) and samples.min() >= -1 and samples.max() <= 1):
        raise SystemExit(f"error: samples of {run_dir} are not finite values in [-1, 1]")
    return [np.asarray(w) for w in model.get_weights()], samples


def compare(ref_dir, chaos_dir):
    import numpy as np

    wa, sa = load_and_sample(ref_dir)
    wb, sb = load_and_sample(chaos_dir)
    same = all(np.array_equal(a, b) for a, b in zip(wa, wb)) and np.array_equal(sa, sb)
    diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(wa, wb))
    return same, diff


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/keras_pd_chaos")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apps", default="train,distill,pipeline")
    parser.add_argument("--window_fraction", type=float, default=1 / 6,
                        help="kill delay after a launch starts training: uniform in [0, this "
                             "fraction of the reference run's wall time] (at least 4 s); lower "
                             "it when the run finishes before --kills kills")
    args = parser.parse_args(argv)
    if args.kills < 1:
        raise SystemExit("error: --kills must be >= 1")
    rng = random.Random(args.seed)
    os.makedirs(args.workdir, exist_ok=True)
    py = sys.executable
    apps = args.apps.split(",")
    results = {}

    teacher_ref = os.path.join(args.workdir, "ref_train")
    ref_log = os.path.join(args.workdir, "ref.log")

    def train_cmd(d):
        return [py, "-m", "apps.train", f"--workdir={d}", *TRAIN]

    def distill_cmd(d):
        return [py, "-m", "apps.distill", f"--teacher={teacher_ref}", f"--workdir={d}", *DISTILL]

    def pipeline_cmd(d):
        return [py, "-m", "apps.pipeline", f"--workdir={d}", *PIPELINE]

    # The distillation runs start from the reference teacher: train it first.
    times_path = os.path.join(args.workdir, "ref_times.json")
    ref_time = json.load(open(times_path)) if os.path.exists(times_path) else {}

    def reference(name, cmd):  # once per workdir: a reference must run uninterrupted
        if name not in ref_time:
            ref_time[name] = run_to_end(cmd, ref_log)
            with open(times_path, "w") as f:
                json.dump(ref_time, f)

    if "train" in apps or "distill" in apps:
        reference("train", train_cmd(teacher_ref))
    specs = {"train": (train_cmd, TRAIN_INTERVAL, "."),
             "distill": (distill_cmd, DISTILL_INTERVAL, "student_0001"),
             "pipeline": (pipeline_cmd, 100, "student_0001")}
    for name in apps:
        make_cmd, interval, final = specs[name]
        ref = teacher_ref if name == "train" else os.path.join(args.workdir, f"ref_{name}")
        reference(name, make_cmd(ref))
        chaos = os.path.join(args.workdir, f"chaos_{name}")
        log_path = os.path.join(args.workdir, f"chaos_{name}.log")
        # Kill window after the start-up: a fraction (default a sixth) of a full run, so that
        # the kills land at all stages and the run still needs >= `kills` relaunches.
        window = (0.0, max(4.0, ref_time[name] * args.window_fraction))
        load_before = os.getloadavg()
        events, launches, total = chaos_run(name, make_cmd(chaos), chaos, window, args.kills,
                                            rng, log_path)
        rows = check_resumes(events, interval)
        cards = complete_runs(chaos)
        ref_cards = complete_runs(ref)
        updates_ok = all(
            cards.get(run, {}).get("steps_trained") == c.get("steps_trained")
            for run, c in ref_cards.items() if "steps_trained" in c)
        same, diff = compare(os.path.join(ref, final), os.path.join(chaos, final))
        results[name] = dict(
            command=" ".join(make_cmd(chaos)[1:]), kills=len(events), launches=launches,
            reference_s=round(ref_time[name], 1), chaos_s=round(total, 1),
            kill_times_s=[e["at_s"] for e in events],
            kills_mid_checkpoint_write=sum(e["mid_write"] for e in events),
            resumed_from_newest=sum(r["ok"] for r in rows),
            resumes_verified=sum(r["verified"] for r in rows), per_kill=rows,
            updates_as_requested=updates_ok,
            steps_trained={run: c.get("steps_trained") for run, c in sorted(cards.items())},
            final_model_loads_and_samples=True, weights_equal_reference=same,
            max_abs_weight_diff=diff, leftover_tmp_files=len(temp_files(chaos)),
            checkpoint_interval=interval, kill_window_s=[round(w, 1) for w in window],
            load_average_1min_before_after=[round(load_before[0], 2),
                                            round(os.getloadavg()[0], 2)])
        print(json.dumps({name: {k: v for k, v in results[name].items() if k != "per_kill"}}),
              flush=True)

    import keras

    summary = dict(seed=args.seed, backend=keras.backend.backend(), kills_per_app=args.kills,
                   keras_version=keras.__version__, window_fraction=args.window_fraction,
                   machine=f"{os.cpu_count()}-core CPU", results=results)
    with open(os.path.join(args.workdir, "chaos.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print()
    print(f"Backend {summary['backend']}, keras {keras.__version__}, seed {args.seed}, "
          f"{summary['machine']}, kill window fraction {args.window_fraction:.3g}; 1-min load "
          f"average before/after each app: "
          + ", ".join(f"{n} {r['load_average_1min_before_after']}" for n, r in results.items()))
    print()
    print("| app | kills | launches | resumed from newest checkpoint | kills during a checkpoint "
          "write | updates as requested | final model loads and samples | weights = "
          "uninterrupted run | reference / chaos wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = False
    for name, r in results.items():
        print(f"| {name} | {r['kills']} | {r['launches']} | {r['resumed_from_newest']}/"
              f"{r['kills']} ({r['resumes_verified']} with a resume line) | "
              f"{r['kills_mid_checkpoint_write']} | "
              f"{'yes' if r['updates_as_requested'] else 'NO'} | yes | "
              f"{'bit-identical' if r['weights_equal_reference'] else r['max_abs_weight_diff']}"
              f" | {r['reference_s']} / {r['chaos_s']} |")
        failed |= (r["resumed_from_newest"] != r["kills"] or not r["updates_as_requested"]
                   or r["kills"] < args.kills)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
