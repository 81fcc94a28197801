"""Export of a model's whole N-step sampler: SavedModel (serving), LiteRT (mobile), ONNX.

`export_sampler` saves one function: the deterministic N-step DDIM sampler of a run directory's
model, x_hat clipped to [-1, 1] at every step, with the loop unrolled so that TFLite needs its
built-in ops only (no Flex / SELECT_TF_OPS):

    inputs:  noise   float32 [B, *data_shape]   standard normal z_1
             labels  int32   [B]                only for class-conditional models
             guidance float32 [B]               only for guidable models (label dropout, or
                                                a guided student): the guidance weight w
    outputs: samples float32 [B, *data_shape]   in [-1, 1]

B (`batch_size`) and N (`steps`) are fixed at export time. A JSON file beside the output
describes it (see `metadata_path`).

This is the project's one backend-aware module:

* TensorFlow: a tf.function around the Keras sampler (through `keras.export.ExportArchive`).
* JAX: jax2tf, through the same ExportArchive (a SavedModel holding the StableHLO function);
  LiteRT then converts that SavedModel with `tf.lite.TFLiteConverter.from_saved_model`.
* PyTorch: LiteRT through `litert_torch` when it is installed (Keras' own torch exporter);
  otherwise a ValueError says what to do.
* ONNX, through Keras' own ONNX exporter: tf2onnx on TensorFlow, `torch.onnx` on PyTorch,
  jax2onnx on JAX (when installed). The graph's inputs and output are then renamed to the
  interface's names, so ONNX, SavedModel and LiteRT files are called the same way.

TensorFlow is imported lazily, inside the functions that need it, through
`keras_pd.tf_adapter` (after Keras, quietly).
"""

import os
import shutil
import tempfile
import time

import keras

from keras_pd import checkpoint as ckpt
from keras_pd.checks import check_positive_int
from keras_pd.schedules import check_steps
from keras_pd.tf_adapter import has_tensorflow, import_tensorflow

FORMATS = ("saved_model", "litert", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic_int8")
SIGNATURE = "serving_default"
TORCH_ERROR = ("export needs KERAS_BACKEND=tensorflow or jax (or pip install litert-torch for "
               "torch); --format=onnx works on torch")
ONNX_PACKAGES = {"tensorflow": "tf2onnx onnx onnxruntime", "torch": "onnx onnxscript onnxruntime",
                 "jax": "jax2onnx onnx onnxruntime"}


def check_format(fmt):
    """Raises ValueError naming `format` when `fmt` is not one of FORMATS."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def check_quantize(quantize, fmt):
    """Raises ValueError naming `quantize` when it is unknown or asked of a SavedModel."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"unknown quantize {quantize!r}; expected one of {', '.join(QUANTIZATIONS)}")
    if quantize != "none" and fmt != "litert":
        raise ValueError(f"quantize={quantize!r} applies to format='litert' only")
    return quantize


def metadata_path(output):
    """Where the JSON description of an export goes: beside it, `.tflite` replaced by `.json`.

    out/student.tflite -> out/student.json (also for .onnx);
    out/student_savedmodel -> out/student_savedmodel.json
    """
    output = os.fspath(output).rstrip(os.sep)
    root, ext = os.path.splitext(output)
    return (root if ext in (".tflite", ".onnx") else output) + ".json"


def _litert_torch_available():
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        return False
    return True


def _missing_modules(names):
    import importlib.util

    return [n for n in names.split() if importlib.util.find_spec(n) is None]


def _check_backend(fmt, quantize):
    backend = keras.backend.backend()
    if fmt == "onnx":
        missing = _missing_modules(ONNX_PACKAGES.get(backend, "onnx"))
        if backend not in ONNX_PACKAGES:
            raise ValueError(f"ONNX export does not support KERAS_BACKEND={backend}")
        if missing:
            hint = (" (or use KERAS_BACKEND=tensorflow or torch)" if backend == "jax" else "")
            raise ValueError(f"ONNX export on {backend} needs {', '.join(missing)}: "
                             f"pip install 'keras-pd[onnx]'{hint}")
        return backend
    if backend in ("tensorflow", "jax"):
        return backend
    if backend == "torch" and fmt == "litert" and _litert_torch_available():
        if quantize != "none":
            raise ValueError("quantize needs KERAS_BACKEND=tensorflow or jax (the torch export "
                             "through litert-torch writes float32 only)")
        return backend
    raise ValueError(TORCH_ERROR if backend == "torch"
                     else f"export does not support KERAS_BACKEND={backend}; {TORCH_ERROR}")


def interface(model, batch_size):
    """The exported function's inputs and outputs: {name: {"shape": [...], "dtype": ...}}."""
    shape = [int(batch_size)] + list(model.data_shape)
    inputs = {"noise": {"shape": shape, "dtype": "float32"}}
    if model.num_classes:
        inputs["labels"] = {"shape": [int(batch_size)], "dtype": "int32"}
    if model.guidable:
        inputs["guidance"] = {"shape": [int(batch_size)], "dtype": "float32"}
    return inputs, {"samples": {"shape": shape, "dtype": "float32"}}


def _serving_fn(sampler, class_conditional, guidable=False):
    """The function exported: named arguments in, {"samples": ...} out."""
    if guidable:
        def serve(noise, labels, guidance):
            return {"samples": sampler({"noise": noise, "labels": labels,
                                        "guidance": guidance})}
    elif class_conditional:
        def serve(noise, labels):
            return {"samples": sampler({"noise": noise, "labels": labels})}
    else:
        def serve(noise):
            return {"samples": sampler({"noise": noise})}
    return serve


def _write_saved_model(model, sampler, path, batch_size):
    """Writes a SavedModel with one signature, SIGNATURE, from the TensorFlow or JAX backend."""
    tf = import_tensorflow()

    inputs, _ = interface(model, batch_size)
    signature = [tf.TensorSpec(spec["shape"], spec["dtype"], name=name)
                 for name, spec in inputs.items()]
    archive = keras.export.ExportArchive()
    archive.track(model)
    kwargs = {}
    if keras.backend.backend() == "jax":
        # Static: weights become constants of the jax2tf function, and no variable (the seed
        # generators' uint32 states) is written back, which TFLite could not convert.
        kwargs["is_static"] = True
    archive.add_endpoint(SIGNATURE, _serving_fn(sampler, bool(model.num_classes), model.guidable),
                         signature,
                         **kwargs)
    archive.write_out(path, verbose=False)


def _convert_to_litert(saved_model_dir, quantize):
    """Converts a SavedModel's SIGNATURE to TFLite flatbuffer bytes, built-in ops only."""
    tf = import_tensorflow()

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic_int8":  # weights int8, activations float (dynamic range)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as e:  # ConverterError: typically an op with no TFLite built-in kernel
        lines = [line.strip() for line in str(e).splitlines()]
        hint = next((line for line in lines if line.startswith("TF Select ops:")), None)
        detail = hint or (lines[0][:300] if lines else type(e).__name__)
        raise ValueError(f"cannot convert the sampler to LiteRT built-in ops ({detail})") from e


def _export_positional(model, sampler, path, batch_size, fmt):
    """Keras' own `Model.export` (litert-torch's LiteRT, or ONNX) on the unrolled sampler."""
    inputs, _ = interface(model, batch_size)
    wrapper = _PositionalSampler(sampler, bool(model.num_classes), model.guidable,
                                 name="sampler_export")
    signature = [keras.InputSpec(shape=tuple(spec["shape"]), dtype=spec["dtype"])
                 for spec in inputs.values()]
    wrapper.export(path, format=fmt, input_signature=signature, verbose=False)


def _write_onnx(model, sampler, path, batch_size):
    """Exports the sampler to ONNX at `path`, its inputs and output renamed to `interface`'s."""
    import onnx

    _export_positional(model, sampler, path, batch_size, "onnx")
    proto = onnx.load(path)
    inputs, outputs = interface(model, batch_size)
    rename = dict(zip([i.name for i in proto.graph.input], inputs))
    rename.update(zip([o.name for o in proto.graph.output], outputs))
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = rename.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def check_onnx(path, model, batch_size):
    """Loads an exported .onnx with onnxruntime and checks its input and output names.

    Returns:
        The sorted ONNX op types it uses.
    """
    import onnx
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs, outputs = interface(model, batch_size)
    have = (sorted(i.name for i in session.get_inputs()),
            sorted(o.name for o in session.get_outputs()))
    if have != (sorted(inputs), sorted(outputs)):
        raise ValueError(f"exported ONNX inputs/outputs {have} differ from "
                         f"{(sorted(inputs), sorted(outputs))}")
    return sorted({node.op_type for node in onnx.load(path).graph.node})


class _PositionalSampler(keras.Model):
    """Positional (noise[, labels]) -> samples, as Keras' litert-torch and ONNX exporters trace."""

    def __init__(self, sampler, class_conditional, guidable=False, **kwargs):
        super().__init__(**kwargs)
        self.sampler = sampler
        self.class_conditional = class_conditional
        self.guidable = guidable
        self.built = True

    def call(self, noise, labels=None, guidance=None):
        inputs = {"noise": noise}
        if self.class_conditional:
            inputs["labels"] = labels
        if self.guidable:
            inputs["guidance"] = guidance
        return self.sampler(inputs)


def _interpreter(content):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the LiteRT runtime ships with TensorFlow too
        tf = import_tensorflow()

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_content=content)


def check_litert(content, model, batch_size, check_names=True):
    """Loads a .tflite (bytes) and checks its signature and that it holds no Flex op.

    `check_names=False` (the litert-torch path, whose tensor names are its own) checks that
    there is one signature only.

    Returns:
        The sorted names of the ops it uses.

    Raises:
        ValueError: when the signature or the ops are not what `export_sampler` promises.
    """
    interpreter = _interpreter(content)
    inputs, outputs = interface(model, batch_size)
    signatures = interpreter.get_signature_list()
    want = {SIGNATURE: {"inputs": sorted(inputs), "outputs": sorted(outputs)}}
    have = {k: {"inputs": sorted(v["inputs"]), "outputs": sorted(v["outputs"])}
            for k, v in signatures.items()}
    if (have != want) if check_names else (len(have) != 1):
        raise ValueError(f"exported LiteRT signatures {have} differ from {want}")
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    flex = [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    if flex:
        raise ValueError(f"exported LiteRT model needs non-built-in ops: {', '.join(flex)}")
    return ops


def _replace_dir(tmp, path):
    """Moves directory `tmp` to `path`, replacing what is there (an old export) last."""
    old = None
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise ValueError(f"output {path} exists and is not a directory")
        old = os.path.join(os.path.dirname(path), f".old-{os.getpid()}-{os.path.basename(path)}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_sampler(checkpoint_dir, output, steps=None, format="saved_model", quantize="none",
                   batch_size=1):
    """Exports a run directory's N-step DDIM sampler (x_hat clipped) as one function.

    Args:
        checkpoint_dir: a run directory (teacher workdir or student directory).
        output: a SavedModel directory (format "saved_model"), a `.tflite` file ("litert") or
            a `.onnx` file ("onnx").
        steps: N, the sampling steps (default: the model card's `sampling_steps`).
        format: "saved_model", "litert" or "onnx".
        quantize: "none", "float16" or "dynamic_int8" (int8 weights, float activations);
            LiteRT only.
        batch_size: B, fixed in the exported function.

    Returns:
        The metadata dict, also written as JSON to `metadata_path(output)`.

    Raises:
        ValueError: for a bad argument (the message names it), an unusable run directory, a
            backend that cannot export, or a model with ops LiteRT cannot run built in.
    """
    check_format(format)
    check_quantize(quantize, format)
    batch_size = check_positive_int(batch_size, "batch_size")
    if steps is not None:
        steps = check_steps(steps, "steps")
    if not output:
        raise ValueError("output must be a path")
    output = os.path.abspath(os.fspath(output)).rstrip(os.sep)
    if format == "litert" and not output.endswith(".tflite"):
        raise ValueError(f"output {output} must end in .tflite for format='litert'")
    if format == "onnx" and not output.endswith(".onnx"):
        raise ValueError(f"output {output} must end in .onnx for format='onnx'")
    if not os.path.isdir(os.path.dirname(output)):
        raise ValueError(f"output folder {os.path.dirname(output)} does not exist")
    backend = _check_backend(format, quantize)

    model, card = ckpt.load_model(checkpoint_dir)
    if steps is None:
        if card.get("sampling_steps") is None:
            raise ValueError(f"steps: the model card of {checkpoint_dir} names no sampling_steps; "
                             "pass steps")
        steps = check_steps(card["sampling_steps"], "steps")
    from keras_pd.samplers import Sampler

    sampler = Sampler(model, steps, "ddim", clip=True, unroll=True)
    parent = os.path.dirname(output)
    base = os.path.basename(output)
    start = time.time()
    if format == "saved_model":
        tmp = tempfile.mkdtemp(prefix=f".tmp-{base}-", dir=parent)
        try:
            shutil.rmtree(tmp)  # tf.saved_model.save creates the directory itself
            _write_saved_model(model, sampler, tmp, batch_size)
            _replace_dir(tmp, output)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        size = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, files in os.walk(output) for f in files)
        ops = None
    elif format == "onnx":
        def write_checked(tmp):
            _write_onnx(model, sampler, tmp, batch_size)
            return check_onnx(tmp, model, batch_size)

        ops = ckpt.atomic_write(output, write_checked)
        size = os.path.getsize(output)
    else:
        if backend == "torch":
            ckpt.atomic_write(output, lambda tmp: _export_positional(model, sampler, tmp,
                                                                     batch_size, "litert"))
            with open(output, "rb") as f:
                content = f.read()
        else:
            tmp = tempfile.mkdtemp(prefix=f".tmp-{base}-savedmodel-", dir=parent)
            try:
                saved = os.path.join(tmp, "saved_model")
                _write_saved_model(model, sampler, saved, batch_size)
                content = _convert_to_litert(saved, quantize)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        ops = check_litert(content, model, batch_size, check_names=backend != "torch")
        if backend != "torch":
            ckpt.atomic_write(output, lambda tmp: _write_bytes(tmp, content))
        size = len(content)

    inputs, outputs = interface(model, batch_size)
    meta = {
        "format": format,
        "path": output,
        "bytes": size,
        "signature": SIGNATURE,
        "inputs": inputs,
        "outputs": outputs,
        "steps": steps,
        "batch_size": batch_size,
        "sampler": "ddim",
        "clip": True,
        "quantize": quantize,
        "data_shape": list(model.data_shape),
        "class_conditional": bool(model.num_classes),
        "num_classes": model.num_classes,
        "guidable": model.guidable,
        "parameterization": model.parameterization,
        "source_checkpoint": os.path.abspath(checkpoint_dir),
        "source_kind": card.get("kind"),
        "backend": backend,
        "keras_version": keras.__version__,
        "export_seconds": round(time.time() - start, 2),
    }
    if ops is not None:
        meta["onnx_ops" if format == "onnx" else "litert_ops"] = ops
    ckpt.write_json(metadata_path(output), meta)
    return meta


def _write_bytes(path, content):
    with open(path, "wb") as f:
        f.write(content)


def runtime_format():
    """The format the current backend exports for mobile/edge, and why not when it cannot.

    LiteRT from TensorFlow, and from JAX when TensorFlow is installed (jax2tf and the converter
    live there), and from torch with litert-torch; else ONNX when its packages are installed.

    Returns:
        ("litert" | "onnx", None), or (None, a one-line reason).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow" or (backend == "torch" and _litert_torch_available()):
        return "litert", None
    if backend == "jax" and has_tensorflow():
        return "litert", None
    if backend in ONNX_PACKAGES and not _missing_modules(ONNX_PACKAGES[backend]):
        return "onnx", None
    if backend == "jax":
        return None, "LiteRT export from jax needs tensorflow: pip install 'keras-pd[litert]'"
    return None, (f"no exporter on KERAS_BACKEND={backend}: LiteRT needs tensorflow or jax, "
                  "ONNX needs pip install 'keras-pd[onnx]'")


def measure_latency(path, runs=50, threads=2, warmup=3, seed=0):
    """Median and 10th/90th percentile latency (ms) of one call of an exported .tflite / .onnx.

    Runs the file under its bare runtime (LiteRT interpreter or onnxruntime) with `threads`
    threads, on seeded standard normal noise (and labels 0) of the exported batch size.

    Returns:
        {"median_ms", "p10_ms", "p90_ms", "runs", "threads"}.
    """
    import numpy as np

    meta = ckpt.read_json(metadata_path(path))
    rng = np.random.default_rng(seed)
    feed = {name: (rng.standard_normal(spec["shape"]).astype("float32") if name == "noise"
                   else np.full(spec["shape"], 1 if name == "guidance" else 0, spec["dtype"]))
            for name, spec in meta["inputs"].items()}
    if path.endswith(".onnx"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        call = lambda: session.run(None, feed)  # noqa: E731
    else:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            tf = import_tensorflow()

            Interpreter = tf.lite.Interpreter
        runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner(SIGNATURE)
        call = lambda: runner(**feed)  # noqa: E731
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return {"median_ms": float(median), "p10_ms": float(p10), "p90_ms": float(p90),
            "runs": runs, "threads": threads}

