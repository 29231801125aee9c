"""The tiny real pair the suite tests nudging on: Gemma 3 270M base (Q4_K_M) nudged by
SmolLM2-135M-Instruct (Q4_1), both installed from the package index by the extra `tiny` (which the
test extra includes). Different tokenizers, so the pair runs in text space."""

from __future__ import annotations

from pathlib import Path

from nudge_local.catalog import load_catalog
from nudge_local.packaged import package_path


def tiny_paths() -> tuple[Path, Path]:
    """(base, nudger) files of the catalog's tiny pair, found as the product finds them."""
    base, nudger = load_catalog().pair("tiny").files
    return package_path(base), package_path(nudger)
