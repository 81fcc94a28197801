"""Export of the whole N-step sampler to SavedModel and LiteRT (keras_pd.export, apps.export,
tools/litert_sample.py), on every backend: TensorFlow and JAX export; torch gives a clear error."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_pd import checkpoint as ckpt
from keras_pd import export
from keras_pd.diffusion import DiffusionModel
from keras_pd.networks import MLPDenoiser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
CAN_EXPORT = BACKEND in ("tensorflow", "jax")
needs_export = pytest.mark.skipif(not CAN_EXPORT, reason=f"no export on {BACKEND}")
SHAPE = (8, 8, 1)
STEPS = 4
PARITY = 1e-4


def _tiny_run(directory, num_classes=None, seed=0, label_dropout=0.0):
    """A tiny x-prediction model with perturbed weights (its output layer is zero-initialised),
    saved as a run directory whose card asks for 4 sampling steps."""
    net = MLPDenoiser(out_dim=1, width=32, num_blocks=1, emb_dim=16, dropout=0.1,
                      num_classes=num_classes)
    model = DiffusionModel(net, SHAPE, parameterization="x", num_classes=num_classes, seed=seed,
                           label_dropout=label_dropout)
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        value = keras.ops.convert_to_numpy(v)
        v.assign(value + 0.2 * rng.standard_normal(value.shape).astype("float32"))
    ckpt.save_model(directory, model, {
        "kind": "student", "sampling_steps": STEPS, "data_shape": list(SHAPE),
        "parameterization": "x", "num_classes": num_classes})
    return str(directory)


def _noise(batch, seed=1):
    return np.random.default_rng(seed).standard_normal((batch,) + SHAPE).astype("float32")


def _run_litert(path, noise, labels=None):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path, num_threads=1).get_signature_runner("serving_default")
    feed = {"noise": noise}
    if labels is not None:
        feed["labels"] = labels
    return runner(**feed)["samples"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _tiny_run(tmp_path_factory.mktemp("export") / "student")


@pytest.fixture(scope="module")
def reference(run_dir):
    """The Keras sampler's output for the noise used by the tests (batch 2)."""
    model, _ = ckpt.load_model(run_dir)
    noise = _noise(2)
    samples = model.sample(noise, STEPS)
    assert np.abs(samples).max() <= 1.0
    assert 0.05 < float(np.mean(np.abs(samples) < 0.999)), "samples all clipped: weak test"
    return noise, samples


@pytest.fixture(scope="module")
def litert_f32(run_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("litert") / "student.tflite")
    meta = export.export_sampler(run_dir, path, format="litert", batch_size=2)
    return path, meta


# -- argument checks: every backend, before any model is loaded ------------------------------

@pytest.mark.parametrize("kwargs,named", [
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"format": "coreml"}, "format"),
    ({"format": "onnx"}, "onnx"),  # output without .onnx
    ({"quantize": "int4", "format": "litert"}, "quantize"),
    ({"quantize": "float16"}, "quantize"),  # SavedModel: no quantization
    ({"batch_size": 0}, "batch_size"),
    ({"format": "litert"}, "tflite"),  # output without .tflite
])
def test_bad_arguments_name_themselves(run_dir, tmp_path, kwargs, named):
    with pytest.raises(ValueError, match=named):
        export.export_sampler(run_dir, str(tmp_path / "out"), **kwargs)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.backend_free
def test_output_folder_must_exist(run_dir, tmp_path):
    with pytest.raises(ValueError, match="folder .*missing.* does not exist"):
        export.export_sampler(run_dir, str(tmp_path / "missing" / "m.tflite"), format="litert")
    assert os.listdir(tmp_path) == []


@pytest.mark.backend_free
def test_metadata_path():
    assert export.metadata_path("a/b.tflite") == "a/b.json"
    assert export.metadata_path("a/b.onnx") == "a/b.json"
    assert export.metadata_path("a/saved/") == "a/saved.json"


@pytest.mark.skipif(BACKEND != "torch", reason="torch only")
def test_torch_gives_a_clear_error(run_dir, tmp_path):
    if export._litert_torch_available():
        pytest.skip("litert-torch is installed")
    for fmt, name in (("saved_model", "sm"), ("litert", "m.tflite")):
        with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow or jax"):
            export.export_sampler(run_dir, str(tmp_path / name), format=fmt)
    assert os.listdir(tmp_path) == []


# -- SavedModel --------------------------------------------------------------------------------

@needs_export
def test_saved_model_matches_keras_sampler(run_dir, reference, tmp_path):
    import tensorflow as tf

    noise, want = reference
    out = tmp_path / "sm"
    meta = export.export_sampler(run_dir, str(out), batch_size=2)
    assert meta["steps"] == STEPS and meta["backend"] == BACKEND and not meta["class_conditional"]
    assert json.load(open(tmp_path / "sm.json"))["source_checkpoint"] == os.path.abspath(run_dir)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporaries left
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"noise"}
    spec = serve.structured_input_signature[1]["noise"]
    assert spec.shape == (2,) + SHAPE and spec.dtype == tf.float32
    got = serve(noise=tf.constant(noise))
    assert list(got) == ["samples"]
    err = float(np.abs(got["samples"].numpy() - want).max())
    print(f"\n[{BACKEND}] SavedModel float32 max |diff| vs model.sample: {err:.2e}")
    assert err < PARITY
    # Overwriting an export replaces it.
    export.export_sampler(run_dir, str(out), steps=1, batch_size=2)
    assert json.load(open(tmp_path / "sm.json"))["steps"] == 1


# -- LiteRT ------------------------------------------------------------------------------------

@needs_export
def test_litert_matches_keras_sampler_with_builtin_ops_only(litert_f32, reference):
    from ai_edge_litert.interpreter import Interpreter

    path, meta = litert_f32
    noise, want = reference
    assert meta["bytes"] == os.path.getsize(path)
    assert meta["inputs"] == {"noise": {"shape": [2, 8, 8, 1], "dtype": "float32"}}
    # The converter ran with TFLITE_BUILTINS only; the runtime (no Flex delegate) loads it.
    assert not [op for op in meta["litert_ops"] if op.startswith("Flex") or op == "CUSTOM"]
    interpreter = Interpreter(model_path=path)
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["noise"], "outputs": ["samples"]}}
    runner = interpreter.get_signature_runner("serving_default")
    detail = runner.get_input_details()["noise"]
    assert list(detail["shape"]) == [2, 8, 8, 1] and detail["dtype"] == np.float32
    got = runner(noise=noise)["samples"]
    err = float(np.abs(got - want).max())
    print(f"\n[{BACKEND}] LiteRT float32 max |diff| vs model.sample: {err:.2e} "
          f"({meta['bytes']} bytes)")
    assert got.dtype == np.float32 and got.shape == want.shape
    assert err < PARITY


@needs_export
@pytest.mark.parametrize("quantize", ["float16", "dynamic_int8"])
def test_quantized_litert_runs(run_dir, reference, litert_f32, tmp_path, quantize):
    noise, want = reference
    path = str(tmp_path / f"{quantize}.tflite")
    meta = export.export_sampler(run_dir, path, format="litert", quantize=quantize, batch_size=2)
    assert meta["quantize"] == quantize
    got = _run_litert(path, noise)
    assert np.all(np.isfinite(got)) and np.abs(got).max() <= 1.0
    # The quantization's own error: against the float32 file of the same sampler.
    err = float(np.abs(got - _run_litert(litert_f32[0], noise)).max())

    # What this quantization can do to these samples, emulated in Keras: the weights rounded
    # as the file stores them (float16; int8 per output channel, scale max|w| / 127).
    # Exported from JAX, a float16 file also holds the time path's constants in float16
    # (docs/export.md), emulated by the network's time input rounded to float16.
    def emulated(round_weights, round_time=False):
        model, _ = ckpt.load_model(run_dir)
        model.set_weights([round_weights(w) for w in model.get_weights()])
        if round_time:
            exact = model.network_time
            model.network_time = lambda lam: keras.ops.cast(
                keras.ops.cast(exact(lam), "float16"), "float32")
        return model.sample(noise, STEPS)

    def int8_per_channel(w):
        if w.ndim < 2:
            return w
        scale = np.abs(w).max(axis=tuple(range(w.ndim - 1)), keepdims=True) / 127.0
        return (np.round(w / scale) * scale).astype(w.dtype)

    if quantize == "float16":
        rounded = emulated(lambda w: w.astype(np.float16).astype(w.dtype), BACKEND == "jax")
    else:
        rounded = emulated(int8_per_channel)
    scale = float(np.abs(rounded - want).max())
    # Measured over 3-4 weight draws per backend, err / scale was 0.8-2.1 (int8 adds activation
    # rounding; TensorFlow folds the time path into float16 constants) and 4.8-7.1 for JAX
    # float16 (the emulation covers its time constants only in part): bounds 4x and 16x.
    bound = (16.0 if quantize == "float16" and BACKEND == "jax" else 4.0) * scale
    print(f"\n[{BACKEND}] LiteRT {quantize} max |diff| vs float32 LiteRT: {err:.2e} "
          f"(emulated rounding {scale:.2e}, bound {bound:.2e}; "
          f"{meta['bytes']} bytes vs {litert_f32[1]['bytes']} float32)")
    assert 0 < scale and err <= bound
    # The bound still tells a quantized sampler from a wrong one: one step fewer moves the
    # samples by far more.
    model, _ = ckpt.load_model(run_dir)
    assert bound < 0.5 * float(np.abs(model.sample(noise, STEPS - 1) - want).max())


@needs_export
def test_class_conditional_export_takes_labels(tmp_path):
    run = _tiny_run(tmp_path / "cond", num_classes=3, seed=3)
    model, _ = ckpt.load_model(run)
    noise = _noise(3, seed=2)
    labels = np.array([0, 1, 2], "int32")
    want = model.sample(noise, 2, labels=labels)
    path = str(tmp_path / "cond.tflite")
    meta = export.export_sampler(run, path, steps=2, format="litert", batch_size=3)
    assert meta["class_conditional"] and meta["num_classes"] == 3
    assert meta["inputs"]["labels"] == {"shape": [3], "dtype": "int32"}
    got = _run_litert(path, noise, labels)
    err = float(np.abs(got - want).max())
    print(f"\n[{BACKEND}] class-conditional LiteRT float32 max |diff|: {err:.2e}")
    assert err < PARITY
    other = _run_litert(path, noise, np.array([2, 0, 1], "int32"))
    assert np.abs(other - got).max() > 1e-3  # the labels matter


@needs_export
def test_guided_export_takes_guidance(tmp_path):
    run = _tiny_run(tmp_path / "guided", num_classes=3, seed=5, label_dropout=0.1)
    model, _ = ckpt.load_model(run)
    noise, labels = _noise(3, seed=4), np.array([0, 1, 2], "int32")
    w = np.array([0.0, 1.0, 3.0], "float32")
    want = model.sample(noise, 2, labels=labels, guidance=w)
    path = str(tmp_path / "guided.tflite")
    meta = export.export_sampler(run, path, steps=2, format="litert", batch_size=3)
    assert meta["guidable"] and meta["inputs"]["guidance"] == {"shape": [3], "dtype": "float32"}
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path, num_threads=1).get_signature_runner("serving_default")
    got = runner(noise=noise, labels=labels, guidance=w)["samples"]
    err = float(np.abs(got - want).max())
    print(f"\n[{BACKEND}] guided LiteRT float32 max |diff|: {err:.2e}")
    assert err < PARITY
    unguided = runner(noise=noise, labels=labels, guidance=np.zeros(3, "float32"))["samples"]
    assert np.abs(unguided[2] - got[2]).max() > 1e-3  # w matters
    np.testing.assert_allclose(unguided[0], got[0], atol=1e-6)  # w = 0 in both


# -- ONNX: TensorFlow (tf2onnx) and torch (torch.onnx); JAX needs jax2onnx ------------------

ONNX_MISSING = export._missing_modules(export.ONNX_PACKAGES[BACKEND])


def _run_onnx(path, noise, labels=None):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {"noise": noise} if labels is None else {"noise": noise, "labels": labels}
    return session.run(["samples"], feed)[0]


@pytest.mark.skipif(bool(ONNX_MISSING), reason=f"ONNX exporter not installed: {ONNX_MISSING}")
def test_onnx_matches_keras_sampler(run_dir, reference, tmp_path):
    noise, want = reference
    path = str(tmp_path / "student.onnx")
    meta = export.export_sampler(run_dir, path, format="onnx", batch_size=2)
    assert meta["format"] == "onnx" and meta["steps"] == STEPS
    assert os.path.getsize(path) == meta["bytes"]
    assert json.load(open(tmp_path / "student.json"))["onnx_ops"] == meta["onnx_ops"]
    got = _run_onnx(path, noise)
    err = float(np.abs(got - want).max())
    print(f"\n[{BACKEND}] ONNX float32 max |diff| vs model.sample: {err:.2e}")
    assert got.shape == noise.shape and err < PARITY
    assert sorted(os.listdir(tmp_path)) == ["student.json", "student.onnx"]  # no temporaries


@pytest.mark.skipif(bool(ONNX_MISSING), reason=f"ONNX exporter not installed: {ONNX_MISSING}")
def test_onnx_class_conditional_takes_labels(tmp_path):
    run = _tiny_run(tmp_path / "cond", num_classes=3, seed=3)
    model, _ = ckpt.load_model(run)
    noise, labels = _noise(3, seed=2), np.array([0, 1, 2], "int32")
    want = model.sample(noise, 2, labels=labels)
    path = str(tmp_path / "cond.onnx")
    export.export_sampler(run, path, steps=2, format="onnx", batch_size=3)
    got = _run_onnx(path, noise, labels)
    assert float(np.abs(got - want).max()) < PARITY
    assert np.abs(_run_onnx(path, noise, np.array([2, 0, 1], "int32")) - got).max() > 1e-3


@pytest.mark.skipif(not ONNX_MISSING, reason="the ONNX exporter is installed")
def test_onnx_without_its_packages_names_them(run_dir, tmp_path):
    with pytest.raises(ValueError, match="ONNX export on .* needs"):
        export.export_sampler(run_dir, str(tmp_path / "m.onnx"), format="onnx")
    assert os.listdir(tmp_path) == []


# -- the runtime-only example and the app ----------------------------------------------------

@pytest.mark.backend_free
def test_litert_sample_tool_imports_no_framework():
    with open(os.path.join(ROOT, "tools", "litert_sample.py")) as f:
        source = f.read()
    for name in ("tensorflow", "keras", "jax", "torch"):
        assert f"import {name}" not in source and f"from {name}" not in source


@needs_export
@pytest.mark.slow
def test_litert_sample_tool_runs_without_tensorflow(litert_f32, reference, tmp_path):
    path, _ = litert_f32
    png, npy = tmp_path / "grid.png", tmp_path / "s.npy"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "litert_sample.py"), f"--model={path}",
         f"--output={png}", f"--npy={npy}", "--num=3", "--seed=1", "--benchmark=2",
         "--print_modules"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["frameworks_imported"] == []
    assert png.exists() and png.stat().st_size > 0
    samples = np.load(npy)
    assert samples.shape == (3,) + SHAPE
    # Same seeded noise as `_noise(2, seed=1)` for the first two samples.
    assert np.abs(samples[:2] - reference[1]).max() < PARITY


@pytest.mark.one_backend("torch")  # the app's flags and messages; export itself is tested per backend above
@pytest.mark.slow
def test_app_exports_or_explains(run_dir, tmp_path):
    out = tmp_path / "app.tflite"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "apps.export", f"--checkpoint={run_dir}", "--steps=2",
         "--format=litert", "--quantize=dynamic_int8", f"--output={out}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    if CAN_EXPORT:
        assert proc.returncode == 0, proc.stderr[-3000:]
        meta = json.load(open(tmp_path / "app.json"))
        assert meta["steps"] == 2 and meta["quantize"] == "dynamic_int8"
        assert out.stat().st_size == meta["bytes"]
    else:
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1] == f"error: {export.TORCH_ERROR}"
