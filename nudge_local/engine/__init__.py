"""The engine: decoding modes as generators of token events over models that score the next token.

It stands alone: it imports nothing of nudge-local outside this folder, and no UI or web code.
interface.py declares what a model is (local.py's GGUF files here; remote/ serves the same
interface over HTTP); views.py says what each model sees of the answer; token_mode.py,
speculative.py and paper_mode.py are the modes; stream.py turns their steps into the public events
(events.py); generate.py is the entry point. docs/architecture.md draws it.
"""
