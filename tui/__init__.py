"""The Textual terminal UI; it talks to the engine (nudge_local) only through its public API."""
