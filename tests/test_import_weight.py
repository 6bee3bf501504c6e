"""Inference commands stay out of the training and reporting stack's memory.

`guardtune predict` and `guardtune serve` import the CLI (whose options read TrainSettings) and
the inference modules; importing the trainer, scikit-learn or `datasets` with them added about
125 MB to every predict and serve process.
"""

from __future__ import annotations

import json
import subprocess
import sys

TRAINING_ONLY = ("transformers.trainer", "sklearn", "datasets", "matplotlib", "guardtune.train")


def test_predict_and_serve_imports_leave_out_training() -> None:
    code = (
        "import json, sys\n"
        "import guardtune.cli, guardtune.predict_files, guardtune.serve.app\n"
        f"print(json.dumps([m for m in {TRAINING_ONLY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_train_settings_is_one_class_under_both_names() -> None:
    import guardtune
    from guardtune.train import TrainSettings as from_loop
    from guardtune.train_settings import TrainSettings

    assert from_loop is TrainSettings
    assert guardtune.TrainSettings is TrainSettings
