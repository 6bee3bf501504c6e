"""``--format gguf``: the merged causal LM as one GGUF file that llama.cpp loads.

Gemma 3 only: llama.cpp's ``gemma3`` graph fixes parts of the architecture (every 6th layer is
global, local RoPE base 10000, query scale 1/sqrt(head_dim)), so a model must match them to run
the same there; :func:`llama_cpp_problems` checks that. Tensors are named with gguf-py's name map
and RMSNorm weights are stored as ``w + 1``, as llama.cpp's own converter stores Gemma's (and as
transformers' GGUF loader undoes, ``weights - 1``, in ``Gemma2TensorProcessor``).

Metadata: when the base itself came from a GGUF file (the embedded Gemma, or ``--base x.gguf``)
every key of that file is copied (hyper-parameters and the full tokenizer), so llama.cpp sees
what the original publisher wrote. Other bases get the hyper-parameters from ``config.json`` and a
byte-level BPE vocabulary from ``tokenizer.json``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
from transformers import PreTrainedModel

from guardtune.atomic import atomic_file
from guardtune.backbone import EMBEDDED_BASES, _embedded_gguf
from guardtune.errors import GuardtuneError
from guardtune.export.merge import MergedModel, check_format
from guardtune.export.prompt import chat_template

OutType = Literal["f16", "f32"]
# transformers model_type -> gguf architecture name, for the families this writer knows.
ARCHITECTURES = {"gemma3_text": gguf.MODEL_ARCH.GEMMA3}
# Gemma's RMSNorm scales by (1 + w); GGUF stores the scale itself.
NORM_SHIFT = {gguf.MODEL_ARCH.GEMMA3: 1.0}
GEMMA3_GLOBAL_EVERY = 6  # llama.cpp: hparams.set_swa_pattern(6) for LLM_ARCH_GEMMA3
GEMMA3_LOCAL_ROPE_BASE = 10_000.0  # llama.cpp: rope_freq_base_train_swa for gemma3
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "f32": gguf.LlamaFileType.ALL_F32}
# Keys the writer sets itself or that describe the source's quantisation, never copied.
NOT_COPIED = (
    "general.architecture",
    "general.file_type",
    "general.quantization_version",
    "tokenizer.chat_template",
)


def _rope_theta(config: Any, layer_type: str) -> tuple[float | None, str]:
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type in params:
        entry = params[layer_type]
        return entry.get("rope_theta"), entry.get("rope_type", "default")
    if layer_type == "sliding_attention":
        return getattr(config, "rope_local_base_freq", None), "default"
    return getattr(config, "rope_theta", None), "default"


def llama_cpp_problems(config: Any) -> list[str]:
    """Where a Gemma 3 config differs from what llama.cpp's gemma3 graph assumes."""
    problems = []
    n = int(config.num_hidden_layers)
    expected = [
        "full_attention" if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 else "sliding_attention" for i in range(n)
    ]
    if list(getattr(config, "layer_types", expected)) != expected:
        problems.append(f"layer_types {config.layer_types} (llama.cpp expects every 6th layer global)")
    scalar = getattr(config, "query_pre_attn_scalar", config.head_dim)
    if scalar not in (config.head_dim, config.hidden_size // config.num_attention_heads):
        problems.append(f"query_pre_attn_scalar {scalar} (llama.cpp uses head_dim {config.head_dim})")
    local, local_type = _rope_theta(config, "sliding_attention")
    if (local is not None and float(local) != GEMMA3_LOCAL_ROPE_BASE) or local_type != "default":
        problems.append(f"local RoPE {local_type} base {local} (llama.cpp uses default 10000)")
    _, full_type = _rope_theta(config, "full_attention")
    if full_type != "default":
        problems.append(f"global RoPE scaling {full_type!r} (this writer handles plain RoPE only)")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, key, None):
            problems.append(f"{key} {getattr(config, key)} (llama.cpp's gemma3 has none)")
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        problems.append(f"hidden_activation {config.hidden_activation} (llama.cpp uses tanh GELU)")
    return problems


def source_gguf(base: str) -> Path | None:
    """The GGUF file the base was converted from, when there is one."""
    if base in EMBEDDED_BASES:
        return _embedded_gguf(EMBEDDED_BASES[base])
    path = Path(base).expanduser()
    return path if path.suffix.lower() == ".gguf" and path.is_file() else None


def gguf_tensors(model: PreTrainedModel, arch: gguf.MODEL_ARCH, outtype: OutType) -> dict[str, np.ndarray]:
    """The model's weights under GGUF names, norms shifted, in the storage dtype.

    Matrices are stored in ``outtype``; vectors (norms) stay f32, as llama.cpp's converter keeps
    them, since f16 would round the ``1 + w`` scales for no size gain.
    """
    config: Any = model.config
    names = gguf.get_tensor_name_map(arch, int(config.num_hidden_layers))
    shift = NORM_SHIFT.get(arch, 0.0)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors: dict[str, np.ndarray] = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when there is no output tensor
        stem, _, suffix = name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise GuardtuneError(f"--format gguf: no GGUF name for tensor {name} of {arch.name.lower()}")
        data = tensor.detach().float().cpu()
        if name.endswith("norm.weight"):
            data = data + shift
        array = data.numpy()
        dtype = np.float16 if outtype == "f16" and array.ndim > 1 else np.float32
        tensors[f"{gguf_name}.{suffix}"] = array.astype(dtype)
    return tensors


def _copy_metadata(writer: gguf.GGUFWriter, source: Path, arch_name: str, config: Any) -> None:
    reader = gguf.GGUFReader(source)
    found = reader.fields.get("general.architecture")
    if found is None or found.contents() != arch_name:
        raise GuardtuneError(
            f"{source}: general.architecture is {found.contents() if found else None!r}, "
            f"expected {arch_name!r}"
        )
    for key, expected in (
        ("block_count", config.num_hidden_layers),
        ("embedding_length", config.hidden_size),
    ):
        field = reader.fields.get(f"{arch_name}.{key}")
        if field is None or int(field.contents()) != int(expected):
            raise GuardtuneError(
                f"{source}: {arch_name}.{key} is {field.contents() if field else None}, but the base "
                f"model has {expected}; is this the GGUF file the base was converted from?"
            )
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in NOT_COPIED:
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), main, sub_type=sub)


def _hyper_parameters(writer: gguf.GGUFWriter, config: Any) -> None:
    # The keys llama.cpp's convert_hf_to_gguf.py writes for Gemma3Model.
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(int(config.head_dim))
    writer.add_value_length(int(config.head_dim))
    theta, _ = _rope_theta(config, "full_attention")
    writer.add_rope_freq_base(float(theta if theta is not None else 1_000_000.0))
    writer.add_sliding_window(int(config.sliding_window))


def _bpe_vocabulary(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's ``gpt2`` vocabulary (tokens, types, merges)."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model_type = backend.get("model", {}).get("type")
    pre = json.dumps(backend.get("pre_tokenizer"))
    if model_type != "BPE" or "ByteLevel" not in pre:
        raise GuardtuneError(
            f"--format gguf: the base's tokenizer is {model_type} without a GGUF source file; "
            "GGUF export supports the embedded gemma-3-270m, --base FILE.gguf bases, or byte-level "
            "BPE tokenizers"
        )
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    added = tokenizer.added_tokens_decoder
    for token, index in tokenizer.get_vocab().items():
        if index >= vocab_size:
            raise GuardtuneError(
                f"--format gguf: token {token!r} has id {index} beyond vocab_size {vocab_size}"
            )
        tokens[index] = token
        if index in added:
            types[index] = gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED
        else:
            types[index] = gguf.TokenType.NORMAL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        # gguf-py's own reader of merges, special token ids and add_bos/add_eos flags.
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
        special.chat_template = None  # the export's prompt template is written separately
        special.add_to_gguf(writer, quiet=True)


def write_gguf(merged: MergedModel, out: Path, outtype: OutType = "f16", overwrite: bool = False) -> Path:
    """Write the merged causal LM of ``merged`` as a GGUF file at ``out`` (atomically).

    Raises:
        GuardtuneError: the method has no GGUF form (its ``info.export_formats``), the model family or its
            configuration is not one llama.cpp runs as written, or ``out`` exists.
    """
    out = Path(out)
    if outtype not in FILE_TYPES:
        raise GuardtuneError(f"--outtype: expected f16 or f32, found {outtype!r}")
    if out.exists() and not overwrite:
        raise GuardtuneError(f"--out {out}: already exists (pass --overwrite to replace it)")
    check_format(merged.directory, type(merged.method), "gguf")
    config = merged.model.config
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise GuardtuneError(
            f"--format gguf: model_type {config.model_type!r} of base {merged.manifest.base} is not "
            f"supported (this writer covers {', '.join(ARCHITECTURES)}); use --format merged"
        )
    problems = llama_cpp_problems(config)
    if problems:
        raise GuardtuneError(
            f"--format gguf: base {merged.manifest.base} differs from llama.cpp's gemma3: "
            + "; ".join(problems)
        )
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    tensors = gguf_tensors(merged.model, arch, outtype)
    source = source_gguf(merged.manifest.base)
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch_name)
        if source is not None:
            _copy_metadata(writer, source, arch_name, config)
        else:
            writer.add_name(f"{merged.manifest.task.name} {merged.manifest.method}")
            _hyper_parameters(writer, config)
            _bpe_vocabulary(writer, merged.tokenizer, int(config.vocab_size))
        writer.add_file_type(FILE_TYPES[outtype])
        # llama.cpp adds BOS itself when the file says so; then the template must leave it out.
        add_bos = writer.kv_data[0].get("tokenizer.ggml.add_bos_token")
        with_bos = not (add_bos is not None and bool(add_bos.value))
        if merged.method.prompt is not None:
            writer.add_chat_template(chat_template(merged.method.prompt, with_bos=with_bos))
        for name, array in tensors.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out
