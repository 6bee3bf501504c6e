"""The guard server's limits and batching (``ServeSettings``) and the API key read from a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from guardtune.batches import DEFAULT_MAX_BATCH_TOKENS, token_budget_problem
from guardtune.errors import GuardtuneError

# Written for the embedded Gemma 3 270M, a pretrained base: without answered turns to copy it
# repeats the question (22 of 100 requests written from training templates) or writes the user's
# next line.
TRANSCRIPT_PREAMBLE = (
    "A conversation between a user and a helpful assistant. The assistant answers the user's "
    "question or does what the user asks, briefly and correctly.\n"
    "user: what is the capital of france?\n"
    "assistant: The capital of France is Paris.\n"
    "user: write a short poem about rain\n"
    "assistant: Soft rain taps the window, and the garden drinks again.\n"
)


@dataclass
class ServeSettings:
    """Server limits and batching; every problem is reported at once on construction.

    Args:
        max_batch_size: most texts scored in one micro-batch.
        max_batch_tokens: most padded tokens in one forward pass (0 or ``None``: no limit); a
            micro-batch of long texts is scored in several.
        max_wait_ms: longest a request waits for others to share its batch.
        max_queue: most jobs waiting for the model; beyond it requests get 503 + Retry-After.
        max_inputs: most texts per classify / moderation request (messages per chat request).
        max_chars: most characters per text (per chat message).
        max_body_bytes: largest request body.
        request_timeout_s: a request still waiting after this gets 504.
        max_new_tokens: the cap on tokens a chat reply may generate.
        api_key: when set, every route but /healthz needs ``Authorization: Bearer KEY``.
        chat_preamble: what a chat prompt starts with when the base has no chat template: an
            instruction and two answered turns, so that a pretrained base answers instead of
            continuing the transcript ("" for none).
    """

    max_batch_size: int = 32
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_inputs: int = 64
    max_chars: int = 4000
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 30.0
    max_new_tokens: int = 64
    api_key: str | None = None
    refusal: str = "I can't help with that: the message was flagged by the guard."
    chat_preamble: str = TRANSCRIPT_PREAMBLE

    def __post_init__(self) -> None:
        problems = [
            f"--{name.replace('_', '-')}: expected a positive number, found {getattr(self, name)}"
            for name in (
                "max_batch_size",
                "max_queue",
                "max_inputs",
                "max_chars",
                "max_body_bytes",
                "request_timeout_s",
                "max_new_tokens",
            )
            if getattr(self, name) <= 0
        ]
        if (problem := token_budget_problem(self.max_batch_tokens)) is not None:
            problems.append(problem)
        self.max_batch_tokens = self.max_batch_tokens or None
        if self.max_wait_ms < 0:
            problems.append(f"--max-wait-ms: expected 0 or more, found {self.max_wait_ms}")
        if self.api_key is not None and not self.api_key.strip():
            problems.append("--api-key: expected a non-empty key")
        if problems:
            raise GuardtuneError("; ".join(problems))


def read_option_file(path: Path, option: str) -> str:
    """The UTF-8 text of a file given to ``option``, or a one-line error naming both."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GuardtuneError(f"{option} {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise GuardtuneError(f"{option} {path}: cannot read as UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise GuardtuneError(f"{option} {path}: cannot read ({exc.strerror or exc})") from exc


def read_api_key(path: Path) -> str:
    """The API key in ``path`` (surrounding whitespace and the final newline dropped).

    A key in a file stays out of ``ps`` and shell history, unlike ``--api-key KEY``.

    Raises:
        GuardtuneError: the file is missing, unreadable, empty or holds more than one line.
    """
    key = read_option_file(path, "--api-key-file").strip()
    if not key:
        raise GuardtuneError(f"--api-key-file {path}: the file is empty (expected the key on one line)")
    if "\n" in key:
        raise GuardtuneError(f"--api-key-file {path}: expected the key alone on one line, found more lines")
    return key


def read_chat_preamble(path: Path) -> str:
    """The chat preamble in ``path`` (UTF-8; an empty file means none), ending in a newline."""
    text = read_option_file(path, "--chat-preamble-file").strip("\n")
    return text + "\n" if text else ""
