"""The main job end to end at tiny sizes, and the evaluation it ends with."""

import json
import os

import pytest

from keras_pd import export
from keras_pd.evaluation import ROWS, find_students
from keras_pd.pipeline import QUICK, PipelineConfig, run_pipeline


@pytest.mark.slow
@pytest.mark.one_backend("jax")
def test_pipeline_end_to_end_on_digits_and_resume(tmp_path):
    workdir = str(tmp_path / "run")
    cfg = PipelineConfig(dataset="digits", **dict(QUICK, num_samples=100))
    results = run_pipeline(workdir, cfg, verbose=0)
    assert sorted(find_students(workdir)) == [1, 2, 4]
    rows = results["table"]["rows"]
    assert set(rows) == set(ROWS)
    assert sorted(rows["ddim"]) == [1, 2, 4, 8] and sorted(rows["distilled"]) == [1, 2, 4]
    assert results["metric"] == "domain-classifier FID"
    assert results["classifier_test_accuracy"] > 0.9
    for name in ("results.md", "results.json", "results.png", "report.md", "grids/ddim_4.png",
                 "grids/distilled_1.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert "| distilled student (DDIM) |" in open(os.path.join(workdir, "results.md")).read()
    # The students (<= 8 steps) are exported for the bare runtime and listed with latencies.
    report = open(os.path.join(workdir, "report.md")).read()
    fmt, reason = export.runtime_format()
    if fmt is None:
        assert f"## Exported students\n\nNone: {reason}" in report
    else:
        ext = "tflite" if fmt == "litert" else "onnx"
        for steps in (1, 2, 4):
            path = os.path.join(workdir, "exports", f"student_{steps:04d}.{ext}")
            meta = json.load(open(export.metadata_path(path)))
            assert meta["steps"] == steps and os.path.getsize(path) == meta["bytes"]
            assert f"| {steps} | `exports/student_{steps:04d}.{ext}` |" in report
    # Rerunning finds every stage done: no retraining, the cached cells are reused.
    with open(os.path.join(workdir, "timings.json")) as f:
        before = json.load(f)
    again = run_pipeline(workdir, cfg, verbose=0)
    with open(os.path.join(workdir, "timings.json")) as f:
        after = json.load(f)
    assert again["cells"] == results["cells"]
    assert after["train teacher"] - before["train teacher"] < 30


def test_second_pipeline_on_a_workdir_is_refused(tmp_path):
    from keras_pd import checkpoint as ckpt

    workdir = str(tmp_path / "run")
    with ckpt.workdir_lock(workdir):
        with pytest.raises(ckpt.CheckpointError, match="in use by another run"):
            run_pipeline(workdir, PipelineConfig(dataset="digits", **QUICK), verbose=0)
    assert sorted(os.listdir(workdir)) == ["lock"]  # nothing started
