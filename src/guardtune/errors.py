"""The one exception type users see: a one-line reason, printed by the CLI without a traceback."""


class GuardtuneError(Exception):
    """Bad input or configuration, explained in one line (file, row or key, what was expected)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's message on one line (whitespace collapsed), cut at ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
