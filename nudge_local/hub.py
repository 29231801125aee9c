"""Hub files in the standard Hugging Face cache: where they are, and fetching them (huggingface_hub)."""

from __future__ import annotations

import os
from pathlib import Path

from nudge_local.catalog import HubFile
from nudge_local.engine.errors import NudgeError


def offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_path(f: HubFile) -> Path | None:
    """The file's path in the Hugging Face cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        p = try_to_load_from_cache(f.repo, f.file, revision=f.revision)
    except Exception:  # a malformed repo id or revision: treat as not cached
        return None
    return Path(p) if isinstance(p, str) and Path(p).is_file() else None


def human_size(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def remote_size(f: HubFile) -> int | None:
    """The file's size from the hub (None offline or when the hub does not answer)."""
    if f.size is not None or offline():
        return f.size
    try:
        from huggingface_hub import HfApi

        info = HfApi().get_paths_info(f.repo, [f.file], revision=f.revision)
        return getattr(info[0], "size", None) if info else None
    except Exception:
        return None


def hub_unreachable(timeout: float = 3.0) -> bool:
    """Whether the hub cannot be reached at all, asked once in a few seconds (huggingface_hub's own
    retries spend about 24 s before they give up on a machine with no network)."""
    import httpx2 as httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout)
    except httpx.HTTPError:
        return True
    return False


def not_cached_error(f: HubFile, pair: str | None = None, unreachable: bool = False) -> NudgeError:
    """One sentence for a file that is needed and absent; it names the pull of the whole pair where
    the file is one of a catalog pair's."""
    why = (
        "the hub is offline (HF_HUB_OFFLINE)" if offline()
        else "the Hugging Face hub cannot be reached" if unreachable
        else "it has not been downloaded"
    )  # fmt: skip
    what = f"the pair {pair} ({f.ref} among its files)" if pair else f.ref
    return NudgeError(
        f"{what} is not in the Hugging Face cache and {why}; run `nudge-local pull {pair or f.ref}` while online."
    )


def download(f: HubFile) -> Path:
    """Fetch one file into the Hugging Face cache with huggingface_hub's progress bar; the user's
    token (HF_TOKEN or `hf auth login`) is used as huggingface_hub finds it."""
    if offline():
        p = cached_path(f)
        if p is None:
            raise not_cached_error(f)
        return p
    from huggingface_hub import errors, hf_hub_download

    try:
        return Path(hf_hub_download(f.repo, f.file, revision=f.revision))
    except errors.GatedRepoError:
        raise NudgeError(
            f"{f.repo} is gated: accept its licence on the Hugging Face website and log in with `hf auth login`."
        ) from None
    except errors.RepositoryNotFoundError:
        raise NudgeError(f"There is no repository {f.repo} on the Hugging Face hub (or it is private).") from None
    except errors.RevisionNotFoundError:
        raise NudgeError(f"The repository {f.repo} has no revision {f.revision}.") from None
    except errors.LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: the hub did not answer
        raise NudgeError(
            f"The Hugging Face hub cannot be reached to fetch {f.ref}; check the connection, "
            f"or run `nudge-local pull {f.ref}` later."
        ) from None
    except errors.EntryNotFoundError:
        raise NudgeError(f"The repository {f.repo} has no file {f.file}; check the name on its Files page.") from None
    except OSError as e:
        raise NudgeError(f"Downloading {f.ref} failed ({e}); free disk space or try again.") from None
