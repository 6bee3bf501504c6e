"""The benchmark scripts run end to end on the tiny model and write well-formed results.

Only the output's shape is checked: speed figures from a tiny random model mean nothing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import load_script, run_cli

from guardtune.backbone import cpu_supports_bf16
from guardtune.precision import FbgemmProjections, int8_unavailable_reason

pytestmark = pytest.mark.benchmark_smoke

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    return load_script(BENCHMARKS / f"{name}.py")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The scripts run with --threads 1; give the rest of the session its thread count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_bench_predict_writes_json_and_markdown(
    tiny_base_wide_window: str, tmp_path: Path, one_thread: None
) -> None:
    bench = load_benchmark("bench_predict")
    out_json, out_md = tmp_path / "predict.json", tmp_path / "predict.md"
    bench.main(
        [
            "--base", tiny_base_wide_window, "--methods", "head", "label-tokens",
            "--train-steps", "1", "--train-rows", "12", "--train-batch-size", "4",
            "--n", "6", "--latency-n", "2", "--batch-size", "4", "--matmul-size", "128",
            "--threads", "1", "--no-isolate", "--work", str(tmp_path / "work"),
            "--json", str(out_json), "--markdown", str(out_md),
        ]
    )  # fmt: skip
    result = json.loads(out_json.read_text())
    assert set(result) == {"config", "machine", "peak_matmul", "paths", "notes"}
    assert result["config"]["n"] == 6 and result["config"]["methods"] == ["head", "label-tokens"]
    assert is_number(result["peak_matmul"]["bf16_tflops"]) and result["peak_matmul"]["bf16_tflops"] > 0
    assert result["peak_matmul"]["float"] == ("bf16" if cpu_supports_bf16() else "fp32")
    paths = result["paths"]
    assert [(p["kind"], p["method"]) for p in paths] == [
        ("seeds", "label-tokens"),
        ("seqcls", None),
        ("guardtune", "head"),
        ("guardtune", "head"),
        ("guardtune", "label-tokens"),
        ("guardtune", "label-tokens"),
    ]
    assert [p["dtype"] for p in paths[2:]] == ["auto", "int8", "auto", "int8"]
    for path in paths:
        assert set(path) == set(bench.RESULT_KEYS)
        for key in ("messages_per_s", "ratio_to_seeds", "ratio_to_seqcls", "p50_ms", "p95_ms"):
            assert is_number(path[key]) and path[key] > 0, (path["path"], key)
        assert is_number(path["peak_rss_mb"]) and is_number(path["fraction_of_float_peak"])
        assert path["tokens"] > 0
    seeds, seqcls, head, head_int8, label_tokens, label_tokens_int8 = paths
    assert seeds["ratio_to_seeds"] == pytest.approx(1.0) and seqcls["ratio_to_seqcls"] == pytest.approx(1.0)
    assert seqcls["macro_f1"] is None and "untrained" in seqcls["note"]
    assert 0.0 <= label_tokens["macro_f1"] <= 1.0 and 0.0 <= label_tokens["agreement_with_seeds"] <= 1.0
    assert head["agreement_with_seeds"] is None  # no (a) run for a method that does not generate
    # Each int8 row is compared with the first dtype's row of its method, on every message.
    assert head["agreement_with_reference"] is None and label_tokens["agreement_with_reference"] is None
    for row in (head_int8, label_tokens_int8):
        assert 0.0 <= row["agreement_with_reference"] <= 1.0
        # Where int8 cannot run, the row is the float fallback (with a one-line warning).
        assert ("projections int8" in row["note"]) == (int8_unavailable_reason() is None)
    table = out_md.read_text()
    assert "| path | method | dtype |" in table and table.count("(c) guardtune") == 4
    assert "agrees with auto" in table


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")


@linux_only
def test_bench_predict_names_an_allocator_or_stops_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = load_benchmark("bench_predict")
    assert bench.allocator_library("default") is None
    found = {"jemalloc": "libjemalloc.so.2"}
    monkeypatch.setattr(bench.ctypes.util, "find_library", found.get)
    assert bench.allocator_library("jemalloc") == "libjemalloc.so.2"
    missing = r"no libtcmalloc_minimal on this machine \(Debian / Ubuntu: apt install libtcmalloc-minimal4\)"
    with pytest.raises(SystemExit, match=missing):
        bench.allocator_library("tcmalloc")
    library = tmp_path / "libmymalloc.so"
    library.write_bytes(b"\x7fELF" + bytes(60))
    assert bench.allocator_library(str(library)) == str(library.resolve())
    assert bench.allocator_label(str(library)) == "libmymalloc.so"
    with pytest.raises(SystemExit, match="expected default, jemalloc, tcmalloc or a malloc library's path"):
        bench.allocator_library("mimalloc")
    script = tmp_path / "libc.so"  # what glibc's libc.so is: a linker script, not a library
    script.write_text("GROUP ( /lib/libc.so.6 )\n")
    with pytest.raises(SystemExit, match=r"libc.so: expected a shared library \(ELF\)"):
        bench.allocator_library(str(script))
    spaced = tmp_path / "my malloc.so"
    spaced.write_bytes(library.read_bytes())
    with pytest.raises(SystemExit, match="expected a path without spaces or colons"):
        bench.allocator_library(str(spaced))
    # Refused before anything is trained: a preloaded allocator in one process, two rows one label.
    twin = tmp_path / "other" / "libmymalloc.so"
    twin.parent.mkdir()
    twin.write_bytes(library.read_bytes())
    for args, message in (
        (["--no-isolate", "--allocators", "default", str(library)], "drop --no-isolate"),
        (["--allocators", str(library), str(twin)], "would share a row label"),
    ):
        with pytest.raises(SystemExit, match=message):
            bench.main([*args, "--work", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


@linux_only
def test_bench_predict_finds_the_preloaded_library_or_stops_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = load_benchmark("bench_predict")
    # A name as find_library gives it matches the file it names (or a longer version of it); a
    # path matches only itself, not a file of the same name elsewhere.
    libc = bench.mapped_library("libc.so.6")
    assert libc is not None and bench.mapped_library(libc) == libc
    assert bench.mapped_library(str(tmp_path / "libc.so.6")) is None
    assert bench.mapped_library("libnot-a-malloc.so") is None
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"kind": "guardtune", "allocator_library": "libnot-a-malloc.so"}))
    with pytest.raises(SystemExit, match=r"libnot-a-malloc\.so was preloaded but is not loaded"):
        bench.run_worker(spec_path)
    # The allocator goes first in LD_PRELOAD, before what the script itself inherited.
    monkeypatch.setenv("LD_PRELOAD", "/opt/inherited.so")
    seen: dict[str, str] = {}

    def fake_worker(command: list[str], check: bool, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        seen.update(env)
        Path(json.loads(Path(command[-1]).read_text())["out"]).write_text("{}")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(bench.subprocess, "run", fake_worker)
    spec = {"kind": "guardtune", "method": "head", "variant": "int8, jemalloc", "n": 1}
    bench.run_path({**spec, "allocator_library": "libjemalloc.so.2"}, tmp_path, isolate=True)
    assert seen["LD_PRELOAD"] == "libjemalloc.so.2 /opt/inherited.so"
    bench.run_path({**spec, "allocator_library": None}, tmp_path, isolate=True)
    assert seen["LD_PRELOAD"] == "/opt/inherited.so"
    label = bench.variant_label(("int8", 0, str(tmp_path / "libfoo.so")), [0, 512], ["default", "x"])
    assert label == "int8, any tokens, libfoo.so"


def test_bench_train_writes_json_and_markdown(
    tiny_base_wide_window: str, tmp_path: Path, one_thread: None
) -> None:
    bench = load_benchmark("bench_train")
    out_json, out_md = tmp_path / "train.json", tmp_path / "train.md"
    bench.main(
        [
            "--base", tiny_base_wide_window, "--methods", "head", "generate",
            "--steps", "2", "--batch-size", "2", "--threads", "1",
            "--work", str(tmp_path / "work"), "--json", str(out_json), "--markdown", str(out_md),
        ]
    )  # fmt: skip
    result = json.loads(out_json.read_text())
    assert set(result) == {"config", "machine", "rows", "notes"}
    rows = result["rows"]
    assert [(r["trainer"], r["method"]) for r in rows] == [
        ("guardtune", "head"),
        ("guardtune", "generate"),
        ("trl", None),
        ("trl", None),
    ]
    for row in rows:
        assert set(row) == set(bench.RESULT_KEYS)
        assert row["error"] is None, row["error"]
        assert row["examples"] == 4 and is_number(row["examples_per_s"]) and row["examples_per_s"] > 0
        assert is_number(row["mean_tokens_per_example"])
    for row in rows[:2]:
        assert is_number(row["ratio_to_trl"]) and len(row["ratios"]) == 2
    assert "gradient checkpointing on" in rows[2]["variant"] and "off" in rows[3]["variant"]
    assert "| trainer |" in out_md.read_text()


def test_bench_quantize_writes_json_and_markdown(
    tiny_base_wide_window: str, tmp_path: Path, one_thread: None
) -> None:
    pytest.importorskip("bitsandbytes", reason="--quantize needs bitsandbytes (the dev extra has it)")
    bench = load_benchmark("bench_quantize")
    out_json, out_md = tmp_path / "quantize.json", tmp_path / "quantize.md"
    bench.main(
        [
            "--base", tiny_base_wide_window, "--modes", "none", "4bit", "--steps", "1",
            "--check-n", "8", "--threads", "1", "--no-isolate", "--work", str(tmp_path / "work"),
            "--json", str(out_json), "--markdown", str(out_md),
        ]
    )  # fmt: skip
    result = json.loads(out_json.read_text())
    assert set(result) == {"config", "machine", "rows", "summary"}
    rows = result["rows"]
    assert [(r["mode"], r["seed"], r["steps"], r["check_n"]) for r in rows] == [
        ("none", 0, 1, 8),
        ("4bit", 0, 1, 8),
    ]
    for row in rows:
        assert set(row) == set(bench.RESULT_KEYS)
        for key in ("train_seconds", "examples_per_s", "messages_per_s", "train_peak_rss_mb"):
            assert is_number(row[key]) and row[key] > 0, key
        assert 0.0 <= row["check_macro_f1"] <= 1.0
    assert rows[0]["delta_macro_f1"] == 0.0
    assert rows[1]["delta_macro_f1"] == pytest.approx(rows[1]["check_macro_f1"] - rows[0]["check_macro_f1"])
    manifest = json.loads((tmp_path / "work" / "seed0" / "4bit" / "guardtune.json").read_text())
    assert manifest["training"]["quantize"] == "4bit" and manifest["method"] == "head"
    assert out_md.read_text().count("\n| 4bit | 0 |") == 1


def train_tiny_pii_guard(monkeypatch: pytest.MonkeyPatch, base: str, folder: Path, *options: str) -> Path:
    """A tiny-model ``pii-intent`` guard trained one step on 24 synthetic rows."""
    data = folder / "pii.csv"
    assert run_cli(monkeypatch, "data", "synth", "--task", "pii-intent", "--n", "24", "--out", data) == 0
    model = folder / "model"
    train = [
        "train", "--task", "pii-intent", "--train", data, "--out", model, "--base", base,
        "--max-steps", "1", "--batch-size", "8", "--dtype", "fp32", *options,
    ]  # fmt: skip
    assert run_cli(monkeypatch, *train) == 0
    return model


def test_bench_engines_measures_guardtune_and_reports_missing_engines(
    tiny_base_wide_window: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    model = train_tiny_pii_guard(monkeypatch, tiny_base_wide_window, tmp_path, "--method", "label-tokens")
    # No engine environments there: both engines must be reported as not set up, not measured.
    monkeypatch.setenv("GUARDTUNE_ENGINES", str(tmp_path / "no-engines"))
    bench = load_benchmark("bench_engines")
    out_json = tmp_path / "engines.json"
    report = bench.main(
        ["--model", str(model), "--n", "8", "--single", "2", "--threads", "1", "--json", str(out_json)]
    )
    assert json.loads(out_json.read_text()) == report
    results = report["results"]
    assert list(results) == ["guardtune", "vllm", "llama"]
    for engine in ("vllm", "llama"):
        assert set(results[engine]) == {"skipped"} and "make engines" in results[engine]["skipped"]
    guardtune = results["guardtune"]
    assert guardtune["agreement"] == 8 and len(guardtune["single_seconds"]) == 2
    for key in ("messages_per_s", "p50_ms", "peak_rss_mb", "load_seconds"):
        assert is_number(guardtune[key]) and guardtune[key] > 0, key
    table = bench.table(results, 8)
    assert "| guardtune | " in table and "| 8/8 |" in table and "| vllm | " in table


def test_bench_engines_refuses_a_guard_of_another_method(
    tiny_base_wide_window: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = train_tiny_pii_guard(monkeypatch, tiny_base_wide_window, tmp_path)
    with pytest.raises(SystemExit, match="a label-tokens guard is needed \\(found head\\)"):
        load_benchmark("bench_engines").main(["--model", str(model), "--n", "2"])


@pytest.mark.skipif(int8_unavailable_reason() is not None, reason="int8 kernels cannot run here")
def test_bench_int8_kernels_times_every_kernel_against_float(tmp_path: Path, one_thread: None) -> None:
    bench = load_benchmark("bench_int8_kernels")
    out = tmp_path / "kernels.json"
    rows = bench.main(
        [
            "--rows", "1", "5", "--layers", "1", "--hidden", "64", "--intermediate", "128", "--heads", "2",
            "--kv-heads", "1", "--head-dim", "32", "--repeats", "1", "--threads", "1", "--json", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == rows
    assert [(r["rows"], r["kernel"]) for r in rows] == [(n, k) for n in (1, 5) for k in bench.KERNELS]
    assert all(is_number(r["ms"]) and r["ms"] > 0 and is_number(r["speedup_over_float"]) for r in rows)
    assert {r["speedup_over_float"] for r in rows if r["kernel"] == "float"} == {1.0}
    assert {r["float"] for r in rows} == {"bf16" if cpu_supports_bf16() else "fp32"}
    # The stacked row multiplies q, k, v as one matrix and gate, up as another, as guardtune does.
    shapes = bench.layer_shapes(64, 128, 2, 1, 32)
    generator = torch.Generator().manual_seed(0)
    own = [
        FbgemmProjections(
            bench.fbgemm_weight(torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8),
                                torch.rand(n, generator=generator) / 100),
            (n,),
            None,
        )
        for k, n in shapes
    ]  # fmt: skip
    stacked = bench.stack_siblings(own)
    sizes = [p.sizes if p else None for p in stacked]
    assert sizes == [(64, 32, 32), None, None, (64,), (128, 128), None, (64,)]
