"""Streamed input: image folders and tfds data sources read by index, Grain, shards, bad files."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import write_folder

from keras_pd import data
from keras_pd.sources import DatasetError, FolderSource, decode_image, scan_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.backend_free


def test_folder_reads_exact_pixels_and_labels_from_class_folders(tmp_path):
    written = write_folder(str(tmp_path), classes=("zebra", "ant"), per_class=4)
    ds = data.load_dataset(f"folder:{tmp_path}")
    assert ds.streamed and len(ds) == 8 and ds.data_shape == (4, 6, 3) and ds.num_classes == 2
    x, y = ds.examples()
    files = sorted(written)  # ant/ sorts before zebra/: label 0 is "ant"
    expected = np.stack([written[f] for f in files]).astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(x, expected, atol=1e-6)
    np.testing.assert_array_equal(y, [0] * 4 + [1] * 4)
    assert ds.source().class_names == ["ant", "zebra"]


def test_flat_folder_has_no_labels_and_greyscale_has_one_channel(tmp_path):
    written = write_folder(str(tmp_path), classes=None, per_class=3, mode="L")
    ds = data.load_dataset(f"folder:{tmp_path}")
    assert ds.num_classes is None and ds.data_shape == (4, 6, 1)
    x, y = ds.examples()
    assert y is None
    np.testing.assert_allclose(x[0, ..., 0], written[sorted(written)[0]][..., 0] / 127.5 - 1,
                               atol=1e-6)


def test_image_size_centre_crops_the_longer_side_and_resizes_the_shorter(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (12, 8, 3), dtype=np.uint8)  # H 12, W 8
    Image.fromarray(pixels).save(tmp_path / "tall.png")
    np.testing.assert_array_equal(decode_image(str(tmp_path / "tall.png"), 8), pixels[2:10])
    # Shorter side 8 -> 4: the image halves (PIL bicubic), then rows 1..4 of 6 are kept.
    half = np.asarray(Image.fromarray(pixels).resize((4, 6), Image.BICUBIC, reducing_gap=None))
    np.testing.assert_array_equal(decode_image(str(tmp_path / "tall.png"), 4), half[1:5])


def test_stream_on_a_folder_equals_the_stream_on_its_arrays_and_grain_keeps_the_order(tmp_path):
    """Batch k is the same pure function of (seed, k) on a folder as on the same images in
    memory, across epochs (B > N), for any row shard, and through Grain's worker threads."""
    write_folder(str(tmp_path), per_class=5)
    ds = data.load_dataset(f"folder:{tmp_path}")
    x, y = ds.examples()
    streamed = data.BatchStream(ds.source(), None, 16, seed=7, start_step=3)
    in_memory = data.BatchStream(x, y, 16, seed=7)
    for k in range(3, 9):
        for a, b in zip(streamed.batch(k), in_memory.batch(k)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(streamed.batch(k, slice(8, 16))[0],
                                      in_memory.batch(k)[0][8:16])
    it = iter(streamed.grain_dataset(workers=3))
    for k in range(3, 9):
        got = next(it)
        for a, b in zip(got, in_memory.batch(k)):
            np.testing.assert_array_equal(a, b)


def test_resuming_at_a_late_step_costs_one_permutation(tmp_path):
    write_folder(str(tmp_path), per_class=5)
    stream = data.BatchStream(data.load_dataset(f"folder:{tmp_path}").source(), None, 4,
                              seed=0, start_step=10 ** 6)
    stream.batch(10 ** 6)
    assert len(stream._perms) == 1  # epoch 400000's permutation only, not the ones before


@pytest.mark.parametrize("layout,message", [
    ("empty", "holds no PNG or JPEG images"),
    ("empty_class", "class folder b/ holds no PNG or JPEG images"),
    ("mixed_layout", "holds both images and subfolders"),
    ("missing", "no such directory"),
])
def test_bad_folder_layouts_are_one_line_errors(tmp_path, layout, message):
    root = str(tmp_path / "images")
    os.makedirs(root)
    if layout == "empty_class":
        write_folder(root, classes=("a",))
        os.makedirs(os.path.join(root, "b"))
        open(os.path.join(root, "b", "notes.txt"), "w").close()
    elif layout == "mixed_layout":
        write_folder(root, classes=None, per_class=1)
        write_folder(root, classes=("a",), per_class=1)
    elif layout == "missing":
        root += "_nowhere"
    with pytest.raises(DatasetError, match=message) as info:
        data.load_dataset(f"folder:{root}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_image_is_an_error_naming_the_file(tmp_path, damage):
    written = write_folder(str(tmp_path), classes=None, per_class=3, size=(32, 32))
    bad = sorted(written)[1]
    with open(bad, "rb") as f:
        content = f.read()
    with open(bad, "wb") as f:
        f.write(b"not an image at all" if damage == "garbage" else content[:len(content) // 2])
    source = FolderSource(str(tmp_path))  # the first image is fine: found on read
    with pytest.raises(DatasetError, match=f"corrupt or truncated image {bad}") as info:
        source.read([0, 1, 2])
    assert "\n" not in str(info.value)


def test_mixed_sizes_need_image_size(tmp_path):
    write_folder(str(tmp_path), classes=None, per_class=2, size=(6, 4))
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "zz_odd.png")
    source = FolderSource(str(tmp_path))
    with pytest.raises(DatasetError, match=r"zz_odd.png is 5x5, not 6x4 .*--image_size"):
        source.read([0, 1, 2])
    assert FolderSource(str(tmp_path), image_size=4).read([0, 1, 2])[0].shape == (3, 4, 4, 3)
    with pytest.raises(DatasetError, match="image_size applies to folder:PATH"):
        data.load_dataset("digits", image_size=8)
    assert scan_folder(str(tmp_path))[1] is None


def _dummy_mnist(directory, file_format):
    tfds = pytest.importorskip("tensorflow_datasets")
    builder = tfds.testing.DummyMnist(data_dir=str(directory), file_format=file_format)
    builder.download_and_prepare()
    return builder


def test_tfds_prepared_as_array_record_is_read_by_index(tmp_path):
    """A real (offline, generated) tfds dataset in ArrayRecord: read by index, rows match the
    records tfds itself returns."""
    import keras  # noqa: F401  (Keras before TensorFlow: keras_pd.tf_adapter)

    _dummy_mnist(tmp_path, "array_record")
    import tensorflow_datasets as tfds

    ds = data.load_dataset("tfds:dummy_mnist", data_dir=str(tmp_path))
    assert ds.streamed and ds.data_shape == (28, 28, 1) and ds.num_classes == 10
    records = tfds.data_source("dummy_mnist", split="train", data_dir=str(tmp_path))
    x, y = ds.source().read([3, 0])
    np.testing.assert_allclose(x[0], records[3]["image"] / 127.5 - 1.0, atol=1e-6)
    assert list(y) == [records[3]["label"], records[0]["label"]]
    with pytest.raises(DatasetError, match="has no split 'validation'|Unknown split"):
        data.load_dataset("tfds:dummy_mnist:validation", data_dir=str(tmp_path))


def test_tfds_prepared_as_tfrecord_says_how_to_prepare_for_random_access(tmp_path):
    import keras  # noqa: F401

    _dummy_mnist(tmp_path, "tfrecord")
    with pytest.raises(DatasetError, match="prepared as TFRecord") as info:
        data.load_dataset("tfds:dummy_mnist", data_dir=str(tmp_path))
    assert "--file_format=array_record" in str(info.value) and "\n" not in str(info.value)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_read_disjoint_shards_that_make_the_global_batch(tmp_path):
    """JAX multi-process data_parallel on localhost: process p yields rows p*4 .. p*4+3 of each
    global batch of 8, reads no example outside them, and the two shards together equal the
    one-process global batch row for row."""
    folder = tmp_path / "images"
    write_folder(str(folder), per_class=9)
    port = _free_port()
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "shard_worker.py"),
                               str(p), str(port), str(folder), str(tmp_path / f"{p}.json")],
                              cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
             for p in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    shards = [json.load(open(tmp_path / f"{p}.json")) for p in (0, 1)]
    assert [s["process_index"] for s in shards] == [0, 1]
    assert all(s["process_count"] == 2 for s in shards)
    ds = data.load_dataset(f"folder:{folder}")
    reference = data.BatchStream(ds.source(), None, 8, seed=3)
    for j, k in enumerate(range(5, 8)):
        x, y = reference.batch(k)
        np.testing.assert_allclose(np.concatenate([s["x"][j] for s in shards]), x, atol=1e-6)
        np.testing.assert_array_equal(np.concatenate([s["y"][j] for s in shards]), y)
    for p, shard in enumerate(shards):
        mine = {int(i) for k in range(5, 5 + 40) for i in reference.indices(k)[p * 4:p * 4 + 4]}
        theirs = {int(i) for k in range(5, 5 + 40)
                  for i in reference.indices(k)[4 - p * 4:8 - p * 4]} - mine
        assert set(shard["seen"]) <= mine and not set(shard["seen"]) & theirs
