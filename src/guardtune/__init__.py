"""guardtune: small decoder-only LLMs as fast, calibrated text classifiers and guardrails, with LoRA."""

import warnings

# peft reads a transformers attribute that transformers 5 deprecates; the notice is about their
# internals and nothing a guardtune user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

from guardtune.api import Classifier, Prediction, TrainReport, calibrate, evaluate, train
from guardtune.errors import GuardtuneError
from guardtune.task import TaskSpec, load_task
from guardtune.train import TrainSettings

__all__ = [
    "Classifier",
    "GuardtuneError",
    "Prediction",
    "TaskSpec",
    "TrainReport",
    "TrainSettings",
    "calibrate",
    "evaluate",
    "load_task",
    "train",
]
