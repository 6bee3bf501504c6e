"""``guardtune train`` that stops every process right after the checkpoint at step
``GUARDTUNE_STOP_AT`` is written, the way a pre-empted job stops; tests then ``--resume`` it.

Run it where ``-m guardtune`` would go: ``torchrun --nproc_per_node 2 tests/interrupted_train.py train ...``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from transformers import TrainerCallback

import guardtune.train
from guardtune.cli import main
from guardtune.train import process_state

STOP_AT = int(os.environ["GUARDTUNE_STOP_AT"])


class _StopAfterSave(TrainerCallback):
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= STOP_AT:
            # The main process has written the checkpoint before any process leaves.
            process_state().wait_for_everyone()
            sys.exit(3)


_fit = guardtune.train.fit


def _fit_then_stop(*args: Any, **kwargs: Any) -> Any:
    return _fit(*args, callbacks=[_StopAfterSave()], **kwargs)


# guardtune.training.train imports fit from guardtune.train when it runs, so it picks this up.
guardtune.train.fit = _fit_then_stop

if __name__ == "__main__":
    main()
