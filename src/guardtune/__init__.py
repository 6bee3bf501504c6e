"""guardtune: small decoder-only LLMs as fast, calibrated text classifiers and guardrails, with LoRA."""

import warnings

# peft reads a transformers attribute that transformers 5 deprecates; the notice is about their
# internals and nothing a guardtune user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

from typing import TYPE_CHECKING, Any

from guardtune.errors import GuardtuneError

if TYPE_CHECKING:
    from guardtune.api import TrainReport, calibrate, evaluate, train
    from guardtune.classifier import Classifier, Prediction
    from guardtune.task import TaskSpec, load_task
    from guardtune.train_settings import TrainSettings

# Names resolved on first use (PEP 562): ``import guardtune`` stays light, and serving a model
# never imports the trainer (transformers.Trainer, ~230 MB resident), plotting or metrics code.
_LAZY = {
    "Classifier": "guardtune.classifier",
    "Prediction": "guardtune.classifier",
    "TrainReport": "guardtune.api",
    "calibrate": "guardtune.api",
    "evaluate": "guardtune.api",
    "train": "guardtune.api",
    "TaskSpec": "guardtune.task",
    "load_task": "guardtune.task",
    "TrainSettings": "guardtune.train_settings",
}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'guardtune' has no attribute {name!r}")
