"""Where nudge-local keeps its files: the configuration file, the chat's data, the catalog and the
Hugging Face cache. Each honours an environment variable first (tests, portable installs)."""

from __future__ import annotations

import os
from pathlib import Path

APP = "nudge-local"


def _env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def config_path() -> Path:
    """The YAML configuration file: NUDGE_LOCAL_CONFIG, else the user's config directory."""
    from platformdirs import user_config_dir

    return _env("NUDGE_LOCAL_CONFIG") or Path(user_config_dir(APP, appauthor=False)) / "config.yaml"


def data_dir() -> Path:
    """The chat's history and state: NUDGE_LOCAL_DATA_DIR, else the user's data directory."""
    from platformdirs import user_data_dir

    return _env("NUDGE_LOCAL_DATA_DIR") or Path(user_data_dir(APP, appauthor=False))


def catalog_path() -> Path:
    """The catalog of model pairs: NUDGE_LOCAL_CATALOG, else the one installed with the package."""
    from importlib.resources import files

    return _env("NUDGE_LOCAL_CATALOG") or Path(str(files("nudge_local.models") / "catalog.yaml"))


def cache_dir() -> Path:
    """The Hugging Face hub cache the model files live in (HF_HUB_CACHE, HF_HOME, or its default)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def models_dir() -> Path:
    """Model files nudge-local writes itself (one a package assembles from parts):
    NUDGE_LOCAL_CACHE_DIR, else the user's cache directory."""
    from platformdirs import user_cache_dir

    return (_env("NUDGE_LOCAL_CACHE_DIR") or Path(user_cache_dir(APP, appauthor=False))) / "models"


def calibration_path() -> Path:
    """The pairs' calibrated gammas (`gamma: auto`): beside models_dir, in nudge-local's cache."""
    return models_dir().parent / "calibration.json"
