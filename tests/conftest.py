from __future__ import annotations

import os
import tempfile

import pytest

from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import render_prompts
from pairs import vocab_dir, why_no_vocab

# Tests never read the developer's own settings: no config file, no NUDGE_LOCAL_* overrides (but where
# the shared vocabularies are, and where scripts/build_llama_server.sh keeps its build).
KEPT = {"NUDGE_LOCAL_VOCAB_DIR", "NUDGE_LOCAL_LLAMA_SERVER_DIR"}
for _var in [v for v in os.environ if v.startswith("NUDGE_LOCAL_") and v not in KEPT]:
    del os.environ[_var]
os.environ["NUDGE_LOCAL_CONFIG"] = os.path.join(tempfile.mkdtemp(prefix="nudge-local-test-"), "config.yaml")

needs_shared = pytest.mark.skipif(vocab_dir() is None, reason=why_no_vocab())


def load(path, role="model", n_ctx=512) -> Model:
    return Model(path, role=role, n_ctx=n_ctx, n_threads=1)


def run_engine(base, nudger, question="Why is the sky blue?", *, mode="nudged", system="", **kw):
    """Events and Done of one generation through the public engine API."""
    prompts = render_prompts(base, nudger, question, system=system)
    events = list(generate(prompts, mode=mode, base=base, nudger=nudger, **kw))
    assert isinstance(events[-1], Done)
    return prompts, events[:-1], events[-1]
