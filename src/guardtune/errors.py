"""The one exception type users see: a one-line reason, printed by the CLI without a traceback."""


class GuardtuneError(Exception):
    """Bad input or configuration, explained in one line (file, row or key, what was expected)."""
