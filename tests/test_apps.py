"""The command-line apps, run as a user runs them: subprocesses on this backend."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every test here starts app subprocesses: not in the `-m "not slow"` tier.
pytestmark = pytest.mark.slow


def run_app(app, *flags, check=True, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", f"apps.{app}", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"apps.{app} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def card(path):
    with open(os.path.join(path, "card.json")) as f:
        return json.load(f)


TINY = ["--dataset=toy2d", "--batch_size=64", "--warmup_steps=10", "--sampling_steps=8",
        "--checkpoint_every=20", "--sample_every=40"]


# Runs `python -m MODULE FLAGS...` (or `-c CODE`) in-process under an import hook, then prints
# one line: whether TensorFlow got imported, and whether Keras was loaded when it first was.
IMPORT_PROBE = r"""
import atexit, importlib.abc, json, runpy, sys
first = []
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and not first:
            first.append({"keras": "keras" in sys.modules,
                          "keras_torch_backend": "keras.src.backend.torch" in sys.modules})
        return None
sys.meta_path.insert(0, Probe())
atexit.register(lambda: print("IMPORTS " + json.dumps(
    {"tensorflow": "tensorflow" in sys.modules, "first": first[0] if first else None}),
    flush=True))
if sys.argv[1] == "-c":
    exec(sys.argv[2])
else:
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def probe_imports(backend, module, *flags):
    """(exit code, {"tensorflow": imported?, "first": state at TF's first import or None})."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)
    if backend == "torch":
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE, module, *flags], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("IMPORTS ")]
    assert lines, f"{module} on {backend} ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(lines[-1][len("IMPORTS "):])


def _backend():
    import keras

    return keras.backend.backend()


# Runs subprocesses on named backends: one pass of tools/run_tests.sh is enough (conftest.py).
backend_independent = pytest.mark.backend_free


@backend_independent
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_apps_do_not_import_tensorflow_on_jax_and_torch(backend):
    # Under torch, TensorFlow imported before Keras segfaults a default install (torch with
    # triton: keras_pd/tf_adapter.py); apps.common imported it first on every backend.
    code, imports = probe_imports(backend, "apps.sample", "--help")
    assert code in (0, 1) and not imports["tensorflow"], imports


@backend_independent
def test_tensorflow_comes_after_keras_under_torch(tmp_path):
    # A training run imports TensorFlow for the TensorBoard writer where it is installed.
    code, imports = probe_imports("torch", "apps.train", f"--workdir={tmp_path}/run",
                                  "--train_steps=20", *TINY)
    assert code == 0 and card(f"{tmp_path}/run")["steps_trained"] == 20
    if imports["tensorflow"]:
        assert imports["first"] == {"keras": True, "keras_torch_backend": True}, imports


@backend_independent
def test_tfds_loading_imports_tensorflow_after_keras_under_torch(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    code, imports = probe_imports("torch", "-c", (
        "from keras_pd import data\n"
        "try:\n"
        f"    data.load_dataset('tfds:no_such_tfds_set', data_dir={str(tmp_path)!r})\n"
        "except data.DatasetError as e:\n"
        "    print('DatasetError', e)\n"))
    assert code == 0 and imports["tensorflow"]
    assert imports["first"] == {"keras": True, "keras_torch_backend": True}, imports


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("apps") / "teacher")
    run_app("train", f"--workdir={workdir}", "--train_steps=40", *TINY)
    return workdir


def test_train_writes_model_card_samples_and_logs(tiny_teacher):
    c = card(tiny_teacher)
    assert c["steps_trained"] == 40 and c["parameterization"] == "x"
    assert c["data_shape"] == [2] and c["sampling_steps"] == 8 and c["kind"] == "teacher"
    for name in ("model.keras", "log.csv", "samples/step_00000040.png"):
        assert os.path.exists(os.path.join(tiny_teacher, name)), name
    assert not [f for f in os.listdir(tiny_teacher) if f.startswith(".tmp")]


@pytest.mark.one_backend("torch")  # flag handling: one pass is enough
def test_train_with_sample_every_zero_writes_no_grids(tmp_path):
    workdir = str(tmp_path / "run")
    flags = [f for f in TINY if not f.startswith("--sample_every")]
    proc = run_app("train", f"--workdir={workdir}", "--train_steps=40", "--sample_every=0",
                   *flags)
    assert proc.returncode == 0
    c = card(workdir)
    assert c["steps_trained"] == 40 and c["config"]["sample_every"] == 0
    assert os.path.exists(os.path.join(workdir, "model.keras"))
    samples = os.path.join(workdir, "samples")
    assert not os.path.isdir(samples) or not os.listdir(samples)


@pytest.mark.one_backend("tensorflow")  # --jit_compile is XLA there; samplers' compiled = uncompiled is tested per backend
def test_sample_app_is_reproducible_from_a_noise_file_compiled_or_not(tiny_teacher, tmp_path):
    from keras_pd import checkpoint as ckpt

    noise = np.random.default_rng(0).standard_normal((10, 2)).astype("float32")
    np.save(tmp_path / "noise.npy", noise)
    for name, extra in (("a", []), ("c", ["--jit_compile"])):
        run_app("sample", f"--checkpoint={tiny_teacher}", f"--noise_file={tmp_path}/noise.npy",
                f"--output={tmp_path}/{name}", *extra)
    a, c = (np.load(tmp_path / f"{n}.npz")["samples"] for n in "ac")
    # The app's samples are the library's from the same checkpoint and noise (card's 8 steps).
    model, _ = ckpt.load_model(tiny_teacher)
    np.testing.assert_allclose(a, model.sample(noise, 8, jit_compile=False), atol=1e-5)
    assert a.shape == (10, 2)
    np.testing.assert_allclose(c, a, atol=1e-5)  # XLA (a job this small defaults to the graph)
    assert a.min() >= -1 and a.max() <= 1
    assert os.path.exists(tmp_path / "a.png")


@pytest.mark.one_backend("torch")  # resume is checked per backend in test_reliability; the
# torch pass is the shortest (this took 116 s on TensorFlow's)
def test_killed_training_resumes_where_it_stopped(tmp_path):
    workdir = str(tmp_path / "run")
    flags = [f"--workdir={workdir}", "--train_steps=200", *TINY]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-m", "apps.train", *flags], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckdir = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ckdir) and any(f.startswith("ckpt-") and f.endswith(".json")
                                        and "00000040" <= f[5:13] for f in os.listdir(ckdir)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # (a ".tmp-PID-ckpt-..." file is a checkpoint the kill interrupted: not a checkpoint)
    killed_at = max(int(f[5:13]) for f in os.listdir(ckdir)
                    if f.startswith("ckpt-") and f.endswith(".json"))
    assert 40 <= killed_at < 200, killed_at
    run_app("train", *flags)
    assert card(workdir)["steps_trained"] == 200
    # The rerun logged only the epochs after the checkpoint: it continued, not restarted.
    with open(os.path.join(workdir, "log.csv")) as f:
        epochs = [int(line.split(",")[0]) for line in f if line[0].isdigit()]
    assert epochs[-1] == 9 and len(epochs) <= 10 + 1


@pytest.mark.one_backend("torch")
def test_distill_app_cascade_and_sampling(tiny_teacher, tmp_path):
    out = str(tmp_path / "students")
    run_app("distill", f"--teacher={tiny_teacher}", f"--workdir={out}", "--end_steps=2",
            "--updates_per_round=20", "--checkpoint_every=10", "--batch_size=64")
    # The paper's recipe by default: the round to 2 steps gets twice the updates.
    for steps, updates in ((4, 20), (2, 40)):
        c = card(os.path.join(out, f"student_{steps:04d}"))
        assert c["sampling_steps"] == steps and c["complete"] and c["steps_trained"] == updates
    run_app("sample", f"--checkpoint={out}/student_0002", f"--output={tmp_path}/s",
            "--num_samples=5")
    assert np.load(tmp_path / "s.npz")["samples"].shape == (5, 2)


@backend_independent
def test_evaluate_app_prints_the_table_it_writes(tiny_teacher, tmp_path):
    proc = run_app("evaluate", f"--workdir={tmp_path}", f"--teacher={tiny_teacher}",
                   "--num_samples=50")
    with open(tmp_path / "results.md") as f:
        table = f.read()
    assert "| teacher, DDIM |" in table and table.strip() in proc.stdout
    assert os.path.exists(tmp_path / "results.png")
    # --gammas= (an empty list): no ancestral samplings, the other rows unchanged.
    proc = run_app("evaluate", f"--workdir={tmp_path}/no_ancestral", f"--teacher={tiny_teacher}",
                   "--num_samples=50", "--gammas=")
    with open(tmp_path / "results.json") as f:
        full = json.load(f)
    with open(tmp_path / "no_ancestral" / "results.json") as f:
        lean = json.load(f)
    assert any(k.startswith("ancestral_") for k in full["cells"])
    assert set(lean["cells"]) == {k for k in full["cells"] if not k.startswith("ancestral_")}
    assert not lean["table"]["rows"]["ancestral"] and full["table"]["rows"]["ancestral"]
    for key, cell in lean["cells"].items():  # the same noise seed: the same samples and scores
        assert cell["metric"] == pytest.approx(full["cells"][key]["metric"], rel=1e-5)


# Bad input (wrong flags, files, directories): tests/test_reliability.py, one test per row of
# the table in docs/reliability.md.


@backend_independent
def test_resume_with_other_parameterization_is_refused(tiny_teacher):
    proc = run_app("train", f"--workdir={tiny_teacher}", "--train_steps=60",
                   "--parameterization=v", *TINY, check=False)
    assert proc.returncode == 2 and "parameterization" in proc.stderr
    assert card(tiny_teacher)["steps_trained"] == 40


@pytest.mark.one_backend("torch")
def test_checkpoint_from_another_backend_resumes_here(tmp_path):
    import keras

    backends = ["tensorflow", "jax", "torch"]
    other = backends[(backends.index(keras.backend.backend()) + 1) % 3]
    workdir = str(tmp_path / "run")
    flags = [f"--workdir={workdir}", *TINY]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=other)
    subprocess.run([sys.executable, "-m", "apps.train", "--train_steps=40", *flags], cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=600)
    assert card(workdir)["backend"] == other
    run_app("train", "--train_steps=60", *flags)
    c = card(workdir)
    assert c["steps_trained"] == 60 and c["backend"] == keras.backend.backend()
