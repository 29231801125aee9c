"""`nudge-local eval`: the paper's evaluation on a laptop (docs/eval.md). A consumer of the engine:
it runs decoding modes through `nudge_local.engine.generate` and imports no UI or web code."""
