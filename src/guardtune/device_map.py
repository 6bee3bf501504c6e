"""``--device-map``: a base larger than one GPU, its layers spread over several at inference.

The value is one of accelerate's strategies (``auto``, ``balanced``, ``balanced_low_0``,
``sequential``), optionally bounded per device by ``--max-memory``, or a JSON file that maps module
names to devices (``{"model.embed_tokens": 0, "model.layers.0": 0, ..., "model.norm": 1}``) as
transformers' ``device_map`` does. transformers loads each part of the base on its device and
accelerate's hooks move activations between them; guardtune puts its inputs on the device of the
input embedding and moves the last hidden states to the head.

Offloading (``disk``, or ``cpu`` beside GPUs) is refused: accelerate then keeps weights off the
device that computes with them, where PEFT cannot put a LoRA adapter beside them or merge into them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from guardtune.errors import GuardtuneError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
OPTION_HELP = (
    "Spread the base over several GPUs: auto, balanced, balanced_low_0, sequential, or a JSON file "
    "of module name -> device. Leave --device at auto."
)
MAX_MEMORY_HELP = "With a --device-map strategy: memory per device, e.g. 0=20GiB,1=20GiB."
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|\d+)$")
_OFFLOAD = ("disk", "meta")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)?$", re.IGNORECASE)

DeviceMap = str | dict[str, Any]


def _device_value(value: Any, where: str) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise GuardtuneError(f"{where}: expected a device (0, 'cuda:1', 'cpu'), found {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise GuardtuneError(f"{where}: expected a GPU index >= 0, found {value}")
        return value
    if value in _OFFLOAD:
        raise GuardtuneError(
            f"{where}: {value!r} offloads weights, which LoRA adapters cannot sit beside; "
            "give every module a GPU (or all of them 'cpu')"
        )
    if not _DEVICE.match(value):
        raise GuardtuneError(f"{where}: expected a device (0, 'cuda:1', 'cpu'), found {value!r}")
    return int(value) if value.isdigit() else value


def read_device_map_file(path: Path) -> dict[str, str | int]:
    """A module-name -> device map from a JSON file.

    Raises:
        GuardtuneError: unreadable, not a JSON object, or a value that is not a device.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GuardtuneError(f"--device-map {path}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise GuardtuneError(f"--device-map {path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(raw, dict) or not raw:
        raise GuardtuneError(f"{path}: expected a JSON object of module name -> device")
    return {str(name): _device_value(value, f"{path}: key {name!r}") for name, value in raw.items()}


def parse_device_map(value: DeviceMap | None) -> DeviceMap | None:
    """``--device-map`` as ``from_pretrained`` takes it: a strategy name, or a checked dict.

    A string that is not a strategy is read as a JSON file.

    Raises:
        GuardtuneError: an unknown strategy that is no file, or a bad file or dict.
    """
    if value is None or (isinstance(value, str) and value in STRATEGIES):
        return value
    if isinstance(value, dict):
        if not value:
            raise GuardtuneError("device_map: expected module name -> device, found an empty mapping")
        placed = {str(k): _device_value(v, f"device_map: key {k!r}") for k, v in value.items()}
        where = "device_map"
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise GuardtuneError(
                f"--device-map: expected {', '.join(STRATEGIES)} or a JSON file, found {value!r}"
            )
        placed, where = read_device_map_file(path), str(path)
    on_cpu = [name for name, device in placed.items() if device == "cpu"]
    if on_cpu and len(on_cpu) < len(placed):
        raise GuardtuneError(
            f"{where}: key {on_cpu[0]!r}: 'cpu' beside GPUs offloads weights, which LoRA adapters "
            "cannot sit beside; give every module a GPU (or all of them 'cpu')"
        )
    return placed


def parse_max_memory(value: str | dict[Any, str] | None) -> dict[str | int, str] | None:
    """``--max-memory 0=20GiB,1=20GiB,cpu=30GiB`` (or that dict) as ``from_pretrained`` takes it.

    Raises:
        GuardtuneError: an entry that is not DEVICE=SIZE.
    """
    if value is None:
        return None
    items = (
        list(value.items())
        if isinstance(value, dict)
        else [
            tuple(part.split("=", 1)) if "=" in part else (part, "")
            for part in (p.strip() for p in value.split(","))
            if part
        ]
    )
    memory: dict[str | int, str] = {}
    for device, size in items:
        device = str(device).strip()
        size = str(size).strip()
        if not (device.isdigit() or device == "cpu") or not _MEMORY.match(size):
            raise GuardtuneError(
                f"--max-memory: expected DEVICE=SIZE entries such as 0=20GiB,cpu=30GiB, found "
                f"{device}={size!r}"
            )
        memory[int(device) if device.isdigit() else device] = size.replace(" ", "")
    if not memory:
        raise GuardtuneError("--max-memory: expected DEVICE=SIZE entries such as 0=20GiB,cpu=30GiB")
    return memory


def check_options(
    device_map: DeviceMap | None, max_memory: dict[str | int, str] | None, device: str, dtype: str
) -> None:
    """Refuse what cannot go with ``--device-map``, each in one line.

    Raises:
        GuardtuneError: ``--device`` other than auto, ``--dtype int8``, or ``--max-memory``
            without a strategy.
    """
    if device_map is None:
        if max_memory is not None:
            raise GuardtuneError("--max-memory: bounds a --device-map strategy; give --device-map auto too")
        return
    if device != "auto":
        raise GuardtuneError(
            f"--device {device} with --device-map: the map places the base; leave --device at auto"
        )
    if dtype == "int8":
        raise GuardtuneError(
            "--dtype int8 with --device-map: int8 projections run on one CPU; use bf16 or fp32 on GPUs"
        )
    if max_memory is not None and isinstance(device_map, dict):
        raise GuardtuneError(
            "--max-memory with a --device-map file: the file places every module already; drop one"
        )


def map_device_type(device_map: DeviceMap) -> str:
    """``cuda`` or ``cpu``: where a map puts the base (strategies use the GPUs when there are any)."""
    if isinstance(device_map, str):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu" if all(v == "cpu" for v in device_map.values()) else "cuda"


def check_placement(model: Any, base: str) -> None:
    """Refuse a loaded base that accelerate offloaded (a strategy over too little GPU memory).

    Offloaded weights wait on the ``meta`` device until accelerate's hook brings them in for a
    forward pass.

    Raises:
        GuardtuneError: some weight of ``model`` was offloaded (to the CPU beside GPUs, or disk).
    """
    offloaded = list(
        dict.fromkeys(
            name.rsplit(".", 1)[0] for name, p in model.named_parameters() if p.device.type == "meta"
        )
    )
    if offloaded:
        raise GuardtuneError(
            f"--device-map: the base {base} does not fit the GPUs' memory; accelerate offloaded "
            f"{offloaded[0]}{' and more' if len(offloaded) > 1 else ''}, which LoRA "
            "adapters cannot sit beside (use more GPUs, or raise --max-memory)"
        )
