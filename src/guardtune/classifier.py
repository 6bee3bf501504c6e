"""``Classifier``: a trained model directory loaded for inference (``load / predict / predict_proba``).

Kept apart from :mod:`guardtune.api` so that predicting and serving import no trainer, plotting
or metrics libraries (a smaller resident footprint).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guardtune.backbone import Backbone, load_backbone
from guardtune.batches import DEFAULT_MAX_BATCH_TOKENS
from guardtune.compiled import check_compilable, compile_decoder
from guardtune.errors import GuardtuneError
from guardtune.eval.calibration import CALIBRATION_FILE, Calibration, calibrated_task, read_calibration
from guardtune.infer import predict_scores
from guardtune.merging import prepare_for_inference, should_merge
from guardtune.methods import LoraMethod, get_method
from guardtune.modeldir import MANIFEST, Manifest, read_manifest
from guardtune.precision import is_quantized
from guardtune.recheck import Recheck, check_margin, unstable_rows
from guardtune.task import TaskSpec


@dataclass
class Prediction:
    """One text's decision: ``label`` (a list of labels for multi-label tasks) and every score."""

    label: str | list[str]
    scores: dict[str, float]


class Classifier:
    """A trained guardtune model: a base LM, its adapter, and the task's decision policy.

    When the model directory holds ``calibration.json`` (written by :func:`calibrate`),
    ``predict_proba`` returns temperature-scaled probabilities and ``predict`` decides with the
    calibrated thresholds; ``predict_proba(..., calibrated=False)`` gives the raw scores.

    Example:
        >>> clf = Classifier.load("runs/pii")
        >>> clf.predict("whats ur snap?").label
        'asking'
    """

    def __init__(
        self,
        method: LoraMethod,
        manifest: Manifest,
        directory: Path | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.method = method
        self.manifest = manifest
        self.directory = directory
        self.calibration = calibration
        # Overrides the task's ``long_text`` setting (``head-tail`` or ``windows``) when set.
        self.long_text: str | None = None
        # ``--int8-recheck``: re-scoring near ties in float (None: off; see Classifier.load).
        self.recheck: Recheck | None = None

    @classmethod
    def load(
        cls,
        directory: str | Path,
        dtype: str = "auto",
        backbone: Backbone | None = None,
        adapter_name: str | None = None,
        merge: bool | None = None,
        device: str = "auto",
        device_map: str | dict[str, Any] | None = None,
        max_memory: str | dict[Any, str] | None = None,
        compiled: bool = False,
        int8_recheck: float | None = None,
    ) -> Classifier:
        """Load a model directory written by ``guardtune train``.

        Args:
            directory: the model directory (``guardtune.json``, adapter and head safetensors).
            dtype: ``auto``, ``bf16`` or ``fp32`` for the base model; ``int8`` runs the decoder's
                (merged) projections as int8 on a CPU with VNNI, AMX or AVX2 and the rest as ``auto``
                (elsewhere: a one-line warning and ``auto``).
            backbone: an already loaded base to share (it must be the one the model was trained
                on); several models then hold one copy of the base weights. Its dtype wins over
                ``dtype``; an int8 base is quantised by its owner once every model is on it.
            adapter_name: the adapter's name on a shared backbone (default: a free name).
            merge: fold the adapter into the base weights for faster inference (about 40% less
                latency per message on the embedded Gemma). The default
                (:func:`guardtune.merging.should_merge`) merges when this model owns its backbone
                (no ``backbone`` given) and the base is not k-bit quantised, in fp32 and bf16; a
                shared backbone keeps the adapter separate so the other models on it are
                untouched.
            device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``, when no
                ``backbone`` is given.
            device_map: spread a base larger than one GPU over several: ``auto``, ``balanced``,
                ``balanced_low_0``, ``sequential``, a JSON file or a module -> device dict (see
                :mod:`guardtune.device_map`); ``device`` stays ``auto``. The adapter and the head
                are put beside the layers they belong to.
            max_memory: with a ``device_map`` strategy, memory per device (``{0: "20GiB"}``).
            compiled: compile the decoder with ``torch.compile`` (``head`` models on a base of
                their own): faster once compiled, after minutes of compiling in the first calls.
                Sets TorchInductor's ``freezing``, ``cpp_wrapper`` and ``max_autotune`` for the
                whole process (see :func:`guardtune.compiled.compile_decoder`).
            int8_recheck: with ``dtype="int8"``, keep the float projections beside the int8 ones
                (200 MB more on the embedded Gemma in bf16) and score again in float every text
                whose decision moving its scores by this margin could change
                (:mod:`guardtune.recheck`; :data:`~guardtune.recheck.DEFAULT_RECHECK_MARGIN` is
                0.125): the labels of those texts are the float model's, at a fraction of its
                cost (a label int8 moved by more than the margin is not caught). Where int8 falls
                back to float it has nothing to do.

        Raises:
            GuardtuneError: not a model directory, its base cannot be loaded, a bad
                ``calibration.json``, a shared base whose projections are already int8, a
                ``device_map`` with a shared ``backbone``, a ``device_map`` refused by
                :func:`guardtune.backbone.load_backbone`, or ``compiled`` for a method other than
                ``head``, on a shared ``backbone`` or without a C++ compiler; ``int8_recheck``
                outside (0, 1), without ``dtype="int8"`` or on a shared ``backbone``.
        """
        directory = Path(directory)
        if int8_recheck is not None:
            check_margin(int8_recheck)
            if dtype != "int8" or backbone is not None:
                raise GuardtuneError("--int8-recheck: needs --dtype int8 on a base of the model's own")
        manifest = read_manifest(directory)
        # An unknown method or a bad calibration.json fails before the base loads (seconds to minutes).
        method_cls = get_method(manifest.method, where=f"{directory / MANIFEST}: key 'method'")
        calibration = read_calibration(directory, manifest.task)
        owns_backbone = backbone is None
        if compiled:
            check_compilable(manifest.method, owns_backbone)
        if backbone is not None and (device_map is not None or max_memory is not None):
            raise GuardtuneError(
                f"{directory}: device_map places a base this call loads; the shared backbone given "
                "is loaded already (pass device_map to load_backbone)"
            )
        if backbone is not None and backbone.peft_model is not None and is_quantized(backbone.model):
            raise GuardtuneError(
                f"{directory}: its base {backbone.base} already runs int8 projections, which take no "
                "new adapter; load every model on it before quantising"
            )
        quantize = manifest.quantize
        backbone = backbone or load_backbone(
            manifest.base,
            dtype=dtype,
            device=device,
            quantize=quantize,
            device_map=device_map,
            max_memory=max_memory,
        )
        method = method_cls.load(
            directory, backbone, manifest.task, manifest.max_length, adapter_name=adapter_name
        )
        # One merge policy with the server (see guardtune.merging for why bf16 merges too).
        if merge is None:
            merge = should_merge(backbone, sole_adapter=owns_backbone, bare_base_needed=False)
        prepare_for_inference(
            backbone,
            merge_adapter=method.adapter_name if merge else None,
            int8=owns_backbone and backbone.int8,
            float_copies=int8_recheck is not None,
        )
        if compiled:
            compile_decoder(backbone.model)
        _check_calibration_precision(directory, calibration, backbone.precision)
        classifier = cls(method, manifest, directory, calibration)
        if int8_recheck is not None and backbone.int8:
            unstable = functools.partial(classifier._unstable, int8_recheck)
            classifier.recheck = Recheck(int8_recheck, unstable)
        return classifier

    @property
    def precision(self) -> str:
        """``int8``, ``bf16`` or ``fp32``: what the decoder's projections run in."""
        return str(self.method.backbone.precision)

    @property
    def task(self) -> TaskSpec:
        """The task, its policy thresholds replaced by the calibrated ones when calibrated."""
        return calibrated_task(self.manifest.task, self.calibration)

    @property
    def rechecked(self) -> int:
        """How many texts ``--int8-recheck`` has scored again in float so far (0 when off)."""
        return 0 if self.recheck is None else self.recheck.rescored

    @property
    def labels(self) -> list[str]:
        """Label names, in the column order of :meth:`predict_proba`."""
        return self.task.label_names

    def predict_proba(
        self,
        texts: str | list[str],
        batch_size: int = 32,
        progress: bool = False,
        calibrated: bool = True,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    ) -> np.ndarray:
        """Per-label probabilities, shape ``(len(texts), len(self.labels))``.

        Single-label tasks give a softmax (rows sum to 1); multi-label tasks independent sigmoids.

        Args:
            batch_size: most texts in one forward pass.
            calibrated: apply the model's temperature when it has one; ``False`` gives the raw
                scores (the same as ``True`` for an uncalibrated model).
            max_batch_tokens: most padded tokens in one forward pass (0 or ``None``: no limit),
                so long texts go fewer at a time and a pass's activations stay small.
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        raw = predict_scores(
            self.method,
            batch,
            batch_size=batch_size,
            progress=progress,
            long_text=self.long_text,
            recheck=self.recheck,
            max_batch_tokens=max_batch_tokens,
        )
        return self.calibrate_scores(raw) if calibrated else raw

    def _unstable(self, margin: float, raw: np.ndarray) -> np.ndarray:
        # Decided as predict decides: calibrated scores against the (calibrated) policy.
        return unstable_rows(self.task, self.calibrate_scores(raw), margin)

    def calibrate_scores(self, raw: np.ndarray) -> np.ndarray:
        """Raw ``predict_proba(..., calibrated=False)`` scores as calibrated ones (unchanged if
        the model is not calibrated)."""
        return raw if self.calibration is None else self.calibration.transform(raw)

    def predict(
        self,
        texts: str | list[str],
        batch_size: int = 32,
        progress: bool = False,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    ) -> Prediction | list[Prediction]:
        """Decide labels with the task's policy; one :class:`Prediction` per text.

        Args:
            texts: one string (returns one Prediction) or a list (returns a list).
        """
        scores = self.predict_proba(
            texts, batch_size=batch_size, progress=progress, max_batch_tokens=max_batch_tokens
        )
        decided = self.task.decide(scores)
        predictions = [
            Prediction(label=label, scores=dict(zip(self.labels, map(float, row), strict=True)))
            for label, row in zip(decided, scores, strict=True)
        ]
        return predictions[0] if isinstance(texts, str) else predictions


def _check_calibration_precision(directory: Path, calibration: Calibration | None, precision: str) -> None:
    # A temperature and thresholds fitted on one precision's scores are off by that precision's
    # score changes in another (int8 moves scores more than bf16 does).
    if calibration is not None and calibration.precision and calibration.precision != precision:
        warnings.warn(
            f"{directory / CALIBRATION_FILE}: calibrated on {calibration.precision} scores but the model "
            f"runs in {precision}; run `guardtune calibrate --dtype {precision}` for thresholds that hold",
            stacklevel=3,
        )
