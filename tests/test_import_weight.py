"""Inference commands stay out of the training and reporting stack's memory.

`guardtune predict` and `guardtune serve` import the CLI (whose options read TrainSettings) and
the inference modules; importing the trainer, `datasets`, scikit-learn and the metrics and
plotting code with them added about 130 MB to every `guardtune predict` process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TRAINING_ONLY = (
    "transformers.trainer",
    "sklearn",
    "datasets",
    "matplotlib",
    "guardtune.train",
    "guardtune.api",
    "guardtune.evaluation",
    "guardtune.eval.metrics",
)


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


def test_the_predict_command_leaves_out_training(tmp_path: Path) -> None:
    """The command itself, up to loading the model (stubbed: the imports are what is measured)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "in.csv").write_text("text\nhello\n")
    code = (
        "import json, sys\n"
        "import guardtune.classifier\n"
        "from guardtune.errors import GuardtuneError\n"
        "def stub(cls, *args, **kwargs):\n"
        "    raise GuardtuneError('stub: not loading a model')\n"
        "guardtune.classifier.Classifier.load = classmethod(stub)\n"
        "from guardtune.cli import main\n"
        f"sys.argv = ['guardtune', 'predict', '--model', {str(tmp_path / 'model')!r},\n"
        f"            '--data', {str(tmp_path / 'in.csv')!r}, '--out', {str(tmp_path / 'out.csv')!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps([m for m in {TRAINING_ONLY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "stub: not loading a model" in done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
