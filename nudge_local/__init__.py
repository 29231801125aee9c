"""nudge-local: nudged decoding of a base model by a small aligned model, on llama.cpp."""

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done, Stats, TokenEvent

__all__ = ["Done", "NudgeError", "Stats", "TokenEvent"]
__version__ = "0.1.0"
