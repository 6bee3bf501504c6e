"""The guard server: OpenAI-compatible moderations, classify, dual-path chat, several guards per base.

Example:
    >>> from guardtune.serve import ServeSettings, create_app, load_guards
    >>> app = create_app(load_guards({"pii": Path("runs/pii")}), ServeSettings(max_wait_ms=5))
"""

from guardtune.serve.app import create_app
from guardtune.serve.guards import Guard, load_guards, parse_model_spec
from guardtune.serve.server import BackgroundServer, run
from guardtune.serve.settings import TRANSCRIPT_PREAMBLE, ServeSettings, read_api_key, read_chat_preamble

__all__ = [
    "TRANSCRIPT_PREAMBLE",
    "BackgroundServer",
    "Guard",
    "ServeSettings",
    "create_app",
    "load_guards",
    "parse_model_spec",
    "read_api_key",
    "read_chat_preamble",
    "run",
]
