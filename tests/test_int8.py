"""``--dtype int8``: int8 projections agree with bf16, fall back where the CPU cannot run them, and
calibration knows the precision it was fitted in."""

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script, run_cli
from peft.tuners.lora import LoraLayer
from torch import nn

from guardtune import precision
from guardtune.api import Classifier, calibrate, train
from guardtune.backbone import load_backbone
from guardtune.errors import GuardtuneError
from guardtune.eval.calibration import CALIBRATION_FILE
from guardtune.methods.lora import merge_for_inference
from guardtune.precision import Int8Linear, quantize_projections
from guardtune.serve import load_guards
from guardtune.task import load_task
from guardtune.train import TrainSettings

TASK = load_task("pii-intent")
needs_int8 = pytest.mark.skipif(
    precision.int8_unavailable_reason() is not None,
    reason=f"int8 cannot run here: {precision.int8_unavailable_reason()}",
)


@pytest.fixture(scope="module")
def model_dir(tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = TrainSettings(epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")
    out = tmp_path_factory.mktemp("int8") / "model"
    return train(TASK, toy_files["train"], out, base=tiny_base, settings=settings).directory


def _texts(toy_files: dict[str, Path]) -> list[str]:
    return pd.read_csv(toy_files["test"])["text"].tolist()


def _int8_layers(classifier: Classifier) -> list[Int8Linear]:
    return [m for m in classifier.method.backbone.model.modules() if isinstance(m, Int8Linear)]


# The kernels this CPU runs without saturating: fbgemm's (7-bit weights) on any x86 with AVX2,
# oneDNN's only with native int8 dot products.
KERNELS_HERE = [k for k in precision.KERNELS if k == "fbgemm" or precision.cpu_int8_kernel() == "onednn"]


@needs_int8
@pytest.mark.parametrize("kernel", KERNELS_HERE)
def test_int8_linear_matches_the_float_layer(kernel: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 48, bias=True)
    x = torch.randn(3, 5, 96)
    expected = linear(x)
    for activations in ("token", "tensor", "weights"):
        got = Int8Linear(linear, activations=activations, kernel=kernel)(x)
        assert got.shape == expected.shape and got.dtype == x.dtype
        # int8 weights and activations: about 1% of the output's scale, never the float result.
        error = (got - expected).abs().max() / expected.abs().max()
        assert 0 < error < 0.03, activations
        bf16 = Int8Linear(linear, activations=activations, kernel=kernel)(x.bfloat16())
        assert bf16.dtype == torch.bfloat16
    # One outlier channel in one token: per-token scales keep the other tokens' resolution.
    x[0, 0, 0] = 400.0
    expected = linear(x)[1:]
    errors = {
        a: (Int8Linear(linear, activations=a, kernel=kernel)(x)[1:] - expected).abs().max().item()
        for a in ("token", "tensor", "weights")
    }
    assert errors["token"] < errors["tensor"] / 4
    # Float activations: only the weights' rounding is left.
    assert errors["weights"] < errors["token"]


@needs_int8
@pytest.mark.parametrize("kernel", KERNELS_HERE)
def test_sibling_projections_quantise_their_shared_input_once(
    kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    # Siblings of different widths, one without a bias: fbgemm stacks them into one matrix.
    linears = {name: nn.Linear(64, 16 if name != "q_proj" else 32, bias=name != "k_proj") for name in names}
    alone = {name: Int8Linear(linear, kernel=kernel) for name, linear in linears.items()}
    shared = {f"0.self_attn.{n}.base_layer": Int8Linear(linears[n], kernel=kernel) for n in names}
    assert precision.share_inputs(shared) == 1  # q, k, v (under adapters); o reads another input
    assert precision.share_inputs(shared) == (1 if kernel == "onednn" else 0)  # fbgemm's stay stacked once
    layer = {name: shared[f"0.self_attn.{name}.base_layer"] for name in names}
    assert layer["o_proj"].shared_input is None and layer["v_proj"].last_reader
    x, y = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    expected = {name: alone[name](x) for name in names}
    k_of_y, k_of_2x = alone["k_proj"](y), alone["k_proj"](2 * x)
    quantised: list[torch.Tensor] = []
    prepare = "quantise_rows" if kernel == "onednn" else "scale_rows"
    real = getattr(precision, prepare)
    monkeypatch.setattr(precision, prepare, lambda t: quantised.append(t) or real(t))

    for name in names[:3]:
        assert torch.equal(layer[name](x), expected[name])
    assert len(quantised) == 1  # once for q, k and v
    assert torch.equal(layer["q_proj"](x), expected["q_proj"]) and len(quantised) == 2  # v dropped it
    # Anything but the very tensor q read is quantised afresh: another tensor, or x written in place.
    assert torch.equal(layer["k_proj"](y), k_of_y) and len(quantised) == 3
    layer["q_proj"](x)
    x.mul_(2)
    assert torch.equal(layer["k_proj"](x), k_of_2x) and len(quantised) == 5
    # bf16 activations (CPUs with native bf16): the same bits shared as alone.
    x16 = torch.randn(2, 5, 64).bfloat16()
    expected = {name: alone[name](x16) for name in names[:3]}
    assert all(torch.equal(layer[name](x16), expected[name]) for name in names[:3])


@needs_int8
def test_int8_labels_agree_with_bf16(model_dir: Path, toy_files: dict[str, Path]) -> None:
    texts = _texts(toy_files)
    bf16 = Classifier.load(model_dir, dtype="bf16")
    int8 = Classifier.load(model_dir, dtype="int8")
    assert int8.precision == "int8" and bf16.precision == "bf16"
    # 2 layers x 7 merged projections; the embedding and the head keep their float dtype.
    assert len(_int8_layers(int8)) == 14 and not _int8_layers(bf16)
    backbone = int8.method.backbone
    assert backbone.model.get_input_embeddings().weight.dtype == backbone.dtype
    assert int8.method.classifier.weight.dtype == torch.float32
    expected, got = bf16.predict_proba(texts), int8.predict_proba(texts)
    assert (expected.argmax(axis=1) == got.argmax(axis=1)).all()
    assert 0 < np.abs(expected - got).max() < 0.05


def test_a_cpu_without_int8_falls_back_with_a_one_line_warning(
    model_dir: Path, toy_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_supports_int8", lambda: False)
    with pytest.warns(UserWarning, match="--dtype int8: this CPU has no int8") as caught:
        classifier = Classifier.load(model_dir, dtype="int8")
    messages = [str(w.message) for w in caught if "--dtype int8" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0] and "instead" in messages[0]
    assert classifier.precision in ("bf16", "fp32") and not _int8_layers(classifier)
    texts = _texts(toy_files)
    np.testing.assert_allclose(
        classifier.predict_proba(texts), Classifier.load(model_dir).predict_proba(texts), atol=1e-6
    )


def test_a_torch_without_onednn_falls_back_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_supports_int8", lambda: True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    reason = precision.int8_unavailable_reason()
    assert reason is not None and "lacks an int8 kernel" in reason and "qlinear_pointwise" in reason
    with pytest.warns(UserWarning, match="lacks an int8 kernel"):
        assert precision.resolve_int8("bf16") is False


@needs_int8
def test_calibration_records_its_precision_and_warns_in_another(
    model_dir: Path, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for path in model_dir.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    calibrate(model, toy_files["val"], dtype="fp32", progress=False)
    assert json.loads((model / CALIBRATION_FILE).read_text())["precision"] == "fp32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Classifier.load(model, dtype="fp32").calibration is not None
    assert not [w for w in caught if "calibrated on" in str(w.message)]
    with pytest.warns(UserWarning, match="calibrated on fp32 scores but the model runs in int8") as caught:
        Classifier.load(model, dtype="int8")
    assert all("\n" not in str(w.message) for w in caught)
    calibrate(model, toy_files["val"], dtype="int8", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Classifier.load(model, dtype="int8").calibration.precision == "int8"  # type: ignore[union-attr]
    assert not [w for w in caught if "calibrated on" in str(w.message)]

    raw = json.loads((model / CALIBRATION_FILE).read_text())
    (model / CALIBRATION_FILE).write_text(json.dumps(raw | {"precision": "int4"}))
    with pytest.raises(GuardtuneError, match="key 'precision': expected one of bf16, fp32, int8"):
        Classifier.load(model)


@needs_int8
def test_guards_sharing_an_int8_base_keep_their_labels(model_dir: Path, toy_files: dict[str, Path]) -> None:
    texts = _texts(toy_files)
    expected = Classifier.load(model_dir, dtype="bf16").predict_proba(texts).argmax(axis=1)
    guards = load_guards({"a": model_dir, "b": model_dir}, dtype="int8")
    assert guards["a"].backbone is guards["b"].backbone
    for guard in guards.values():
        assert guard.classifier.precision == "int8" and _int8_layers(guard.classifier)
        assert (guard.classifier.predict_proba(texts).argmax(axis=1) == expected).all()
    # PEFT cannot put an adapter on an int8 layer: a late model gets a one-line error.
    with pytest.raises(GuardtuneError, match="already runs int8 projections"):
        Classifier.load(model_dir, backbone=guards["a"].backbone, adapter_name="c")


@needs_int8
def test_int8_on_an_fp32_cpu_quantises_a_bf16_base_from_its_file_and_keeps_the_embedding_bf16(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guardtune import backbone as backbone_module

    monkeypatch.setattr(backbone_module, "cpu_supports_bf16", lambda: False)  # float precision: fp32
    base = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(base)
    assert backbone_module.stored_dtype(base) == torch.bfloat16
    settings = TrainSettings(epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")
    trained = train(TASK, toy_files["train"], tmp_path / "model", base=str(base), settings=settings)
    directory = trained.directory

    fp32 = Classifier.load(directory, dtype="fp32")
    int8 = Classifier.load(directory, dtype="int8")
    model = int8.method.backbone.model
    embedding = model.get_input_embeddings().weight
    assert embedding.dtype == torch.bfloat16 and int8.precision == "int8"
    others = {p.dtype for p in model.parameters() if p is not embedding}
    assert others == {torch.float32} and len(_int8_layers(int8)) == 14
    texts = _texts(toy_files)
    expected, got = fp32.predict_proba(texts), int8.predict_proba(texts)
    assert (expected.argmax(axis=1) == got.argmax(axis=1)).all()
    assert 0 < np.abs(expected - got).max() < 0.05
    # The LM head tied to the bf16 embedding (the server's chat path) reads bf16, returns fp32.
    ids = int8.method.backbone.tokenizer(texts[:2], return_tensors="pt", padding=True)
    with torch.inference_mode():
        assert model(**ids).logits.dtype == torch.float32
    # Re-scored in float: fp32 projections (merged in bf16) in the fp32 stream.
    rechecking = Classifier.load(directory, dtype="int8", int8_recheck=0.999)
    np.testing.assert_allclose(rechecking.predict_proba(texts), expected, rtol=0, atol=0.01)
    assert rechecking.rechecked == len(texts)


@needs_int8
def test_predict_cli_takes_dtype_int8(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    code = run_cli(
        monkeypatch,
        "predict",
        "--model",
        model_dir,
        "--data",
        toy_files["test"],
        "--out",
        out,
        "--dtype",
        "int8",
    )
    assert code == 0
    expected = Classifier.load(model_dir, dtype="bf16").predict(_texts(toy_files))
    assert pd.read_csv(out)["label"].tolist() == [p.label for p in expected]  # type: ignore[union-attr]


@needs_int8
def test_merging_each_projection_as_it_is_quantised_scores_as_merging_first(
    model_dir: Path, toy_files: dict[str, Path]
) -> None:
    texts = _texts(toy_files)
    scores = []
    for interleaved in (False, True):
        classifier = Classifier.load(model_dir, dtype="fp32", merge=False)
        backbone, adapter = classifier.method.backbone, classifier.method.adapter_name
        # down_proj stays float: its adapter must be merged all the same.
        if interleaved:
            quantize_projections(backbone.model, keep_float=("down_proj",), merge_adapter=adapter)
        else:
            merge_for_inference(backbone, adapter)
            quantize_projections(backbone.model, keep_float=("down_proj",))
        lora_layers = [m for m in backbone.model.modules() if isinstance(m, LoraLayer)]
        assert len(lora_layers) == 14 and all(m.merged for m in lora_layers)
        assert len(_int8_layers(classifier)) == 12
        scores.append(classifier.predict_proba(texts))
    np.testing.assert_array_equal(scores[0], scores[1])


def test_training_refuses_int8(tiny_base: str) -> None:
    with pytest.raises(GuardtuneError, match="--dtype: training runs in auto, bf16 or fp32"):
        TrainSettings(dtype="int8")
    with pytest.raises(GuardtuneError, match="--dtype: expected auto, bf16, fp32, int8"):
        load_backbone(tiny_base, dtype="int4")


@needs_int8
def test_quantize_projections_leaves_adapters_and_heads_in_float(tiny_base: str) -> None:
    backbone = load_backbone(tiny_base, dtype="fp32")
    assert quantize_projections(backbone.model) == 14
    assert backbone.model.get_output_embeddings().weight.dtype == torch.float32
    ids = backbone.tokenizer(["gg nice game"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.isfinite(backbone.model(**ids).logits).all()


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_release_pages_gives_a_dropped_weight_back_to_the_system() -> None:
    # A merged projection lives in pages that outlive it (the base's one file mapping): released,
    # they no longer count towards the process's memory.
    weight = torch.ones(32 * 2**20 // 4)  # 32 MB, resident once written
    before = _rss_mb()
    precision.release_pages(weight)
    assert before - _rss_mb() > 30
    assert weight[2**20 : 2**20 + 1024].abs().sum() == 0  # zero pages on the next read


@pytest.mark.parametrize(
    ("flags", "kernel"),
    [
        ({"avx2", "avx512_vnni"}, "onednn"),
        ({"avx2", "avx_vnni"}, "onednn"),
        ({"avx2", "amx_int8"}, "onednn"),
        ({"avx2", "avx512f"}, "fbgemm"),
        ({"sse4_2"}, None),
    ],
)
def test_the_int8_kernel_follows_the_cpu(
    flags: set[str], kernel: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.delenv(precision.KERNEL_ENV, raising=False)
    assert precision.cpu_int8_kernel() == kernel
    assert precision.cpu_supports_int8() == (kernel is not None)
    if kernel is None:
        reason = precision.int8_unavailable_reason()
        assert reason is not None and reason.startswith("this CPU has no int8 kernel") and "AVX2" in reason
    else:
        assert precision.int8_kernel() == kernel
    monkeypatch.setenv(precision.KERNEL_ENV, "fbgemm")
    assert precision.int8_kernel() == "fbgemm"
    monkeypatch.setenv(precision.KERNEL_ENV, "vnni")
    with pytest.raises(GuardtuneError, match="GUARDTUNE_INT8_KERNEL='vnni': expected one of onednn, fbgemm"):
        precision.int8_kernel()


@needs_int8
def test_the_fbgemm_kernel_does_not_saturate_on_large_products() -> None:
    # Large activations against the largest weights in every pair of inputs: 8-bit weights would
    # overflow AVX2's 16-bit sums of two products (2 x 255 x 127 > 32767); 7-bit ones never do.
    torch.manual_seed(0)
    linear = nn.Linear(256, 8, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(8, 256).sign())
    x = linear.weight[:1].detach().repeat(4, 1) * torch.linspace(1, 4, 4)[:, None]
    layer = Int8Linear(linear, kernel="fbgemm")
    assert layer.fbgemm is not None and layer.fbgemm.pack().unpack()[0].int_repr().abs().max() == 63
    got, expected = layer(x), linear(x)
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.0)


def test_the_int8_engine_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(precision.ENGINE_ENV, raising=False)
    assert precision.int8_engine() == precision.DEFAULT_ENGINE
    monkeypatch.setenv(precision.ENGINE_ENV, "cuda")
    with pytest.raises(GuardtuneError, match="GUARDTUNE_INT8_ENGINE='cuda': expected one of"):
        precision.int8_engine()


def test_bench_predict_puts_int8_beside_the_float_row_on_a_check_file(
    model_dir: Path, toy_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = torch.get_num_threads()
    bench = load_script(Path(__file__).resolve().parent.parent / "benchmarks" / "bench_predict.py")
    monkeypatch.delenv(precision.ACTIVATION_ENV, raising=False)
    modes: list[str] = []
    real_init = Int8Linear.__init__

    def recording_init(self: Int8Linear, linear: nn.Linear, *args: object, **kwargs: object) -> None:
        real_init(self, linear, *args, **kwargs)  # type: ignore[arg-type]
        modes.append(self.activations)

    monkeypatch.setattr(Int8Linear, "__init__", recording_init)
    try:
        result = bench.main(
            [
                "--model", str(model_dir), "--data", str(toy_files["test"]), "--guardtune-only",
                "--dtypes", "fp32", "int8", "int8@weights", "--n", "40", "--latency-n", "2",
                "--batch-size", "8", "--matmul-size", "64", "--threads", "1", "--no-isolate",
                "--work", str(tmp_path),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    float_row, int8_row, weights_row = result["paths"]
    assert [(r["kind"], r["dtype"]) for r in result["paths"]] == [
        ("guardtune", "fp32"),
        ("guardtune", "int8"),
        ("guardtune", "int8@weights"),
    ]
    # The row's activation mode is set while its model loads, and for no other row.
    if precision.int8_unavailable_reason() is None:
        assert modes == ["token"] * 14 + ["weights"] * 14
    assert precision.ACTIVATION_ENV not in os.environ
    assert 0.0 <= weights_row["agreement_with_reference"] <= 1.0
    # The first 40 rows of the file, scored against its gold labels.
    assert result["config"]["n"] == 40 and result["config"]["data"] == str(toy_files["test"])
    gold = pd.read_csv(toy_files["test"])["label"].tolist()[:40]
    assert json.loads((tmp_path / "messages.json").read_text())["labels"] == gold
    assert float_row["agreement_with_reference"] is None and float_row["speed_to_reference"] is None
    assert 0.0 <= int8_row["agreement_with_reference"] <= 1.0 and int8_row["speed_to_reference"] > 0
    assert int8_row["speed_to_reference"] == pytest.approx(
        int8_row["messages_per_s"] / float_row["messages_per_s"]
    )
    assert 0.0 <= int8_row["macro_f1"] <= 1.0 and float_row["ratio_to_seeds"] is None
    assert ("projections int8" in int8_row["note"]) == (precision.int8_unavailable_reason() is None)


def test_bench_predict_runs_a_row_per_allocator_each_preloaded_into_its_worker(
    model_dir: Path, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    import psutil

    # glibc's malloc-debugging library forwards to glibc's malloc: preloading it changes nothing
    # but which libraries the worker maps, which the worker checks.
    mapped = [Path(region.path) for region in psutil.Process().memory_maps()]
    libc = next((path for path in mapped if path.name == "libc.so.6"), None)
    preload = None if libc is None else libc.parent / "libc_malloc_debug.so.0"
    if preload is None or not preload.is_file():
        pytest.skip("no glibc malloc-debugging library to preload on this machine")
    threads = torch.get_num_threads()
    bench = load_script(Path(__file__).resolve().parent.parent / "benchmarks" / "bench_predict.py")
    try:
        result = bench.main(
            [
                "--model", str(model_dir), "--data", str(toy_files["test"]), "--guardtune-only",
                "--dtypes", "int8", "--allocators", "default", str(preload), "--n", "16",
                "--latency-n", "1", "--batch-size", "8", "--matmul-size", "64", "--threads", "1",
                "--work", str(tmp_path),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    rows = result["paths"]
    assert [(r["dtype"], r["allocator"]) for r in rows] == [
        ("int8, default", "default"),
        ("int8, libc_malloc_debug.so.0", "libc_malloc_debug.so.0"),
    ]
    libraries = {"default": None, "libc_malloc_debug.so.0": str(preload.resolve())}
    assert result["config"]["allocators"] == libraries
    assert all(r["rss_scope"] == "this path alone (fresh process)" for r in rows)
    assert "malloc from" not in rows[0]["note"] and f"malloc from {preload.resolve()}" in rows[1]["note"]
    # The same model on the same messages: an allocator moves memory and speed, never a label.
    assert rows[1]["agreement_with_reference"] == 1.0 and rows[1]["speed_to_reference"] > 0
    assert "allocator (default, libc_malloc_debug.so.0" in " ".join(result["notes"])


def test_a_cached_base_loads_a_compact_tokenizer_with_the_same_ids(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A base guardtune converted lives under its cache: its tokenizer gets a compact copy (a
    # smaller peak while loading); a user's directory is never written to.
    from transformers import AutoTokenizer

    from guardtune.tokenizer_cache import COMPACT_DIR, compact_tokenizer_json, load_tokenizer

    monkeypatch.setenv("GUARDTUNE_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "bases" / "gguf-0123"
    shutil.copytree(tiny_base, cached)
    texts = [*_texts(toy_files), "  two  spaces\n\nünïcödé 😀"]
    expected = AutoTokenizer.from_pretrained(tiny_base)
    backbone = load_backbone(str(cached), dtype="fp32")
    assert (cached / COMPACT_DIR / "tokenizer.json").is_file() and not (
        Path(tiny_base) / COMPACT_DIR
    ).exists()
    raw = json.loads((cached / COMPACT_DIR / "tokenizer.json").read_text())
    assert all(isinstance(merge, str) for merge in raw["model"]["merges"])
    tokenizer = backbone.tokenizer
    assert tokenizer(texts)["input_ids"] == expected(texts)["input_ids"]
    assert tokenizer.padding_side == expected.padding_side and tokenizer.pad_token_id == expected.pad_token_id
    assert type(load_tokenizer(tiny_base, tmp_path / "cache")).__name__ == type(expected).__name__
    # A merged token holding a space cannot be written as "a b": no compact copy then.
    assert compact_tokenizer_json({"model": {"type": "BPE", "merges": [["a b", "c"]]}}) is None
    assert compact_tokenizer_json({"model": {"type": "Unigram"}}) is None


@needs_int8
def test_what_stays_float_comes_from_the_environment(tiny_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def quantised(value: str | None) -> list[str]:
        if value is None:
            monkeypatch.delenv(precision.FLOAT_ENV, raising=False)
        else:
            monkeypatch.setenv(precision.FLOAT_ENV, value)
        model = load_backbone(tiny_base, dtype="fp32").model
        quantize_projections(model)
        return [name for name, module in model.named_modules() if isinstance(module, Int8Linear)]

    assert len(quantised(None)) == len(quantised("none")) == 14
    down = quantised("down_proj")
    assert len(down) == 12 and not any("down_proj" in name for name in down)
    # Layer 0 whole, and every layer's down_proj and o_proj.
    kept = quantised("first, down_proj,o_proj")
    assert len(kept) == 5 and all(".layers.1." in name for name in kept)
    assert len(quantised("last")) == 7 and len(quantised("first,last")) == 0
    # One layer by its index, and one layer's projection.
    assert quantised("1") == quantised("last")
    one = quantised("1.down_proj, 0.q_proj")
    assert len(one) == 12
    assert not any(".layers.1.mlp.down_proj" in name or ".layers.0.self_attn.q_proj" in name for name in one)
    for bad in ("mlp", "1.mlp", "x.down_proj", ".down_proj", "05", "\u00b2", "-1", "_proj"):
        monkeypatch.setenv(precision.FLOAT_ENV, bad)
        with pytest.raises(GuardtuneError, match=r"GUARDTUNE_INT8_FLOAT=.*: expected 'none' or"):
            precision.int8_float_parts()
    with pytest.raises(
        GuardtuneError, match=r"layer 2 does not exist \(the model has 2 decoder layers, 0-1\)"
    ):
        quantised("2.down_proj")
    monkeypatch.setenv(precision.ACTIVATION_ENV, "row")
    with pytest.raises(
        GuardtuneError, match="GUARDTUNE_INT8_ACTIVATIONS='row': expected token, tensor or weights"
    ):
        quantize_projections(load_backbone(tiny_base, dtype="fp32").model)


def test_which_module_paths_stay_float() -> None:
    selection = precision.float_selection(("1.down_proj", "first.q_proj", "o_proj", "last"), layer_count=18)
    assert selection == ({"17"}, {"o_proj"}, {("1", "down_proj"), ("0", "q_proj")})

    def kept(path: str) -> bool:
        return precision.stays_float(path, selection)

    assert (
        kept("1.mlp.down_proj")
        and kept("1.mlp.down_proj.base_layer")
        and kept("1.mlp.down_proj.lora_A.default")
    )
    assert not kept("11.mlp.down_proj") and not kept("1.mlp.up_proj") and not kept("10.mlp.down_proj")
    assert kept("0.self_attn.q_proj") and not kept("0.self_attn.k_proj")
    assert kept("5.self_attn.o_proj") and kept("17.mlp.gate_proj") and not kept("16.mlp.gate_proj")
    # An index names a layer, never a numbered module inside one (experts of a mixture).
    by_index = precision.float_selection(("1",), layer_count=18)
    assert precision.stays_float("1.mlp.up_proj", by_index)
    assert not precision.stays_float("7.mlp.experts.1.down_proj", by_index)
