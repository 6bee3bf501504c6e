"""Training speed: guardtune's training loop for each method against TRL's ``SFTTrainer``.

Same base model, same synthetic ``pii-intent`` rows, same batch size, same number of steps, same
LoRA (r, alpha, target modules) and base dtype. The TRL baseline is configured the way an
instruction-tuning repository does it: the prompt (the task's instruction around the message, the
same prompt guardtune's prompt-based methods use) followed by the exact label as one text field,
loss on every token (no completion-only masking), the full LM head. TRL runs with gradient
checkpointing on (``SFTConfig``'s default) and off (the faster setting), and ratios are given
against both.

    python benchmarks/bench_train.py --steps 20 --batch-size 16 \\
        --json bench_train.json --markdown bench_train.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

RESULT_KEYS = (
    "trainer",
    "method",
    "variant",
    "steps",
    "batch_size",
    "examples",
    "seconds",
    "examples_per_s",
    "steady_examples_per_s",
    "mean_tokens_per_example",
    "final_loss",
    "ratio_to_trl",
    "ratios",
    "error",
    "note",
)


class StepTimer(TrainerCallback):
    """Wall-clock time at the end of every optimizer step (to report a steady-state rate too)."""

    def __init__(self) -> None:
        self.begin = 0.0
        self.step_ends: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.begin = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_ends.append(time.perf_counter())

    def steady_rate(self, batch_size: int) -> float | None:
        """Examples/s from the end of the first step to the end of the last (no warm-up step)."""
        if len(self.step_ends) < 2:
            return None
        return (len(self.step_ends) - 1) * batch_size / (self.step_ends[-1] - self.step_ends[0])


def row(trainer: str, method: str | None, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    return dict.fromkeys(RESULT_KEYS) | {
        "trainer": trainer,
        "method": method,
        "variant": variant,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "ratios": {},
    }


def guardtune_runs(
    args: argparse.Namespace, texts: list[str], labels: list[str], work: Path
) -> list[dict[str, Any]]:
    """guardtune's loop (``guardtune.train.fit``, what ``guardtune train`` runs) for each method,
    on one shared backbone, without a validation set (so only training is timed)."""
    from transformers import set_seed

    from guardtune.backbone import load_backbone
    from guardtune.methods import LoraSettings, get_method
    from guardtune.task import load_task
    from guardtune.train import TrainSettings, fit

    task = load_task("pii-intent")
    backbone = load_backbone(args.base, dtype=args.dtype)
    rows = []
    for name in args.methods:
        print(f"guardtune {name}: {args.steps} steps of {args.batch_size}...", file=sys.stderr, flush=True)
        settings = TrainSettings(
            max_steps=args.steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            dtype=args.dtype,
            seed=args.seed,
            lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha),
        )
        set_seed(args.seed)
        method = get_method(name).create(backbone, task, settings.lora, settings.max_length, labels)
        features = method.features(texts, labels)
        timer = StepTimer()
        result = fit(method, texts, labels, settings, work / f"guardtune-{name}", callbacks=[timer])
        out = row("guardtune", name, f"dtype {backbone.dtype}", args)
        out.update(
            examples=result.examples_seen,
            seconds=result.seconds,
            examples_per_s=result.examples_per_second,
            steady_examples_per_s=timer.steady_rate(args.batch_size),
            mean_tokens_per_example=float(np.mean([len(f["input_ids"]) for f in features])),
            final_loss=result.train_loss,
            note=method.info.description + "; includes the end-of-run light checkpoint",
        )
        rows.append(out)
    return rows


def trl_texts(args: argparse.Namespace, texts: list[str], labels: list[str], tokenizer: Any) -> list[str]:
    """Prompt + exact label as one string: guardtune's prompt for the task (the chat template
    when the tokenizer has one), decoded back to text for TRL to tokenize itself."""
    from guardtune.methods.prompting import PromptEncoder
    from guardtune.task import load_task

    prompt = PromptEncoder.for_task(load_task("pii-intent"), tokenizer, args.max_length)
    bos = tokenizer.bos_token_id
    out = []
    for ids, label in zip(prompt.encode(texts), labels, strict=True):
        full = ids + prompt.answer_ids(label)
        if bos is not None and full and full[0] == bos:
            full = full[1:]  # TRL's tokenization adds the BOS token again
        out.append(tokenizer.decode(full))
    return out


def trl_run(
    args: argparse.Namespace, texts: list[str], labels: list[str], work: Path, checkpointing: bool
) -> dict[str, Any]:
    """TRL SFTTrainer: LoRA on the same targets, whole-sequence loss, full LM head."""
    variant = f"gradient checkpointing {'on (SFTConfig default)' if checkpointing else 'off'}"
    out = row("trl", None, variant, args)
    print(f"TRL SFTTrainer, {variant}...", file=sys.stderr, flush=True)
    try:
        import trl
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
        from trl import SFTConfig, SFTTrainer

        from guardtune.backbone import resolve_base_dir, resolve_dtype
        from guardtune.methods.lora import DEFAULT_TARGETS, linear_module_suffixes

        source = str(resolve_base_dir(args.base))
        dtype = resolve_dtype(args.dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        set_seed(args.seed)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        present = set(linear_module_suffixes(model))
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.05,
            target_modules=[t for t in DEFAULT_TARGETS if t in present],
            task_type="CAUSAL_LM",
        )
        config = SFTConfig(
            output_dir=str(work / f"trl-{int(checkpointing)}"),
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            max_steps=args.steps,
            learning_rate=2e-4,
            lr_scheduler_type="linear",
            logging_steps=max(1, min(10, args.steps // 10)),
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            bf16=dtype == torch.bfloat16,
            gradient_checkpointing=checkpointing,
            max_length=args.max_length,
            packing=False,
            completion_only_loss=False,
            dataset_text_field="text",
            seed=args.seed,
            dataloader_num_workers=0,
        )
        dataset = Dataset.from_dict({"text": trl_texts(args, texts, labels, tokenizer)})
        timer = StepTimer()
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[timer],
        )
        train_set: Any = trainer.train_dataset
        tokens = [len(ids) for ids in train_set["input_ids"]]
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
        examples = trainer.state.global_step * args.batch_size
        out.update(
            examples=examples,
            seconds=seconds,
            examples_per_s=examples / seconds,
            steady_examples_per_s=timer.steady_rate(args.batch_size),
            mean_tokens_per_example=float(np.mean(tokens)),
            final_loss=float(output.training_loss),
            note=f"trl {trl.__version__}; base {dtype}, LoRA r{args.lora_r}, "
            f"{'bf16 autocast, ' if config.bf16 else ''}loss on every token, full LM head; no checkpoints",
        )
    except Exception as exc:  # report what TRL cannot do here instead of hiding it
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return out


def machine() -> dict[str, Any]:
    from guardtune.backbone import describe_machine

    return describe_machine()


def fmt(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    config, host = result["config"], result["machine"]
    lines = [
        f"Base `{config['base']}`, {config['steps']} steps of {config['batch_size']} synthetic pii-intent "
        f"rows, LoRA r{config['lora_r']}, dtype {config['dtype']}; {host['cpu']}, {host['cores']} cores, "
        f"torch {host['torch']} ({host['torch_threads']} threads).",
        "",
        "| trainer | method / variant | examples/s | steady examples/s | x TRL (best) | tokens/example "
        "| final loss |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        what = r["method"] or r["variant"]
        if r["error"]:
            lines.append(f"| {r['trainer']} | {what} | failed: {r['error']} | | | | |")
            continue
        cells = [
            r["trainer"],
            what,
            fmt(r["examples_per_s"], 2),
            fmt(r["steady_examples_per_s"], 2),
            fmt(r["ratio_to_trl"], 2),
            fmt(r["mean_tokens_per_example"]),
            fmt(r["final_loss"], 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {note}" for note in result["notes"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="gemma-3-270m", help="HF dir, .gguf or gemma-3-270m")
    from guardtune.methods import available_methods

    parser.add_argument("--methods", nargs="+", default=available_methods(), choices=available_methods())
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--dtype", default="auto", help="base dtype for both: auto, bf16 or fp32")
    parser.add_argument(
        "--trl-checkpointing",
        choices=["both", "on", "off", "none"],
        default="both",
        help="TRL runs with gradient checkpointing on, off, both, or no TRL run",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="working directory (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from guardtune.backbone import resolve_dtype
    from guardtune.data.synth import sample

    work = args.work or Path(tempfile.mkdtemp(prefix="guardtune-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    frame = sample("pii-intent", args.steps * args.batch_size, args.seed)
    texts, labels = [str(t) for t in frame["text"]], [str(x) for x in frame["label"]]

    rows = guardtune_runs(args, texts, labels, work)
    variants = {"both": [True, False], "on": [True], "off": [False], "none": []}[args.trl_checkpointing]
    trl_rows = [trl_run(args, texts, labels, work, checkpointing) for checkpointing in variants]
    rows += trl_rows
    done = [r for r in trl_rows if not r["error"]]
    best = max(done, key=lambda r: r["examples_per_s"]) if done else None
    for r in rows:
        if r["trainer"] == "guardtune" and r["examples_per_s"]:
            r["ratios"] = {t["variant"]: r["examples_per_s"] / t["examples_per_s"] for t in done}
            r["ratio_to_trl"] = r["examples_per_s"] / best["examples_per_s"] if best else None
    notes = [
        "examples/s: steps x batch size / wall time of Trainer.train() (its first, warm-up step "
        "included); steady examples/s leaves out the first step.",
        "x TRL (best): guardtune's examples/s over the faster TRL run; per-variant ratios are in "
        "the JSON (`ratios`).",
        "Both trainers see the same rows, batch size, steps, LoRA r/alpha/targets and base dtype "
        f"({resolve_dtype(args.dtype)}); LoRA weights are fp32 in both. guardtune batches rows of "
        "similar length together (group_by_length); TRL shuffles.",
        "TRL is run with plain LoRA, not QLoRA: 4-bit bitsandbytes quantisation is a GPU recipe "
        "and is not used on this CPU. TRL computes the full-vocabulary LM head (chunked, its fused "
        "LM-head loss) on every token.",
    ]
    if args.trl_checkpointing == "none":
        notes.append("TRL was not run (--trl-checkpointing none): no ratios.")
    notes += [f"TRL {r['variant']} failed on this machine: {r['error']}" for r in trl_rows if r["error"]]
    result = {
        "config": {
            "work": str(work),
            "base": args.base,
            "methods": list(args.methods),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "lora_r": args.lora_r,
            "lora_alpha": args.lora_alpha,
            "dtype": str(resolve_dtype(args.dtype)),
            "rows_of_data": len(texts),
        },
        "machine": machine(),
        "rows": rows,
        "notes": notes,
    }
    table = markdown(result)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    return result


if __name__ == "__main__":
    main()
