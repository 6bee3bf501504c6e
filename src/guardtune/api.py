"""The public Python API: ``Classifier.load / predict / predict_proba``, ``train``, ``evaluate``,
``calibrate``, ``label_file``, ``predict_file``.

Each lives in the module of its job (:mod:`guardtune.classifier`, :mod:`guardtune.training`,
:mod:`guardtune.evaluation`, :mod:`guardtune.predict_files`); this module gathers them.
"""

from __future__ import annotations

from guardtune.classifier import Classifier, Prediction
from guardtune.evaluation import calibrate, evaluate, score_examples
from guardtune.predict_files import label_file, predict_file
from guardtune.training import TrainReport, train

__all__ = [
    "Classifier",
    "Prediction",
    "TrainReport",
    "calibrate",
    "evaluate",
    "label_file",
    "predict_file",
    "score_examples",
    "train",
]
