"""What a benchmark records about its machine: CPU, memory, matmul peaks, threads, device, versions.

Shared by tools/bench.py and the other benchmarks (run as scripts: `tools/` is on sys.path).
"""

import platform
import resource
import statistics
import time

import numpy as np


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rss_mb():
    """(peak RSS since start, current RSS) of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux
    current = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return {"peak": round(peak, 1), "current": None if current is None else round(current, 1)}


def numpy_matmul_peak(n, repeats):
    """Median GFLOP/s of an n x n float32 NumPy matmul (one warm-up call)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    return {"n": n, "gflops": flops / statistics.median(times) / 1e9,
            "gflops_all": [round(flops / t / 1e9, 1) for t in times]}


def backend_matmul(n, repeats, dtype="float32", inner=1):
    """Median GFLOP/s of an n x n matmul through keras.ops on the current backend (on an
    accelerator: the chip's achievable peak in `dtype`; `inner` back-to-back products per timing
    hide the dispatch and the final host transfer)."""
    from keras import ops

    rng = np.random.default_rng(1)
    a = ops.convert_to_tensor(rng.standard_normal((n, n), dtype=np.float32), dtype)
    b = ops.convert_to_tensor(rng.standard_normal((n, n), dtype=np.float32), dtype)
    ops.convert_to_numpy(ops.matmul(a, b)[0, 0])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            c = ops.matmul(a, b)
        ops.convert_to_numpy(c[0, 0])
        times.append((time.perf_counter() - t0) / inner)
    return {"n": n, "dtype": dtype, "inner": inner,
            "gflops": 2.0 * n ** 3 / statistics.median(times) / 1e9}


def set_threads(backend, threads):
    """Limits the backend's intra-op threads (call before the backend runs any op).

    On a shared, oversubscribed machine a backend's spinning OpenMP/Eigen workers can be much
    slower with 2 threads than with 1; `--threads` measures that. JAX takes it from XLA_FLAGS,
    set in `main` before JAX is imported.
    """
    if not threads:
        return
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def device_name(backend):
    """The device the backend computes on, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'."""
    try:
        if backend == "jax":
            import jax

            return jax.devices()[0].device_kind
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return gpus[0].name if gpus else "cpu"
    except Exception as e:  # the figure matters more than the name
        return f"unknown ({type(e).__name__})"
    return "unknown"


def backend_versions(backend):
    versions = {}
    import keras

    versions["keras"] = keras.__version__
    versions["numpy"] = np.__version__
    if backend == "jax":
        import jax
        import jaxlib

        versions["jax"] = jax.__version__
        versions["jaxlib"] = jaxlib.__version__
    elif backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    elif backend == "torch":
        import torch

        versions["torch"] = torch.__version__
        versions["torch_threads"] = torch.get_num_threads()
    return versions
