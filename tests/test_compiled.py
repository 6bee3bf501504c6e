"""``--compile``: a head model's decoder compiled by torch.compile scores as the eager one does, and
what it cannot compile is refused in one line before the base loads."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from guardtune import compiled as compiled_module
from guardtune import precision
from guardtune.api import Classifier, train
from guardtune.errors import GuardtuneError
from guardtune.task import load_task
from guardtune.train import TrainSettings


@pytest.fixture(scope="module")
def model_dir(tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = TrainSettings(epochs=2, batch_size=16, learning_rate=3e-3, max_length=32, seed=5, dtype="fp32")
    out = tmp_path_factory.mktemp("compiled") / "model"
    return train(
        load_task("pii-intent"), toy_files["train"], out, base=tiny_base, settings=settings
    ).directory


@pytest.fixture
def inductor_freezing():
    """compile_decoder sets TorchInductor's freezing, C++ wrapper and autotuning and dynamo's duck
    shaping for the process; later tests get them back as they were."""
    import torch._inductor.config as inductor_config
    import torch.fx.experimental._config as shape_config

    names = ("freezing", "cpp_wrapper", "max_autotune")
    before = [getattr(inductor_config, name) for name in names], shape_config.use_duck_shape
    yield
    for name, value in zip(names, before[0], strict=True):
        setattr(inductor_config, name, value)
    shape_config.use_duck_shape = before[1]


@pytest.mark.parametrize("dtype", ["fp32", "int8", "int8@weights", "int8:fbgemm"])
def test_a_compiled_decoder_scores_as_the_eager_one(
    model_dir: Path,
    toy_files: dict[str, Path],
    dtype: str,
    inductor_freezing: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dtype, _, kernel = dtype.partition(":")
    dtype, _, activations = dtype.partition("@")
    stored = precision._fbgemm_weights
    if kernel:
        if precision.cpu_int8_kernel() == kernel:
            pytest.skip(f"{kernel} is this CPU's own int8 kernel: the int8 case compiles it")
        monkeypatch.setenv(precision.KERNEL_ENV, kernel)  # fbgemm runs on any CPU with AVX2
    if dtype == "int8" and precision.int8_unavailable_reason() is not None:
        pytest.skip(f"int8 cannot run here: {precision.int8_unavailable_reason()}")
    if activations:
        monkeypatch.setenv(precision.ACTIVATION_ENV, activations)
    texts = pd.read_csv(toy_files["test"])["text"].tolist()[:24]
    eager = Classifier.load(model_dir, dtype=dtype)
    compiled = Classifier.load(model_dir, dtype=dtype, compiled=True)
    decoder = compiled.method.backbone.peft_model.get_base_model().get_decoder()
    assert hasattr(decoder.forward, "_torchdynamo_orig_callable")  # the decoder is what got compiled
    import torch._inductor.config as inductor_config

    assert inductor_config.freezing and inductor_config.cpp_wrapper and inductor_config.max_autotune
    monkeypatch.setenv(compiled_module.AUTOTUNE_ENV, "0")
    Classifier.load(model_dir, dtype=dtype, compiled=True)
    assert not inductor_config.max_autotune
    monkeypatch.delenv(compiled_module.AUTOTUNE_ENV)
    # A batch (padded, dynamic shapes) and a single message (its own graph), then batches of other
    # sizes and lengths: no third graph.
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    batch, single = compiled.predict_proba(texts, batch_size=8), compiled.predict_proba(texts[:1])
    for size in (3, 5, 24):
        compiled.predict_proba(texts, batch_size=size)
    assert counters["stats"]["unique_graphs"] - graphs == 2
    if dtype == "fp32":
        np.testing.assert_allclose(batch, eager.predict_proba(texts, batch_size=8), rtol=0, atol=1e-4)
        np.testing.assert_allclose(single, eager.predict_proba(texts[:1]), rtol=0, atol=1e-4)
    else:
        # Fused int8 quantisation rounds a little differently: the same labels, scores close.
        expected = eager.predict_proba(texts, batch_size=8)
        assert (batch.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.95
        assert np.abs(batch - expected).mean() < 0.02
        model = compiled.method.backbone.model
        projections = [m for m in model.modules() if isinstance(m, precision.Int8Linear)]
        assert all(m.shared_input is None for m in projections)
        if activations == "" and precision.int8_kernel() == "fbgemm":
            # q, k, v and gate, up multiply their stacked weights once: 4 products a layer, not 7.
            products: list[int] = []
            monkeypatch.setattr(precision, "_fbgemm_weights", lambda i: products.append(i) or stored(i))
            compiled.predict_proba(texts[:1])
            assert len(products) == 4 * len(projections) // 7 and len(set(products)) == len(products)


def test_a_compiled_int8_decoder_rechecks_in_the_eager_float_one(
    model_dir: Path, toy_files: dict[str, Path], inductor_freezing: None
) -> None:
    if precision.int8_unavailable_reason() is not None:
        pytest.skip(f"int8 cannot run here: {precision.int8_unavailable_reason()}")
    texts = pd.read_csv(toy_files["test"])["text"].tolist()[:24]
    compiled = Classifier.load(model_dir, dtype="int8", compiled=True, int8_recheck=0.999)
    decoder = compiled.method.backbone.peft_model.get_base_model().get_decoder()
    compiled_forward = decoder.forward
    float_name = compiled.method.backbone.float_precision
    expected = Classifier.load(model_dir, dtype=float_name).predict_proba(texts, batch_size=8)
    # Every text re-scored: the decoder ran eagerly on the float weights, and is compiled again after.
    np.testing.assert_array_equal(compiled.predict_proba(texts, batch_size=8), expected)
    assert compiled.rechecked == len(texts) and decoder.forward is compiled_forward


def test_compile_is_refused_for_a_prompt_method_before_the_base_loads(
    model_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "label-tokens-model"
    shutil.copytree(model_dir, other)
    manifest = json.loads((other / "guardtune.json").read_text())
    manifest["method"] = "label-tokens"
    (other / "guardtune.json").write_text(json.dumps(manifest))
    with pytest.raises(
        GuardtuneError, match="--compile: supported for the head method only, not 'label-tokens'"
    ):
        Classifier.load(other, compiled=True)


def test_compile_without_a_cpp_compiler_is_one_line(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import cpp_builder, exc

    def missing() -> str:
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(GuardtuneError, match="--compile: needs a C\\+\\+ compiler") as caught:
        Classifier.load(model_dir, compiled=True)
    assert "\n" not in str(caught.value)


def test_predict_refuses_compile_with_the_ray_engine(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, toy_files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    code = run_cli(
        monkeypatch, "predict", "--model", model_dir, "--data", toy_files["test"], "--out", tmp_path / "p",
        "--engine", "ray", "--compile",
    )  # fmt: skip
    assert code != 0 and "--compile: supported with --engine local only" in capsys.readouterr().err


def test_eval_cli_takes_compile(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, toy_files: dict[str, Path], tmp_path: Path,
    inductor_freezing: None,
) -> None:  # fmt: skip
    torch.manual_seed(0)
    code = run_cli(
        monkeypatch, "eval", "--model", model_dir, "--data", toy_files["test"], "--out", tmp_path / "r",
        "--dtype", "fp32", "--compile",
    )  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["n"] == 60
